"""Worker processes for the concurrency and crash tests: ``python -m tests.workers ROLE ...``.

Each worker builds its own Registry against the URL it is given (over real HTTP to the test's moto server),
optionally waits for a start signal file so that all racers hit the store together, does its part, and
prints one JSON line with what happened. The test process reads those lines and the bucket.
"""

import argparse
import json
import os
import pathlib
import sys
import time
import uuid

from forml import project as prj
from forml.io import asset

from forml_s3.registry import Conflict, Incomplete, Registry
from forml_s3.runtime import lease, packing, transfers

from .helpers import PROJECT, tag


def wait_for(go: str | None) -> None:
    if not go:
        return
    deadline = time.monotonic() + 120
    while not os.path.exists(go):
        if time.monotonic() > deadline:
            raise TimeoutError('no start signal')
        time.sleep(0.005)


def registry(args) -> Registry:
    return Registry(
        args.url,
        storage_options=json.loads(args.options),
        cache_dir=args.cache,
        staging=args.staging,
        **json.loads(args.settings),
    )


def write_states(reg: Registry, args) -> list[uuid.UUID]:
    """Write ``--states`` states (or the ``--sids`` given), wait until they are stored and, unless the lease comes
    too late to wait for, until this process holds its lease."""
    sids = [uuid.UUID(s) for s in args.sids.split(',')] if args.sids else [uuid.uuid4() for _ in range(args.states)]
    for i, sid in enumerate(sids):
        reg.write(PROJECT, args.release, sid, f'{args.name}:{i}'.encode() * 100)
    packing.flush()  # stored now (not held for a pack): what gc could see
    transfers.wait_all()
    deadline = time.monotonic() + 60
    while args.await_lease and not lease.held(reg._store):
        if time.monotonic() > deadline:
            raise TimeoutError('no lease taken')
        time.sleep(0.05)
    return sids


def write_then_close(args) -> dict:
    """A training between its last write and its close: write, signal ready, wait for the go, then close."""
    reg = registry(args)
    sids = write_states(reg, args)
    pathlib.Path(args.ready).write_text(','.join(map(str, sids)))
    wait_for(args.go)
    try:
        reg.close(PROJECT, args.release, args.generation, tag(sids, ordinal=args.name))
    except (Incomplete, Conflict) as err:
        return {'name': args.name, 'won': False, 'error': str(err), 'sids': [str(s) for s in sids]}
    return {'name': args.name, 'won': True, 'sids': [str(s) for s in sids]}


def write_and_wait(args) -> dict:
    """A Dask worker: write states another process commits, and stay alive until the go."""
    reg = registry(args)
    sids = write_states(reg, args)
    pathlib.Path(args.ready).write_text(','.join(map(str, sids)))
    wait_for(args.go)
    return {'name': args.name, 'sids': [str(s) for s in sids]}


def close_only(args) -> dict:
    """A Dask driver: commit states other processes wrote."""
    reg = registry(args)
    sids = [uuid.UUID(s) for s in args.sids.split(',')]
    try:
        reg.close(PROJECT, args.release, args.generation, tag(sids))
    except (Incomplete, Conflict) as err:
        return {'name': args.name, 'won': False, 'error': str(err)}
    return {'name': args.name, 'won': True}


def close_race(args) -> dict:
    """Write states tagged with this worker's name, then race the others to close one generation."""
    reg = registry(args)
    sids = [uuid.uuid4() for _ in range(3)]
    for i, sid in enumerate(sids):
        reg.write(PROJECT, args.release, sid, f'{args.name}:{i}'.encode() * 1000)
    pathlib.Path(args.ready).touch()
    wait_for(args.go)
    try:
        reg.close(PROJECT, args.release, args.generation, tag(sids, ordinal=args.name))
    except Conflict as err:
        return {'name': args.name, 'won': False, 'error': str(err)}
    return {'name': args.name, 'won': True, 'sids': [str(s) for s in sids]}


def push_race(args) -> dict:
    """Race the others to push the same release version (each with different package content)."""
    reg = registry(args)
    package = prj.Package(args.package)
    pathlib.Path(args.ready).touch()
    wait_for(args.go)
    try:
        reg.push(package)
    except (Conflict, asset.Level.Invalid) as err:
        return {'name': args.name, 'won': False, 'error': str(err)}
    return {'name': args.name, 'won': True}


def write_big(args) -> dict:
    """Write one large state and close it (the test kills this process mid-upload)."""
    reg = registry(args)
    sid = uuid.uuid4()
    reg.write(PROJECT, args.release, sid, os.urandom(1024) * (args.size // 1024))
    reg.close(PROJECT, args.release, args.generation, tag([sid]))
    return {'name': args.name, 'won': True, 'sid': str(sid)}


def push(args) -> dict:
    """Push a package (the test may kill this process mid-upload)."""
    registry(args).push(prj.Package(args.package))
    return {'name': args.name, 'won': True}


def mount(args) -> dict:
    """Mount a release into the shared staging path once the start signal appears."""
    reg = registry(args)
    pathlib.Path(args.ready).touch()
    wait_for(args.go)
    artifact = reg.mount(PROJECT, args.release)
    return {'name': args.name, 'path': str(artifact.path)}


def alias_race(args) -> dict:
    """Read the alias, then race the others to move it (to generation ``--generation``) from what was read."""
    from forml_s3.runtime import aliases

    reg = registry(args)
    old = reg.aliases.read(PROJECT, 'champion')
    pathlib.Path(args.ready).touch()
    wait_for(args.go)
    try:
        reg.aliases.swap(PROJECT, 'champion', old, aliases.Target(args.release, args.generation))
    except aliases.Conflict as err:
        return {'name': args.name, 'won': False, 'error': str(err)}
    return {'name': args.name, 'won': True}


ROLES = {
    'close-race': close_race,
    'push-race': push_race,
    'write-big': write_big,
    'push': push,
    'mount': mount,
    'write-then-close': write_then_close,
    'write-and-wait': write_and_wait,
    'close-only': close_only,
    'alias-race': alias_race,
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('role', choices=sorted(ROLES))
    parser.add_argument('--url', required=True)
    parser.add_argument('--options', default='{}')
    parser.add_argument('--cache', required=True)
    parser.add_argument('--staging', default=None)
    parser.add_argument('--name', default=str(os.getpid()))
    parser.add_argument('--release', default='0.1')
    parser.add_argument('--generation', type=int, default=1)
    parser.add_argument('--package', default=None)
    parser.add_argument('--size', type=int, default=0)
    parser.add_argument('--ready', default=os.devnull)
    parser.add_argument('--go', default=None)
    parser.add_argument('--settings', default='{}', help='Registry keyword arguments (JSON)')
    parser.add_argument('--states', type=int, default=3)
    parser.add_argument('--sids', default='')
    parser.add_argument('--await-lease', action='store_true')
    args = parser.parse_args()
    print(json.dumps(ROLES[args.role](args)), flush=True)


if __name__ == '__main__':
    sys.exit(main())
