"""Bad input, table-driven: every case asserts the ForML error type and what its message tells the user."""

import json
import uuid

import forml
import pytest
from forml.io import asset

from forml_s3.registry import Registry
from forml_s3.runtime import cache

from .helpers import PROJECT, commit

INVALID = asset.Level.Invalid

NAME_CASES = [
    ('slash', lambda r: r.releases('a/b'), INVALID, 'Invalid project name \'a/b\'.*no "/"'),
    ('dotdot', lambda r: r.releases('..'), INVALID, "Invalid project name '..'"),
    ('dotdot-inside', lambda r: r.releases('a..b'), INVALID, "Invalid project name 'a..b'"),
    ('empty', lambda r: r.releases(''), INVALID, 'Invalid project name: empty'),
    ('control', lambda r: r.releases('ab\x07c'), INVALID, 'Invalid project name .*control characters'),
    ('newline', lambda r: r.releases('abc\n'), INVALID, 'Invalid project name'),
    ('1000-chars', lambda r: r.releases('p' * 1000), INVALID, 'longer than 128 characters'),
    ('version-word', lambda r: r.generations(PROJECT, 'latest'), INVALID, "Invalid release 'latest'.*PEP 440"),
    ('version-slash', lambda r: r.generations(PROJECT, '1.0/../x'), INVALID, 'Invalid release'),
    ('generation-0', lambda r: r.open(PROJECT, '1.0', 0), INVALID, 'Invalid generation 0: expected a natural'),
    ('generation-neg', lambda r: r.open(PROJECT, '1.0', -1), INVALID, 'Invalid generation -1'),
    ('generation-text', lambda r: r.read(PROJECT, '1.0', 'x', uuid.uuid4()), INVALID, "Invalid generation 'x'"),
    ('sid', lambda r: r.read(PROJECT, '1.0', 1, '../x'), INVALID, "Invalid state id '../x'"),
]


@pytest.mark.parametrize('call, error, message', [c[1:] for c in NAME_CASES], ids=[c[0] for c in NAME_CASES])
def test_bad_names(registry, call, error, message):
    with pytest.raises(error, match=message):
        call(registry)


@pytest.fixture
def committed(registry, package_factory):
    registry.push(package_factory('0.1'))
    _, sids = commit(registry, 1, payloads=(b'genuine state bytes',))
    return registry, sids[0]


def overwrite(registry: Registry, key: str, data: bytes) -> None:
    registry._store.write(key, data)  # what a stray tool or a bit flip would do in the bucket


@pytest.mark.parametrize(
    'garbage, message',
    [
        (b'{"training": ', 'not valid JSON'),
        (b'\xff\xfe', 'not valid JSON'),
        (json.dumps({'format': 'something-else'}).encode(), 'not a forml-s3/1 marker'),
        (json.dumps({'format': 'forml-s3/1', 'tag': {}}).encode(), 'Corrupted generation marker'),
    ],
    ids=['truncated', 'binary', 'foreign', 'incomplete'],
)
def test_corrupted_tag_is_invalid_and_names_the_key(make_registry, committed, garbage, message):
    registry, _ = committed
    key = registry._layout.generation_marker(PROJECT, '0.1', 1)
    overwrite(registry, key, garbage)
    fresh = make_registry(cache_dir=None)  # another machine: nothing cached
    with pytest.raises(
        INVALID, match=f'Corrupted .*{key.rsplit("/", 1)[-1]}.*{message}|{message}.*{key.rsplit("/", 1)[-1]}'
    ):
        fresh.open(PROJECT, '0.1', 1)


@pytest.mark.parametrize('damage', ['altered', 'truncated'])
def test_altered_state_is_never_returned(make_registry, committed, damage):
    registry, sid = committed
    key = registry._layout.state(PROJECT, '0.1', sid)
    overwrite(registry, key, b'genuine state BYTES' if damage == 'altered' else b'genuine')
    fresh = make_registry(cache_dir=None)
    with pytest.raises(cache.Corrupted, match=f'Object .*{sid}.bin is corrupted: expected 19 bytes'):
        fresh.read(PROJECT, '0.1', 1, sid)


def test_altered_package_is_never_installed(make_registry, committed, tmp_path):
    registry, _ = committed
    marker = registry._release_marker(PROJECT, '0.1')
    overwrite(registry, registry._layout.release_object(PROJECT, '0.1', marker['package']['key']), b'PK\x03\x04 not it')
    with pytest.raises(cache.Corrupted, match=r'package-.*\.4ml is corrupted'):
        make_registry(cache_dir=None, staging=tmp_path / 'other-staging').mount(PROJECT, '0.1')
    assert [p.name for p in (tmp_path / 'other-staging' / PROJECT).glob('[!.]*')] == []  # no tree installed


def test_missing_bucket(s3server, tmp_path):
    registry = Registry('s3://no-such-bucket/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path)
    with pytest.raises(forml.MissingError, match="Bucket 'no-such-bucket' does not exist.*create it or fix the url"):
        list(registry.projects())


@pytest.fixture
def enforced(embedded_server, s3server, bucket):
    """IAM enforcement on the moto server (process-wide: restored afterwards), with a read-only user."""
    iam = s3server.client('iam')
    user = f'reader-{uuid.uuid4().hex[:6]}'
    iam.create_user(UserName=user)
    policy = {
        'Version': '2012-10-17',
        'Statement': [{'Effect': 'Allow', 'Action': ['s3:Get*', 's3:List*'], 'Resource': '*'}],
    }
    iam.put_user_policy(UserName=user, PolicyName='read-only', PolicyDocument=json.dumps(policy))
    keys = iam.create_access_key(UserName=user)['AccessKey']
    previous = s3server.set_auth(0)
    try:
        yield {'key': keys['AccessKeyId'], 'secret': keys['SecretAccessKey']}
    finally:
        s3server.set_auth(previous)


def test_wrong_credentials(s3server, bucket, enforced, tmp_path):
    options = s3server.storage_options(key='AKIAWRONGWRONGWRONG0', secret='not-the-secret')
    registry = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path)
    with pytest.raises(forml.InvalidError, match='Access denied while trying to list .*check the credentials') as err:
        list(registry.projects())
    assert 'not-the-secret' not in str(err.value)


def test_read_only_credentials_on_push(s3server, bucket, enforced, tmp_path, package_factory):
    registry = Registry(
        f's3://{bucket}/forml', storage_options=s3server.storage_options(**enforced), cache_dir=tmp_path / 'c'
    )
    assert list(registry.projects()) == []  # reading is allowed
    with pytest.raises(forml.InvalidError, match='Access denied while trying to write .*package-') as err:
        registry.push(package_factory('0.1'))
    assert enforced['secret'] not in str(err.value)
    assert list(registry.releases(PROJECT)) == []
