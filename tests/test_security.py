"""Security on moto's HTTP server: server-side encryption options reach every object forml-s3 writes (markers,
multipart states and packages included), and credentials never reach a repr, an error or a log line, even at
DEBUG level."""

import json
import logging
import pathlib
import uuid

import pytest

from forml_s3 import storage
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
        storage.open_store('s3://AKIAEXAMPLE:secret-in-url@bucket/forml')
    assert 'secret-in-url' not in str(refused.value)


def documented_policy(bucket: str) -> dict:
    """The writers' policy of docs/security.md ("Minimal IAM policy"), for ``bucket``."""
    text = (pathlib.Path(__file__).parent.parent / 'docs' / 'security.md').read_text()
    block = text.split('## Minimal IAM policy', 1)[1].split('```json', 1)[1].split('```', 1)[0]
    return json.loads(block.replace('my-bucket', bucket))


def user_with(s3server, policy: dict) -> dict:
    iam = s3server.client('iam')
    name = f'user-{uuid.uuid4().hex[:8]}'
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName='policy', PolicyDocument=json.dumps(policy))
    keys = iam.create_access_key(UserName=name)['AccessKey']
    return {'key': keys['AccessKeyId'], 'secret': keys['SecretAccessKey']}


def test_the_documented_minimal_policies_suffice(embedded_server, s3server, bucket, tmp_path, package_factory):
    """Writers with the policy of docs/security.md release, train and read; readers with ListBucket and GetObject
    alone list, read and mount. Under moto's IAM enforcement, on its HTTP server.

    What moto cannot show: AWS also requires s3:PutObjectTagging for a PutObject carrying ``x-amz-tagging`` (how
    forml-s3 tags uploads uncommitted); moto authorizes it as plain PutObject. The policy grants it.
    """
    writer_policy = documented_policy(bucket)
    # moto authorizes DeleteObjectTagging as s3:DeleteObject (AWS: s3:DeleteObjectTagging, in the policy): allow
    # it here, and check below from the request log that no object is ever really deleted.
    writer_policy['Statement'].append(
        {'Effect': 'Allow', 'Action': 's3:DeleteObject', 'Resource': f'arn:aws:s3:::{bucket}/forml/*'}
    )
    writer = user_with(s3server, writer_policy)
    reader_policy = {
        'Version': '2012-10-17',
        'Statement': [
            {'Effect': 'Allow', 'Action': 's3:ListBucket', 'Resource': f'arn:aws:s3:::{bucket}'},
            {'Effect': 'Allow', 'Action': 's3:GetObject', 'Resource': f'arn:aws:s3:::{bucket}/forml/*'},
        ],
    }
    reader = user_with(s3server, reader_policy)
    url = f's3://{bucket}/forml'
    previous = s3server.set_auth(0)
    try:
        s3server.reset_counts()
        trainer = Registry(url, storage_options=s3server.storage_options(**writer), cache_dir=tmp_path / 'w')
        trainer.push(package_factory('0.1'))
        big = uuid.uuid4().bytes * (33 * MiB // 16)  # multipart: CreateMultipartUpload, UploadPart, Complete
        _, sids = commit(trainer, 1, payloads=(b'small', big))
        requests = s3server.requests
        assert all(r.status < 400 for r in requests), [r for r in requests if r.status >= 400]
        assert not [r for r in requests if r.method == 'DELETE' and 'tagging' not in r.query]

        serving = Registry(url, storage_options=s3server.storage_options(**reader), cache_dir=tmp_path / 'r')
        assert list(serving.generations(PROJECT, '0.1')) == [1]
        serving.open(PROJECT, '0.1', 1)
        assert [serving.read(PROJECT, '0.1', 1, s) for s in sids] == [b'small', big]
        assert serving.mount(PROJECT, '0.1').path.exists()
    finally:
        s3server.set_auth(previous)
