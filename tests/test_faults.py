"""Injected server faults (503 SlowDown, dropped connections, slow responses) on moto's HTTP server:
operations succeed after retries, or fail cleanly with nothing half-visible, and a re-run succeeds."""

import uuid

import forml
import pytest
from forml.io import asset

from forml_s3.registry import Registry

from .helpers import PROJECT, tag


@pytest.fixture
def make(s3server, bucket, tmp_path):
    def make(**options) -> Registry:
        return Registry(
            f's3://{bucket}/forml',
            storage_options=s3server.storage_options(**options),
            cache_dir=tmp_path / f'cache-{uuid.uuid4().hex[:6]}',
            staging=tmp_path / 'staging',
        )

    return make


@pytest.fixture(autouse=True)
def no_faults_left(embedded_server, s3server):
    yield
    s3server.clear_faults()


def states_put(call) -> bool:
    return call.method == 'PUT' and '/states/' in call.path


def test_throttled_state_uploads_succeed_after_retries(s3server, make, package_factory):
    registry = make()
    registry.push(package_factory('0.1'))
    fault = s3server.inject(503, 'SlowDown', count=3, match=states_put)
    sids = [uuid.uuid4() for _ in range(3)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes)
    registry.close(PROJECT, '0.1', 1, tag(sids))
    assert fault.fired == 3
    assert [make().read(PROJECT, '0.1', 1, s) for s in sids] == [s.bytes for s in sids]


def test_dropped_connections_on_reads_are_retried(s3server, make, package_factory):
    registry = make()
    registry.push(package_factory('0.1'))
    sid = uuid.uuid4()
    registry.write(PROJECT, '0.1', sid, b'payload' * 100)
    registry.close(PROJECT, '0.1', 1, tag([sid]))
    fault = s3server.inject(drop=True, count=2, match=lambda c: c.method == 'GET' and '/states/' in c.path)
    assert make().read(PROJECT, '0.1', 1, sid) == b'payload' * 100
    assert fault.fired == 2


def test_slow_responses_time_out_and_are_retried(s3server, make, package_factory):
    registry = make(read_timeout=1, connect_timeout=1)
    registry.push(package_factory('0.1'))
    fault = s3server.inject(503, 'SlowDown', count=1, delay=2.5, match=lambda c: 'list-type=2' in c.query)
    assert list(make(read_timeout=1).releases(PROJECT)) == [asset.Release.Key('0.1')]
    assert fault.fired == 1


def test_persistent_faults_fail_cleanly_and_a_rerun_succeeds(s3server, make, package_factory):
    registry = make(max_attempts=2, retries=1)
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(2)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes)
    fault = s3server.inject(
        503, 'SlowDown', count=1000, match=lambda c: c.method == 'PUT' and '/generations/' in c.path
    )
    with pytest.raises(forml.FailedError, match=r'Could not create .*generations/1.json, retries exhausted'):
        registry.close(PROJECT, '0.1', 1, tag(sids))
    assert fault.fired == 3  # botocore max_attempts=2 means 2 retries after the first try; s3fs retries=1: no more
    assert list(make().generations(PROJECT, '0.1')) == []
    s3server.clear_faults()
    registry.close(PROJECT, '0.1', 1, tag(sids))  # the states are still there: the re-run commits them
    assert list(make().generations(PROJECT, '0.1')) == [asset.Generation.Key(1)]


def test_failed_state_upload_is_reported_by_close_and_nothing_is_committed(s3server, make, package_factory):
    registry = make(max_attempts=1, retries=1)
    registry.push(package_factory('0.1'))
    s3server.inject(500, 'InternalError', count=1000, match=states_put)
    sid = uuid.uuid4()
    registry.write(PROJECT, '0.1', sid, b'lost')  # returns at once: the upload runs in the background
    with pytest.raises(asset.Level.Invalid, match=r'Upload of state .* failed'):
        registry.close(PROJECT, '0.1', 1, tag([sid]))
    assert list(make().generations(PROJECT, '0.1')) == []


def test_persistently_dropped_connections_are_a_failed_error(s3server, make, package_factory):
    registry = make(max_attempts=1, retries=1)
    registry.push(package_factory('0.1'))
    fault = s3server.inject(drop=True, count=1000, match=lambda c: 'list-type=2' in c.query)
    with pytest.raises(forml.FailedError, match=r'Could not list .*retries exhausted'):
        list(make(max_attempts=1, retries=1).releases(PROJECT))
    assert fault.fired >= 2


def test_a_412_without_condition_on_the_marker_is_a_conflict(s3server, make, package_factory):
    """Several S3-compatible servers answer a lost ``If-None-Match: *`` with a bare 412 (no ``<Condition>``),
    which s3fs raises as ``OSError(EINVAL)``, not ``FileExistsError``: any 412 there means "exists"."""
    registry = make()
    registry.push(package_factory('0.1'))
    sid = uuid.uuid4()
    registry.write(PROJECT, '0.1', sid, b'lost')
    fault = s3server.inject(
        412, 'PreconditionFailed', match=lambda c: c.method == 'PUT' and c.path.endswith('/generations/1.json')
    )
    with pytest.raises(asset.Level.Invalid, match='Generation 1 of demo-proj-0.1 was committed by another writer'):
        registry.close(PROJECT, '0.1', 1, tag([sid]))
    assert fault.fired == 1
    assert list(make().generations(PROJECT, '0.1')) == []
