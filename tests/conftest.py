"""Shared fixtures: an embedded S3 endpoint (moto's HTTP server on 127.0.0.1), a SeaweedFS server, and registries
on every backend.

``FORML_S3_TEST_ENDPOINT`` points the S3 tests at another endpoint (LocalStack, MinIO, AWS) instead of the
embedded moto server; request-counting tests need the embedded server and skip without it, and the SeaweedFS
variants skip too (that run is about the other endpoint).

The registry contract (the modules in :data:`SEAWEEDFS_MODULES`) runs on SeaweedFS as well: ``backend`` gets a
``seaweedfs`` value there. Every test's bucket is deleted when the test ends (a SeaweedFS bucket holds volumes).
Each bucket's exclusive create is verified as it is made (:func:`new_bucket`), so request counts and injected
faults see only what a test's own calls send; ``tests/test_doctor.py`` checks the verification itself.
"""

import os
import pathlib
import uuid

import pytest

from forml_s3 import storage
from forml_s3.registry import Registry
from forml_s3.runtime import lease
from forml_s3.storage import probe

from . import embedded, helpers, servers

BACKENDS = ('memory', 'file', 's3')
SEAWEEDFS_MODULES = ('test_registry', 'test_inventory', 'test_bad_input')
"""Modules whose ``backend``-parametrized tests also run on SeaweedFS (the registry contract)."""


ENDPOINT_VARIABLE = 'FORML_S3_TEST_ENDPOINT'
EMBEDDED_ONLY = (
    f'needs the embedded moto server (request log, fault injection or IAM enforcement); {ENDPOINT_VARIABLE} is set'
)


class Endpoint:
    """An external S3 endpoint (LocalStack, MinIO, AWS) offering what the tests use of ``embedded.Server``:
    ``endpoint``, ``storage_options()``, ``client_env()``, ``client()`` and ``create_bucket()``.

    Credentials come from ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` (default ``test``/``test``, what
    LocalStack accepts), the region from ``AWS_DEFAULT_REGION`` (default ``us-east-1``). Buckets created here are
    emptied and deleted when the session ends.
    """

    def __init__(self, endpoint: str):
        self.endpoint = endpoint.rstrip('/')
        self.key = os.environ.get('AWS_ACCESS_KEY_ID') or 'test'
        self.secret = os.environ.get('AWS_SECRET_ACCESS_KEY') or 'test'
        self.region = os.environ.get('AWS_DEFAULT_REGION') or embedded.REGION
        self.created: list[str] = []

    def __repr__(self):
        return f'Endpoint({self.endpoint})'

    def client_env(self) -> dict[str, str]:
        return {
            'AWS_ACCESS_KEY_ID': self.key,
            'AWS_SECRET_ACCESS_KEY': self.secret,
            'AWS_DEFAULT_REGION': self.region,
            'AWS_ENDPOINT_URL': self.endpoint,
        }

    def storage_options(self, **extra) -> dict:
        return {
            'key': self.key,
            'secret': self.secret,
            'endpoint_url': self.endpoint,
            'client_kwargs': {'region_name': self.region},
            **extra,
        }

    def client(self, service: str = 's3', **kwargs):
        import boto3

        options = {
            'endpoint_url': self.endpoint,
            'region_name': self.region,
            'aws_access_key_id': self.key,
            'aws_secret_access_key': self.secret,
            **kwargs,
        }
        return boto3.client(service, **options)

    def create_bucket(self, name: str) -> str:
        extra = {} if self.region == 'us-east-1' else {'CreateBucketConfiguration': {'LocationConstraint': self.region}}
        self.client().create_bucket(Bucket=name, **extra)
        self.created.append(name)
        return name

    def cleanup(self) -> None:
        """Delete the buckets this session created and no test deleted (best effort)."""
        for name in list(self.created):
            drop_bucket(self, name)


def drop_bucket(server, name: str) -> None:
    """Delete a test bucket with everything in it: uploads, versions, objects (best effort)."""
    client = server.client()
    try:
        for upload in client.list_multipart_uploads(Bucket=name).get('Uploads') or ():
            client.abort_multipart_upload(Bucket=name, Key=upload['Key'], UploadId=upload['UploadId'])
        for page in client.get_paginator('list_object_versions').paginate(Bucket=name):
            versions = [*(page.get('Versions') or ()), *(page.get('DeleteMarkers') or ())]
            if versions:
                objects = [{'Key': v['Key'], 'VersionId': v['VersionId']} for v in versions]
                client.delete_objects(Bucket=name, Delete={'Objects': objects})
        for page in client.get_paginator('list_objects_v2').paginate(Bucket=name):
            keys = [{'Key': o['Key']} for o in page.get('Contents', ())]
            if keys:
                client.delete_objects(Bucket=name, Delete={'Objects': keys})
        client.delete_bucket(Bucket=name)
    except Exception as err:  # leftovers are harmless, the report says which
        print(f'Could not delete test bucket {name} at {server.endpoint}: {err}')
    if name in getattr(server, 'created', ()):
        server.created.remove(name)


def new_bucket(server, request) -> str:
    """A fresh, empty bucket on ``server``, deleted when the test ends, its exclusive create already verified by this
    process (so request counts and injected faults see only the test's own calls)."""
    name = server.create_bucket(f'test-{uuid.uuid4().hex[:12]}')
    request.addfinalizer(lambda: drop_bucket(server, name))
    store = storage.open_store(f's3://{name}', server.storage_options())
    store.verify_exclusive_create()  # remembered for the bucket by this process
    store.delete(f'{name}/{probe.REGISTRY_PROBE}')  # and the bucket left empty
    return name


@pytest.fixture(autouse=True)
def private_cache_home(tmp_path, monkeypatch):
    """Registries made with ``cache_dir=None`` (and forml-s3 CLI subprocesses) cache under the test's own
    directory, never in the user's ``~/.cache/forml-s3``."""
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg-cache'))


@pytest.fixture(autouse=True)
def no_lingering_leases():
    """Uploads a test leaves uncommitted are not leased (nor renewed) while later tests count requests."""
    yield
    lease.forget()


@pytest.fixture(scope='session')
def s3server():
    """The S3 endpoint of the session: the embedded moto server (started once), or ``FORML_S3_TEST_ENDPOINT``."""
    external = os.environ.get(ENDPOINT_VARIABLE)
    if external:
        endpoint = Endpoint(external)
        yield endpoint
        endpoint.cleanup()
        return
    with embedded.Server() as server:
        yield server


@pytest.fixture(scope='session')
def seaweedfs():
    """A SeaweedFS S3 gateway for the session (``weed server -s3`` on free ports), as an :class:`Endpoint`."""
    with servers.SeaweedFS() as server:
        endpoint = Endpoint(server.endpoint)
        endpoint.key, endpoint.secret, endpoint.region = 'test', 'test', embedded.REGION
        yield endpoint
        endpoint.cleanup()


SERVERS = {'s3': 's3server', 'seaweedfs': 'seaweedfs'}
"""The server fixture of each S3 backend."""


@pytest.fixture
def s3backend(request):
    """An S3 server: the session's endpoint, or each of ``helpers.S3_BACKENDS`` in a test marked
    ``helpers.every_s3_backend``."""
    return request.getfixturevalue(SERVERS[getattr(request, 'param', 's3')])


@pytest.fixture
def embedded_server(s3server) -> embedded.Server:
    """The embedded moto server itself; skips the test when ``FORML_S3_TEST_ENDPOINT`` selects another one."""
    if not isinstance(s3server, embedded.Server):
        pytest.skip(EMBEDDED_ONLY)
    return s3server


@pytest.fixture
def bucket(s3server, request) -> str:
    """A fresh, empty bucket for one test (deleted after it)."""
    return new_bucket(s3server, request)


@pytest.fixture
def counted(embedded_server):
    """The server with its request log cleared: the test sees only its own requests."""
    embedded_server.reset_counts()
    return embedded_server


def registry_url(backend: str, tmp_path: pathlib.Path, request) -> tuple[str, dict]:
    """A fresh registry URL on the backend, with its storage options (an S3 bucket is deleted after the test)."""
    if backend == 'memory':
        return f'memory://registry-{uuid.uuid4().hex[:12]}', {}
    if backend == 'file':
        return f'file://{tmp_path}/registry', {}
    server = request.getfixturevalue(SERVERS[backend])
    return f's3://{new_bucket(server, request)}/forml', server.storage_options()


def pytest_generate_tests(metafunc):
    """``backend``: memory, file and S3 everywhere; SeaweedFS too in the registry contract's modules."""
    if 'backend' in vars(metafunc.module):
        return  # a module with a backend fixture of its own (the cloud emulators') chooses its backends
    chosen = [m.args[0] for m in metafunc.definition.iter_markers('parametrize')]  # a test naming its own backends
    if 'backend' in metafunc.fixturenames and not any(
        'backend' in (names.replace(' ', '').split(',') if isinstance(names, str) else names) for names in chosen
    ):
        contract = metafunc.module.__name__.rsplit('.', 1)[-1] in SEAWEEDFS_MODULES
        metafunc.parametrize('backend', BACKENDS + (helpers.S3_BACKENDS[1:] if contract else ()), indirect=True)


@pytest.fixture
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_registry(backend, tmp_path, request):
    """A factory of registries on the parametrized backend, all at one URL (distinct instances, one cache)."""
    url, options = registry_url(backend, tmp_path, request)

    def make(**kwargs) -> Registry:
        kwargs.setdefault('cache_dir', tmp_path / 'cache')
        kwargs.setdefault('staging', tmp_path / 'staging')
        return Registry(url, storage_options=options, **kwargs)

    make.url = url
    make.options = options
    return make


@pytest.fixture
def registry(make_registry) -> Registry:
    return make_registry()


@pytest.fixture
def package_factory(tmp_path):
    """Builds real ForML release packages (``.4ml``) of a tiny project."""
    return helpers.PackageFactory(tmp_path / 'packages')


SLOWEST_FIRST = (
    'test_e2e',
    'test_gc_safety',
    'test_backends_cloud',
    'test_concurrency',
    'test_benchmarks',
    'test_scale',
    'test_soak',
    'test_localstack',
    'test_e2e_aliases',
    'test_ops',
    'test_pin_race',
    'test_aliases',
    'test_requests',
    'test_cli_config',
    'test_local_disk',
)
"""The modules taking longest (measured on 2 cores, 2026-12-01), longest first: pytest-xdist hands out whole
modules in collection order (``--dist loadfile --no-loadscope-reorder``), so these start first and the run
does not end on one long module while the other workers idle."""


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.stem, len(rank)))  # stable: each module keeps its order


def pytest_report_header(config):
    return f'forml-s3 S3 endpoint: {os.environ.get("FORML_S3_TEST_ENDPOINT") or "embedded moto server"}'


# --- cloud storage emulators (tests/servers.py): each started on first use, once a session, stopped at its end ---
@pytest.fixture(scope='session')
def gcs_server():
    """fake-gcs-server on 127.0.0.1 (the Google Cloud Storage JSON API)."""
    from . import servers

    with servers.FakeGCS() as server:
        yield server


@pytest.fixture(scope='session')
def azure_server():
    """Azurite's blob service on 127.0.0.1 (Azure Blob Storage, the development account)."""
    from . import servers

    with servers.Azurite() as server:
        yield server
