"""Security on moto's HTTP server: server-side encryption options reach every object forml-s3 writes (markers,
multipart states and packages included), and credentials never reach a repr, an error or a log line, even at
DEBUG level."""

import logging
import uuid

import pytest

from forml_s3 import store
from forml_s3.registry import Registry

from .helpers import PROJECT, commit

MiB = 2**20
KMS_KEY = 'arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab'


@pytest.mark.parametrize(
    'options, expected',
    [
        ({'sse': 'AES256'}, {'ServerSideEncryption': 'AES256'}),
        ({'sse': 'aws:kms', 'sse_kms_key_id': KMS_KEY}, {'ServerSideEncryption': 'aws:kms', 'SSEKMSKeyId': KMS_KEY}),
    ],
)
def test_sse_options_reach_every_object(s3server, bucket, tmp_path, package_factory, options, expected):
    registry = Registry(
        f's3://{bucket}/forml', storage_options=s3server.storage_options(**options), cache_dir=tmp_path / 'cache'
    )
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=(b'small', uuid.uuid4().bytes * (33 * MiB // 16)))  # the second goes multipart
    client = s3server.client()
    keys = [o['Key'] for o in client.list_objects_v2(Bucket=bucket)['Contents']]
    kinds = {k.rsplit('/', 2)[-2] if k.count('/') > 1 else 'root' for k in keys}
    assert {'releases', 'generations', 'states', '0.1', 'root'} <= kinds  # markers, states, package, project
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        assert {k: head.get(k) for k in expected} == expected, key


def test_credentials_never_reach_reprs_errors_or_logs(s3server, bucket, tmp_path, package_factory, caplog, capfd):
    key_id, secret = 'AKIAFORMLS3TESTKEY00', 'forml-s3-test-secret-value-do-not-log'
    options = {**s3server.storage_options(), 'key': key_id, 'secret': secret}
    caplog.set_level(logging.DEBUG)  # every logger: ours, s3fs, botocore, urllib3
    registry = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'cache')
    registry.push(package_factory('0.1'))
    _, sids = commit(registry, 1, payloads=(b'state',))
    reader = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'other')
    assert reader.read(PROJECT, '0.1', 1, sids[0]) == b'state'
    with pytest.raises(Exception) as missing:  # an error message from the same store
        Registry(f's3://no-bucket-{uuid.uuid4().hex[:8]}/x', storage_options=options, cache_dir=tmp_path).push(
            package_factory('0.2')
        )

    assert any('Connecting to s3://' in r.getMessage() and "'***'" in r.getMessage() for r in caplog.records)
    assert any(r.name.startswith('botocore') for r in caplog.records)  # DEBUG really was on for the client
    captured = capfd.readouterr()
    for text in (caplog.text, captured.out, captured.err, repr(registry), repr(registry._store), str(missing.value)):
        assert secret not in text
    ours = '\n'.join(r.getMessage() for r in caplog.records if r.name.startswith('forml_s3'))
    assert key_id not in ours and key_id not in repr(registry) and key_id not in str(missing.value)


def test_a_url_with_credentials_is_refused(tmp_path):
    with pytest.raises(Exception, match='Credentials in the registry URL are not supported') as refused:
        store.Store('s3://AKIAEXAMPLE:secret-in-url@bucket/forml')
    assert 'secret-in-url' not in str(refused.value)
