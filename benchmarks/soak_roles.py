"""The soak's worker processes (forked by :mod:`benchmarks.soak`; by hand: ``python -m benchmarks.soak_roles
writer|reader CONFIG_JSON``).

A **writer** pushes releases and trains generations through the real provider the way ForML does: it writes a
generation's states one by one (``Registry.write``), then closes them with the number ForML would pick (the
highest listed plus one), so writers race for numbers and versions. At seeded random it kills itself
(``SIGKILL``) at a chosen point: between two state writes, after the last write, right before or right after a
marker is created, or while a large (multipart) state is uploading. It logs one JSON line per step, before the
step's outcome is known (``begin``) and after (``acked``, ``conflict``, ``failed``), so the parent knows exactly
what each writer was told.

A **reader** lists, opens and reads generations, and mounts releases into a staging path shared by all readers,
checking everything it sees: every state of a listed generation reads back with the content its writer made
(:func:`state_bytes` makes it checkable from the state id alone), every mount is one complete tree equal to
the package. What it sees wrong is logged as a violation; an operation the faults made fail is logged as failed.
"""

from __future__ import annotations

import datetime
import faulthandler
import hashlib
import json
import os
import pathlib
import random
import shutil
import signal
import sys
import threading
import time
import typing
import uuid
import zipfile

PROJECT = 'soak'
HEADER = 24
"""A state starts with its id (16 bytes) and its size (8 bytes); the rest is seeded by the id."""


def state_bytes(sid: uuid.UUID, size: int) -> bytes:
    """The content of a state: checkable by anyone who knows its id."""
    size = max(size, HEADER)
    return sid.bytes + size.to_bytes(8, 'big') + random.Random(sid.int).randbytes(size - HEADER)


def state_problem(sid: uuid.UUID, data: bytes) -> str | None:
    """What is wrong with the content read for a state (None: it is what its writer wrote)."""
    if len(data) < HEADER:
        return f'state {sid} read as {len(data)} bytes (partial or empty)'
    if data[:16] != sid.bytes:
        return f'state {sid} holds the content of state {uuid.UUID(bytes=data[:16])}'
    size = int.from_bytes(data[16:24], 'big')
    if size != len(data):
        return f'state {sid} read as {len(data)} bytes, written as {size}'
    if data != state_bytes(sid, size):
        return f'state {sid} content differs from what was written'
    return None


class Log:
    """JSON lines, one write() each: a SIGKILL loses nothing already logged."""

    def __init__(self, path: str):
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._lock = threading.Lock()

    def __call__(self, **entry: typing.Any) -> None:
        line = json.dumps({'t': round(time.time(), 3), 'pid': os.getpid(), **entry}) + '\n'
        with self._lock:
            os.write(self._fd, line.encode())


def registry(config: dict[str, typing.Any], cache: pathlib.Path, **kwargs: typing.Any):
    from forml_s3.registry import Registry  # imported after the fork-free start

    staging = kwargs.pop('staging', cache / 'staging')
    if 'lease_after' in config:
        kwargs.setdefault('lease_after', config['lease_after'])
    return Registry(config['url'], storage_options=config['options'], cache_dir=cache, staging=staging, **kwargs)


def outcome(err: BaseException) -> str:
    """How a step that raised ended: ``conflict`` (another writer won), ``failed`` (faults exhausted the retries:
    a clean error), or ``error`` (anything else: reported)."""
    import forml
    from forml.io import asset

    from forml_s3.registry import Conflict

    if isinstance(err, Conflict) or 'not an increment' in str(err):
        return 'conflict'
    if isinstance(err, forml.FailedError):
        return 'failed'
    if isinstance(err, asset.Level.Invalid) and 'failed' in str(err):
        return 'failed'  # an upload that exhausted its retries, reported by close()
    return 'error'


def stopped(config: dict[str, typing.Any]) -> bool:
    return os.path.exists(config['stop'])


# writer ---------------------------------------------------------------------------------------------------
class Writer:
    """One writer process: pushes and trainings until the parent stops the run, or until it kills itself."""

    def __init__(self, config: dict[str, typing.Any]):
        self.config = config
        self.rng = random.Random(config['seed'])
        self.log = Log(config['log'])
        self.work = pathlib.Path(config['work'])
        self.reg = registry(config, self.work / 'cache')
        self.armed: str | None = None
        store = self.reg._store  # the harness's hook: kill points around the provider's own store calls
        create, write = store.create, store.write

        def hooked_create(path: str, data: bytes) -> None:
            point = 'marker' if '/generations/' in path or '/releases/' in path else None
            if point and self.armed == 'before-marker':
                self.die('before-marker', path=path)
            create(path, data)
            if point and self.armed == 'after-marker':
                self.die('after-marker', path=path)

        def hooked_write(path: str, data: typing.Any, **kwargs: typing.Any) -> None:
            size = data.stat().st_size if isinstance(data, pathlib.Path) else len(data)
            uploading = threading.Event()
            if self.armed == 'mid-multipart' and size >= config['multipart_from']:
                uploading.set()

                def kill() -> None:
                    if uploading.is_set():  # only while the upload is still in flight
                        self.die('mid-multipart', path=path)

                threading.Timer(self.rng.uniform(0.05, 2.0), kill).start()
            try:
                write(path, data, **kwargs)
            finally:
                uploading.clear()

        store.create, store.write = hooked_create, hooked_write

    def die(self, point: str, **info: typing.Any) -> typing.NoReturn:
        self.log(op='kill', point=point, **info)
        os.kill(os.getpid(), signal.SIGKILL)
        raise SystemExit(137)  # not reached

    def arm(self, points: tuple[str, ...]) -> None:
        self.armed = self.rng.choice(points) if self.rng.random() < self.config['kill_rate'] else None

    def run(self) -> None:
        from forml_s3.model import names

        while not stopped(self.config):
            releases = sorted(names.release(r) for r in self.reg.releases(PROJECT))
            if not releases or self.rng.random() < self.config['push_rate']:
                self.push(releases)
            else:
                self.train(releases[-1] if self.rng.random() < 0.8 else self.rng.choice(releases))

    def push(self, releases: list) -> None:
        from forml import project as prj

        from benchmarks import providers

        version = f'0.{int(str(releases[-1]).split(".")[1]) + 1}' if releases else '0.1'
        folder = self.work / 'packages' / uuid.uuid4().hex[:8]
        path = providers.build_package(folder, PROJECT, version, self.rng.randint(1, 64) * 1024)
        sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
        self.arm(('before-marker', 'after-marker'))
        self.log(op='push', phase='begin', release=version, sha256=sha256, armed=self.armed)
        try:
            self.reg.push(prj.Package(path))
        except Exception as err:  # every outcome is logged and classified
            self.log(op='push', phase=outcome(err), release=version, error=f'{type(err).__name__}: {err}')
        else:
            self.log(op='push', phase='acked', release=version, sha256=sha256)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def train(self, release: typing.Any) -> None:
        from forml.io import asset

        generations = [int(g) for g in self.reg.generations(PROJECT, release)]
        number = max(generations, default=0) + 1
        sizes = [int(2 ** self.rng.uniform(5, 18)) for _ in range(self.rng.randint(1, 5))]
        if self.rng.random() < self.config['big_rate']:
            sizes[0] = self.config['multipart_from'] + self.rng.randint(0, 4) * 2**20
        sids = [uuid.uuid4() for _ in sizes]
        self.arm(('mid-write', 'before-close', 'before-marker', 'after-marker', 'mid-multipart'))
        if self.armed == 'mid-multipart' and sizes[0] < self.config['multipart_from']:
            self.armed = 'before-close'
        release = str(release)
        self.log(
            op='close', phase='begin', release=release, generation=number, sids=[str(s) for s in sids],
            sizes=sizes, armed=self.armed,
        )  # fmt: skip
        for i, (sid, size) in enumerate(zip(sids, sizes, strict=True)):
            if self.armed == 'mid-write' and i == len(sids) // 2 and i:
                self.die('mid-write')
            self.reg.write(PROJECT, release, sid, state_bytes(sid, size))
        if self.armed in ('before-close', 'mid-write'):
            self.die('before-close')
        tag = asset.Tag(training=asset.Tag.Training(timestamp=datetime.datetime.now(), ordinal=number), states=sids)
        try:
            self.reg.close(PROJECT, release, number, tag)
        except Exception as err:  # every outcome is logged and classified
            self.log(
                op='close', phase=outcome(err), release=release, generation=number,
                error=f'{type(err).__name__}: {err}',
            )  # fmt: skip
        else:
            self.log(op='close', phase='acked', release=release, generation=number, sids=[str(s) for s in sids])


# reader ---------------------------------------------------------------------------------------------------
class Reader:
    """One reader process: lists, opens, reads and mounts until the parent stops the run, checking what it sees."""

    def __init__(self, config: dict[str, typing.Any]):
        self.config = config
        self.rng = random.Random(config['seed'])
        self.log = Log(config['log'])
        self.work = pathlib.Path(config['work'])
        self.round = 0

    def fresh(self):
        """A registry with an empty cache of its own (so reads go to the store), listings never reused."""
        self.round += 1
        cache = self.work / f'cache-{self.round}'
        shutil.rmtree(self.work / f'cache-{self.round - 1}', ignore_errors=True)
        return registry(self.config, cache, staging=self.config['staging'], listing_ttl=0)

    def run(self) -> None:
        reg = self.fresh()
        while not stopped(self.config):
            if self.rng.random() < 0.1:
                reg = self.fresh()
            kind = 'mount' if self.rng.random() < self.config['mount_rate'] else 'read'
            try:
                self.step(reg, kind)
            except Exception as err:  # every outcome is logged and classified
                self.failed(kind, err)
            time.sleep(self.rng.uniform(0, 0.2))

    def step(self, reg: typing.Any, kind: str) -> None:
        releases = list(reg.releases(PROJECT))
        self.log(op='list', phase='acked', releases=len(releases))
        if not releases:
            return
        release = self.rng.choice(releases)
        if kind == 'mount':
            self.mount(reg, release)
            return
        generations = list(reg.generations(PROJECT, release))
        self.log(op='list', phase='acked', generations=len(generations))
        if not generations:
            return
        generation = self.rng.choice(generations)
        tag = reg.open(PROJECT, release, generation)
        where = f'generation {generation} of {PROJECT}-{release}'
        problems = [p for sid in tag.states if (p := state_problem(sid, reg.read(PROJECT, release, generation, sid)))]
        for problem in problems:
            self.log(op='read', phase='violation', error=f'{where}: {problem}')
        if not problems:
            self.log(op='read', phase='acked', release=str(release), generation=int(generation), states=len(tag.states))

    def mount(self, reg: typing.Any, release: typing.Any) -> None:
        """Mount into the shared staging path; the tree must equal the package, file by file."""
        artifact = reg.mount(PROJECT, release)
        target = pathlib.Path(artifact.path)
        package = reg.pull(PROJECT, release).path
        problems = []
        with zipfile.ZipFile(package) as zipped:
            for info in zipped.infolist():
                if info.is_dir():
                    continue
                installed = target / info.filename
                if not installed.is_file():
                    problems.append(f'{installed} missing')
                elif installed.read_bytes() != zipped.read(info):
                    problems.append(f'{installed} differs from the package')
        for problem in problems:
            self.log(op='mount', phase='violation', error=f'mount of {PROJECT}-{release}: {problem}')
        if not problems:
            self.log(op='mount', phase='acked', release=str(release))

    def failed(self, kind: str, err: BaseException) -> None:
        import forml

        from forml_s3.runtime import cache

        text = f'{type(err).__name__}: {err}'
        if isinstance(err, cache.Corrupted | forml.MissingError | FileNotFoundError):
            self.log(op=kind, phase='violation', error=text)  # listed, yet missing or wrong
        else:
            self.log(op=kind, phase=outcome(err), error=text)


ROLES: dict[str, type] = {'writer': Writer, 'reader': Reader}


def start(role: str, config: dict[str, typing.Any]) -> None:
    """A role's process body (forked by the soak's forkserver): its stderr goes to ``config['stderr']``. It dies
    with the forkserver, which ends when the soak does: a killed soak leaves no worker behind."""
    from tests import servers

    servers.die_with_parent()
    threading.Thread(target=_watch, args=(config['parent'],), name='watch-soak', daemon=True).start()
    err = os.open(config['stderr'], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(err, 2)
    sys.stderr = open(2, 'w', buffering=1, closefd=False)  # noqa: SIM115 - the process's stderr, never closed
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` shows where a stuck worker is, in its stderr
    worker = ROLES[role](config)
    pathlib.Path(config['log'] + '.ready').touch()  # the parent starts the clock when every worker is ready
    worker.run()


def _watch(parent: int) -> None:
    """End this worker once the soak process is gone (its forkserver may outlive it)."""
    while True:
        time.sleep(1)
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os.kill(os.getpid(), signal.SIGKILL)


def main() -> None:
    start(sys.argv[1], json.loads(sys.argv[2]))


if __name__ == '__main__':
    main()
