"""Shared fixtures: an embedded S3 endpoint (moto's HTTP server on 127.0.0.1) and registries on every backend.

``FORML_S3_TEST_ENDPOINT`` points the S3 tests at another endpoint (LocalStack, MinIO, AWS) instead of the
embedded moto server; request-counting tests need the embedded server and skip without it.
"""

import os
import pathlib
import uuid

import pytest

from forml_s3 import embedded
from forml_s3.registry import Registry

from . import helpers

BACKENDS = ('memory', 'file', 's3')


@pytest.fixture(scope='session')
def s3server():
    """The embedded moto S3 server, started once for the session."""
    with embedded.Server() as server:
        yield server


@pytest.fixture
def bucket(s3server) -> str:
    """A fresh, empty bucket for one test."""
    return s3server.create_bucket(f'test-{uuid.uuid4().hex[:12]}')


@pytest.fixture
def counted(s3server):
    """The server with its request log cleared: the test sees only its own requests."""
    s3server.reset_counts()
    return s3server


def registry_url(backend: str, tmp_path: pathlib.Path, s3server=None) -> tuple[str, dict]:
    """A fresh registry URL on the backend, with its storage options."""
    if backend == 'memory':
        return f'memory://registry-{uuid.uuid4().hex[:12]}', {}
    if backend == 'file':
        return f'file://{tmp_path}/registry', {}
    name = s3server.create_bucket(f'test-{uuid.uuid4().hex[:12]}')
    return f's3://{name}/forml', s3server.storage_options()


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def make_registry(backend, tmp_path, request):
    """A factory of registries on the parametrized backend, all at one URL (distinct instances, one cache)."""
    s3server = request.getfixturevalue('s3server') if backend == 's3' else None
    url, options = registry_url(backend, tmp_path, s3server)

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


def pytest_report_header(config):
    return f'forml-s3 S3 endpoint: {os.environ.get("FORML_S3_TEST_ENDPOINT") or "embedded moto server"}'
