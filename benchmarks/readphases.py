"""``python -m benchmarks.readphases``: where the time of forml-s3's cold large read goes, phase by phase, next to the
floors (raw boto3, raw obstore), on a SeaweedFS server on 127.0.0.1 (issue 21; docs/benchmarks.md, "Large reads").

Every repetition runs each provider's ``large_read`` job of the harness (:mod:`benchmarks.providers`) in a fresh
process with an empty cache, interleaved. forml-s3's run is instrumented (wrappers around the real functions) to
mark, with wall time and the process's CPU time (``getrusage``), the end of the transfer (the last byte written),
the end of the hash (its tail after the last byte), the rename, the seal, and the end of the read (and whether
the bytes came from the buffer the download hashed them in, and how much was read from the file); the CPU time of
the hashing thread and of the ``pwrite`` calls is summed apart (``time.thread_time``). The server's CPU during each
run comes from ``/proc/<weed>/stat``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import typing

PROVIDERS = ('forml-s3', 'boto3', 'obstore')


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _instrument(marks: dict[str, typing.Any]) -> None:
    """Wrap the real read path's steps to note when each ended (wall, process CPU) and the CPU of the hash thread
    and the file writes."""
    from forml_s3.runtime import cache
    from forml_s3.storage import digest, fastget

    def mark(name: str) -> None:
        marks.setdefault('at', {})[name] = (time.perf_counter(), _cpu())

    marks['pwrite_cpu'] = 0.0
    marks['pwrites'] = 0

    class _Os:  # digest's ``os`` (its write_at lands the chunks), with pwrite timed
        def __getattr__(self, name: str) -> typing.Any:
            return getattr(os, name)

        @staticmethod
        def pwrite(fd: int, data: typing.Any, offset: int) -> int:
            start = time.thread_time()
            written = os.pwrite(fd, data, offset)
            marks['pwrite_cpu'] += time.thread_time() - start
            marks['pwrites'] += 1
            return written

    digest.os = _Os()  # type: ignore[assignment]
    download = fastget.download

    def timed_download(*args: typing.Any, **kwargs: typing.Any) -> None:
        mark('transfer_start')
        download(*args, **kwargs)
        mark('transferred')

    fastget.download = timed_download
    run = digest.Follower._run

    def timed_run(self: typing.Any) -> None:
        start = time.thread_time()
        try:
            run(self)
        finally:
            marks['hash_thread_cpu'] = time.thread_time() - start

    digest.Follower._run = timed_run  # type: ignore[method-assign]
    hexdigest = digest.Follower.hexdigest

    def timed_hexdigest(self: typing.Any) -> str:
        try:
            return hexdigest(self)
        finally:
            mark('hashed')

    digest.Follower.hexdigest = timed_hexdigest  # type: ignore[method-assign]
    seal = cache.BlobCache.seal

    def timed_seal(self: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        mark('seal_start')
        try:
            return seal(self, *args, **kwargs)
        finally:
            mark('sealed')

    cache.BlobCache.seal = timed_seal  # type: ignore[method-assign]
    replace = cache.os.replace

    class _CacheOs:  # the cache's ``os``, with the rename into place marked
        def __getattr__(self, name: str) -> typing.Any:
            return getattr(os, name)

        @staticmethod
        def replace(*args: typing.Any) -> None:
            mark('rename_start')
            replace(*args)
            mark('renamed')

    cache.os = _CacheOs()  # type: ignore[assignment]
    opened = cache.BlobCache._open

    def timed_open(self: typing.Any, *args: typing.Any) -> typing.Any:
        mark('open_start')
        try:
            return opened(self, *args)
        finally:
            mark('opened')

    cache.BlobCache._open = timed_open  # type: ignore[method-assign]
    load = cache.BlobCache.load

    def timed_load(self: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        try:
            return load(self, *args, **kwargs)
        finally:
            mark('loaded')

    cache.BlobCache.load = timed_load  # type: ignore[method-assign]
    if hasattr(cache, '_Buffer'):  # the bytes handed out as the download hashed them (no read of the file)
        value = cache._Buffer.value

        def timed_value(self: typing.Any) -> bytes:
            mark('from_memory')
            return value(self)

        cache._Buffer.value = timed_value  # type: ignore[method-assign]
        read_into = cache._read_into

        def timed_read_into(file: typing.Any, view: memoryview) -> bool:
            mark('prefix_start')
            marks['prefix'] = len(view)
            return read_into(file, view)

        cache._read_into = timed_read_into


def child(provider_name: str, context: dict[str, typing.Any], rep: int) -> None:
    import logging

    logging.getLogger('forml_s3').setLevel(logging.WARNING)
    from benchmarks import providers

    ctx = providers.Context.from_dict(context)
    provider = providers.PROVIDERS[provider_name](ctx)
    marks: dict[str, typing.Any] = {}
    if provider_name == 'forml-s3':
        _instrument(marks)
    job = provider.job('large_read', rep)
    data = job.make_input() if job.make_input else None
    sys.stdout.write('ready\n')
    sys.stdout.flush()
    sys.stdin.readline()
    start, cpu = time.perf_counter(), _cpu()
    job.run(data)
    end, cpu_end = time.perf_counter(), _cpu()
    out = {'wall': end - start, 'cpu': cpu_end - cpu}
    if 'at' in marks:
        out['phases'] = {name: (t - start, c - cpu) for name, (t, c) in marks['at'].items()}
        out['phases']['end'] = (end - start, cpu_end - cpu)
        out['pwrite_cpu'] = marks['pwrite_cpu']
        out['pwrites'] = marks['pwrites']
        out['hash_thread_cpu'] = marks.get('hash_thread_cpu')
        out['prefix'] = marks.get('prefix', 0)
    sys.stdout.write(json.dumps(out) + '\n')


def _line(name: str, rep: int, out: dict[str, typing.Any]) -> str:
    """One run: wall and CPU, and forml-s3's phases (wall seconds each)."""
    text = f'{name:9} {rep} wall {out["wall"]:.3f} cpu {out["cpu"]:.3f} server cpu {out["server_cpu"]:.2f}'
    if 'phases' in out:
        at = {phase: wall for phase, (wall, _) in out['phases'].items()}
        at.setdefault('opened', at['sealed'])
        read_cpu = out['phases']['end'][1] - out['phases'].get('opened', out['phases']['sealed'])[1]
        text += (
            f' | transfer {at["transferred"]:.3f} hash tail {at["hashed"] - at["transferred"]:.3f}'
            f' to rename {at["rename_start"] - at["hashed"]:.3f} seal {at["sealed"] - at["seal_start"]:.3f}'
            f' to open {at["opened"] - at["sealed"]:.3f} read {at["end"] - at["opened"]:.3f} (cpu {read_cpu:.3f})'
            f' | cpu: pwrite {out["pwrite_cpu"]:.3f} hash thread {out["hash_thread_cpu"]:.3f}'
        )
        if 'from_memory' in at:
            prefix = out.get('prefix', 0) / 2**20
            text += f' | bytes from memory, prefix read {prefix:.0f} MiB from {at["prefix_start"]:.3f}'
        if 'loaded' in at:
            text += f' | loaded at {at["loaded"]:.3f}'
    return text


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a process and its threads (``/proc/<pid>/stat``)."""
    fields = pathlib.Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _weed_pid(endpoint: str) -> int:
    port = endpoint.rsplit(':', 1)[1]
    for entry in pathlib.Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / 'cmdline').read_bytes().split(b'\0')
            except OSError:
                continue
            if any(arg == f'-s3.port={port}'.encode() for arg in cmd):
                return int(entry.name)
    raise RuntimeError('weed not found')


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--reps', type=int, default=5)
    parser.add_argument('--providers', default=','.join(PROVIDERS))
    parser.add_argument('--clean', action='store_true', help="delete forml-s3's cache after each of its runs")
    parser.add_argument('--child', nargs=3, metavar=('PROVIDER', 'CONTEXT', 'REP'))
    args = parser.parse_args()
    if args.child:
        child(args.child[0], json.loads(args.child[1]), int(args.child[2]))
        return
    from benchmarks import providers, weedserver
    from forml_s3.runtime import transfers
    from forml_s3.storage import options
    from forml_s3.storage import s3 as store

    names = args.providers.split(',')
    repo = pathlib.Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory(prefix='forml-s3-readphases-') as tmp:
        work = pathlib.Path(tmp)
        with weedserver.SeaweedFS(work / 'seaweedfs') as server:
            weed = _weed_pid(server.endpoint)
            contexts = {}
            for name in names:
                ctx = providers.Context(
                    provider=name,
                    endpoint=server.endpoint,
                    bucket=server.create_bucket(f'bench-{name}'),
                    workdir=str(work / name),
                    packages=str(work / 'packages'),
                    sizes=providers.FULL,
                    part_size=store.PART_SIZE,
                    part_concurrency=store.PART_CONCURRENCY,
                    workers=transfers.DEFAULT_WORKERS,
                    pool_connections=options.DEFAULT_POOL,
                    repo=str(repo),
                )
                contexts[name] = dataclasses.asdict(ctx)
                providers.PROVIDERS[name](ctx).setup('large_read')
            results: dict[str, list[dict[str, typing.Any]]] = {name: [] for name in names}
            for rep in range(args.reps):
                for name in names:
                    proc = subprocess.Popen(
                        [sys.executable, '-m', 'benchmarks.readphases', '--child', name, json.dumps(contexts[name]),
                         str(rep)],
                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=repo,
                    )  # fmt: skip
                    assert proc.stdout is not None and proc.stdin is not None
                    assert proc.stdout.readline().strip() == 'ready'
                    before = _proc_cpu(weed)
                    proc.stdin.write('go\n')
                    proc.stdin.flush()
                    out = json.loads(proc.stdout.readline())
                    out['server_cpu'] = _proc_cpu(weed) - before  # (includes the child's exit: idle server)
                    proc.wait()
                    results[name].append(out)
                    if args.clean:
                        shutil.rmtree(work / name / 'cache', ignore_errors=True)
                    print(_line(name, rep, out), flush=True)
            print(f'\nmedians of {args.reps} (load {os.getloadavg()[0]:.1f}):')
            for name in names:
                rows = results[name]
                med = {k: statistics.median(r[k] for r in rows) for k in ('wall', 'cpu', 'server_cpu')}
                print(f'{name:9} wall {med["wall"]:.3f} s  client cpu {med["cpu"]:.3f} s  server cpu '
                      f'{med["server_cpu"]:.3f} s')  # fmt: skip
                if 'phases' in rows[0]:
                    for phase in set.intersection(*(set(r['phases']) for r in rows)):
                        wall = statistics.median(r['phases'][phase][0] for r in rows)
                        cpu = statistics.median(r['phases'][phase][1] for r in rows)
                        print(f'   {phase:15} at {wall:.3f} s  cpu so far {cpu:.3f} s')
                    for key in ('pwrite_cpu', 'hash_thread_cpu', 'pwrites', 'prefix'):
                        print(f'   {key:15} {statistics.median(r[key] for r in rows):.3f}')


if __name__ == '__main__':
    main()
