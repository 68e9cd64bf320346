"""Tests of the embedded S3 endpoint (moto in-process, request accounting, fault injection)."""

import concurrent.futures
import os
import socket
import subprocess
import sys

import botocore.config
import botocore.exceptions
import pytest

from . import embedded

BUCKET = 'forml-embedded-test'


def _single_attempt(server: embedded.Server, attempts: int = 1):
    return server.client(config=botocore.config.Config(retries={'mode': 'standard', 'total_max_attempts': attempts}))


@pytest.fixture(scope='module')
def server():
    with embedded.Server() as srv:
        yield srv


@pytest.fixture
def s3(server):
    """A clean moto state with one bucket; counts and faults cleared; returns a boto3 client."""
    server.clear_faults()
    server.reset()
    server.create_bucket(BUCKET)
    server.reset_counts()
    yield server.client()
    server.clear_faults()


def test_start_stop():
    srv = embedded.Server()
    srv.start()
    try:
        assert srv.running
        assert srv.port > 0
        assert srv.endpoint == f'http://127.0.0.1:{srv.port}'
        with socket.create_connection(('127.0.0.1', srv.port), timeout=5):
            pass
        assert srv.start() is srv  # idempotent
    finally:
        srv.stop()
    assert not srv.running
    with pytest.raises(OSError), socket.create_connection(('127.0.0.1', srv.port), timeout=5):
        pass
    srv.stop()  # idempotent


def test_not_started():
    srv = embedded.Server()
    with pytest.raises(RuntimeError):
        _ = srv.endpoint
    with pytest.raises(RuntimeError):
        _ = srv.requests


def test_counts_requests(server, s3):
    s3.put_object(Bucket=BUCKET, Key='a/one', Body=b'x' * 1000)
    s3.put_object(Bucket=BUCKET, Key='a/two', Body=b'y' * 10)
    s3.put_object(Bucket=BUCKET, Key='b/three', Body=b'z')
    assert s3.get_object(Bucket=BUCKET, Key='a/one')['Body'].read() == b'x' * 1000
    s3.list_objects_v2(Bucket=BUCKET, Prefix='a/')

    assert len(server.requests) == 5
    assert server.count(method='put') == 3
    assert server.count(method='PUT', path_prefix=f'/{BUCKET}/a/') == 2
    assert server.count(method='GET', query_contains='list-type=2') == 1
    assert server.count(path_prefix='/other-bucket') == 0

    put_one = next(r for r in server.requests if r.method == 'PUT' and r.path == f'/{BUCKET}/a/one')
    assert (put_one.bytes_in, put_one.status, put_one.fault) == (1000, 200, None)
    get_one = next(r for r in server.requests if r.method == 'GET' and r.path == f'/{BUCKET}/a/one')
    assert (get_one.bytes_out, get_one.status) == (1000, 200)

    server.reset_counts()
    assert server.requests == []
    assert server.count() == 0


def test_requests_is_a_copy(server, s3):
    s3.head_bucket(Bucket=BUCKET)
    snapshot = server.requests
    snapshot.clear()
    assert server.count(method='HEAD') == 1


def test_counts_concurrent_requests(server, s3):
    def put(i: int) -> None:
        s3.put_object(Bucket=BUCKET, Key=f'c/{i:03d}', Body=b'1' * i)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(200)))
    assert server.count(method='PUT', path_prefix=f'/{BUCKET}/c/') == 200
    assert sum(r.bytes_in for r in server.requests) == sum(range(200))


def test_fault_retried_then_succeeds(server, s3):
    fault = server.inject(status=503, code='SlowDown', count=2)
    s3.put_object(Bucket=BUCKET, Key='k', Body=b'data')  # boto3 retries 503 SlowDown

    assert fault.fired == 2
    assert [(r.method, r.status, r.fault) for r in server.requests] == [
        ('PUT', 503, 'SlowDown'),
        ('PUT', 503, 'SlowDown'),
        ('PUT', 200, None),
    ]
    assert s3.get_object(Bucket=BUCKET, Key='k')['Body'].read() == b'data'


def test_fault_exhausts_retries(server, s3):
    fault = server.inject(status=503, code='SlowDown', count=10)
    client = _single_attempt(server, attempts=3)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.put_object(Bucket=BUCKET, Key='k', Body=b'data')
    error = caught.value.response
    assert error['Error']['Code'] == 'SlowDown'
    assert error['Error']['Message'] == 'Please reduce your request rate.'
    assert error['ResponseMetadata']['HTTPStatusCode'] == 503
    assert server.count(method='PUT') == 3
    assert (fault.fired, fault.remaining) == (3, 7)

    server.clear_faults()
    # the faulted requests never reached moto
    assert s3.list_objects_v2(Bucket=BUCKET)['KeyCount'] == 0
    client.put_object(Bucket=BUCKET, Key='k', Body=b'data')
    assert s3.list_objects_v2(Bucket=BUCKET)['KeyCount'] == 1


def test_fault_not_retried(server, s3):
    server.inject(status=403, code='AccessDenied', count=1)
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        s3.list_objects_v2(Bucket=BUCKET)
    assert caught.value.response['Error']['Code'] == 'AccessDenied'
    assert server.count() == 1  # 403 is not retried
    assert s3.list_objects_v2(Bucket=BUCKET)['KeyCount'] == 0  # fault used up


def test_fault_match(server, s3):
    s3.put_object(Bucket=BUCKET, Key='k', Body=b'old')
    fault = server.inject(status=500, code='InternalError', count=1, match=lambda call: call.method == 'PUT')
    client = _single_attempt(server)
    assert client.get_object(Bucket=BUCKET, Key='k')['Body'].read() == b'old'  # GET not matched
    assert fault.fired == 0
    with pytest.raises(botocore.exceptions.ClientError) as caught:
        client.put_object(Bucket=BUCKET, Key='k', Body=b'new')
    assert caught.value.response['Error']['Code'] == 'InternalError'
    assert fault.fired == 1
    assert client.get_object(Bucket=BUCKET, Key='k')['Body'].read() == b'old'


def test_fault_match_headers(server, s3):
    """A predicate can target conditional writes only (the If-None-Match header)."""
    server.inject(status=500, code='InternalError', match=lambda call: call.headers.get('if-none-match') == '*')
    client = _single_attempt(server)
    client.put_object(Bucket=BUCKET, Key='plain', Body=b'1')
    with pytest.raises(botocore.exceptions.ClientError):
        client.put_object(Bucket=BUCKET, Key='marker', Body=b'1', IfNoneMatch='*')
    assert [r.fault for r in server.requests] == [None, 'InternalError']


def test_fault_drop(server, s3):
    server.inject(drop=True, count=1)
    with pytest.raises(botocore.exceptions.ConnectionClosedError):
        _single_attempt(server).put_object(Bucket=BUCKET, Key='k', Body=b'x' * 100)
    (record,) = server.requests
    assert (record.status, record.fault, record.bytes_in) == (0, 'drop', 100)
    # the server keeps serving after a drop
    s3.put_object(Bucket=BUCKET, Key='k', Body=b'x')
    assert server.count(method='PUT') == 2


def test_inject_validates_count(server):
    with pytest.raises(ValueError):
        server.inject(count=0)


def test_reset(server, s3):
    s3.put_object(Bucket=BUCKET, Key='k', Body=b'x')
    server.create_bucket('forml-embedded-other')
    assert {b['Name'] for b in s3.list_buckets()['Buckets']} == {BUCKET, 'forml-embedded-other'}
    recorded = len(server.requests)
    server.reset()
    assert s3.list_buckets()['Buckets'] == []
    assert len(server.requests) == recorded + 1  # the reset itself is not recorded, list_buckets is


def test_moto_state_is_per_process(server, s3):
    """Two servers in one process serve the same (global) moto backend."""
    with embedded.Server() as other:
        assert other.port != server.port
        assert BUCKET in {b['Name'] for b in other.client().list_buckets()['Buckets']}


def test_client_env(server, s3):
    s3.put_object(Bucket=BUCKET, Key='from-parent', Body=b'x')
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    env.update(server.client_env())
    assert env['AWS_ENDPOINT_URL'] == server.endpoint
    code = f'import boto3; print(boto3.client("s3").list_objects_v2(Bucket="{BUCKET}")["Contents"][0]["Key"])'
    out = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == 'from-parent', out.stderr
    assert server.count(method='GET', query_contains='list-type=2') == 1


def test_storage_options(server, s3):
    s3fs = pytest.importorskip('s3fs')
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **server.storage_options())
    fs.pipe_file(f'{BUCKET}/via-s3fs', b'hello')
    assert s3.get_object(Bucket=BUCKET, Key='via-s3fs')['Body'].read() == b'hello'
    assert server.count(method='PUT', path_prefix=f'/{BUCKET}/via-s3fs') == 1


def test_set_auth(server, s3):
    """With IAM enforcement on, the dummy keys are rejected; turning it off restores open access."""
    previous = server.set_auth(0)
    try:
        with pytest.raises(botocore.exceptions.ClientError) as caught:
            _single_attempt(server).list_objects_v2(Bucket=BUCKET)
        assert caught.value.response['Error']['Code'] == 'InvalidAccessKeyId'
    finally:
        server.set_auth(previous)
    assert previous == float('inf')
    assert s3.list_objects_v2(Bucket=BUCKET)['KeyCount'] == 0
