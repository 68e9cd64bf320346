"""The conformance probe: ``forml-s3 doctor`` against real servers (moto, SeaweedFS, a moto bucket that ignores
``If-None-Match``, local disk), and the exclusive-create check the registry runs once per endpoint, bucket and
process before it writes anything.

Buckets here are made with ``create_bucket`` directly, not with the ``bucket`` fixture (which verifies exclusive
create as it makes one): these tests watch the verification happen.
"""

import json
import logging
import uuid

import forml
import pytest

from forml_s3 import storage
from forml_s3.registry import Registry
from forml_s3.storage import s3

from .conftest import drop_bucket
from .helpers import PROJECT, commit, every_s3_backend, run_cli, s3_options
from .test_security import documented_policy, user_with

PROBE_PATH = '.forml-s3-probe/'
PROBE_KEY = '.forml-s3-probe/exclusive'


@pytest.fixture
def raw_bucket(s3backend, request) -> str:
    """A bucket whose exclusive create nobody has verified yet (deleted after the test)."""
    name = s3backend.create_bucket(f'doctor-{uuid.uuid4().hex[:12]}')
    request.addfinalizer(lambda: drop_bucket(s3backend, name))
    return name


@pytest.fixture
def ignoring(embedded_server, request) -> str:
    """A moto bucket whose PUTs lose If-None-Match before moto sees them: a server without conditional writes."""
    name = embedded_server.create_bucket(f'ignoring-{uuid.uuid4().hex[:12]}')
    embedded_server.ignore_if_none_match(name)
    request.addfinalizer(
        lambda: (embedded_server.ignore_if_none_match(name, False), drop_bucket(embedded_server, name))
    )
    return name


def keys(server, bucket: str) -> list[str]:
    return [o['Key'] for o in server.client().list_objects_v2(Bucket=bucket).get('Contents', ())]


@every_s3_backend
def test_doctor_passes_every_check_and_leaves_nothing(s3backend, raw_bucket, request):
    client = s3backend.client()
    rule = {'ID': 'theirs', 'Status': 'Enabled', 'Filter': {'Prefix': 'logs/'}, 'Expiration': {'Days': 30}}
    client.put_bucket_lifecycle_configuration(Bucket=raw_bucket, LifecycleConfiguration={'Rules': [rule]})
    url = f's3://{raw_bucket}/forml'
    result = run_cli('doctor', url, '--json', '--write-lifecycle', *s3_options(s3backend))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    checks = {c['name']: c for c in report['checks']}
    assert report['ok'] is True and report['url'] == url
    assert [n for n, c in checks.items() if c['ok'] is not True] == [], checks
    assert set(checks) == {
        'exclusive create',
        'listing',
        'write and read',
        'object tags',
        'multipart',
        'checksum headers',
        'compare-and-swap',
        'lifecycle rules',
    }
    # how the second create was refused differs between servers (both are "exists" to forml-s3)
    seaweedfs = request.node.callspec.params['s3backend'] == 'seaweedfs'
    how = '412 PreconditionFailed without <Condition>' if seaweedfs else '412 PreconditionFailed with <Condition>'
    assert checks['exclusive create']['detail'].endswith(how)
    assert 'original restored' in checks['lifecycle rules']['detail']
    assert client.get_bucket_lifecycle_configuration(Bucket=raw_bucket)['Rules'][0]['ID'] == 'theirs'
    assert len(client.get_bucket_lifecycle_configuration(Bucket=raw_bucket)['Rules']) == 1
    assert keys(s3backend, raw_bucket) == []  # every probe object deleted
    assert not client.list_multipart_uploads(Bucket=raw_bucket).get('Uploads')


def test_doctor_fails_a_server_that_ignores_if_none_match(s3server, ignoring):
    result = run_cli('doctor', f's3://{ignoring}/forml', *s3_options(s3server))
    assert result.exit_code == 1, result.output
    lines = result.stdout.splitlines()
    assert any(line.split()[:3] == ['FAIL', 'exclusive', 'create'] and 'ACCEPTED' in line for line in lines), lines
    assert lines[-1] == 'FAIL: the registry cannot run safely here'
    assert sum(line.startswith('  ok') for line in lines) == 7  # everything else works there


def test_doctor_reads_lifecycle_without_writing_it_by_default(s3server, raw_bucket):
    s3server.reset_counts()
    result = run_cli('doctor', f's3://{raw_bucket}/forml', *s3_options(s3server))
    assert result.exit_code == 0, result.output
    assert 'not written (--write-lifecycle' in result.stdout
    lifecycle = [r for r in s3server.requests if 'lifecycle' in r.query]
    assert [r.method for r in lifecycle] == ['GET']


def test_doctor_on_local_disk(tmp_path):
    result = run_cli('doctor', f'file://{tmp_path}/registry', '--json')
    assert result.exit_code == 0, result.output
    checks = {c['name']: c['ok'] for c in json.loads(result.stdout)['checks']}
    assert checks == {
        'exclusive create': True,
        'listing': True,
        'write and read': True,
        'object tags': None,
        'multipart': None,
        'checksum headers': None,
        'compare-and-swap': True,
        'lifecycle rules': None,
    }
    left = [p for p in (tmp_path / 'registry').rglob('*') if p.is_file() and not p.name.startswith('.lock-')]
    assert left == []  # (empty folders and the lock file of the compare-and-swap stay)


def test_doctor_on_a_missing_bucket_is_one_clear_line(s3server):
    result = run_cli('doctor', 's3://no-such-bucket-here/forml', *s3_options(s3server))
    assert result.exit_code == 2
    assert "Bucket 'no-such-bucket-here' does not exist" in result.output


def test_the_registry_refuses_a_server_that_ignores_if_none_match_before_writing(
    s3server, ignoring, tmp_path, package_factory
):
    store = storage.open_store(f's3://{ignoring}', s3server.storage_options())
    store.create(f'{ignoring}/twice', b'one')
    store.create(f'{ignoring}/twice', b'two')  # the server really ignores it: a second "exclusive" create wins
    assert store.read(f'{ignoring}/twice') == b'two'
    store.delete(f'{ignoring}/twice')

    registry = Registry(f's3://{ignoring}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path)
    with pytest.raises(forml.InvalidError, match='cannot guard commits.*ACCEPTED a second If-None-Match') as refused:
        registry.push(package_factory('0.1'))
    assert 'forml-s3 doctor' in str(refused.value) and 'single_writer = true' in str(refused.value)
    assert keys(s3server, ignoring) == [f'forml/{PROBE_KEY}']  # the probe object alone: no package, no marker

    s3server.reset_counts()
    with pytest.raises(forml.InvalidError, match='cannot guard commits'):  # remembered: no second probe
        registry.write(PROJECT, '0.1', uuid.uuid4(), b'state')
    assert s3server.count(path_prefix=f'/{ignoring}/forml/{PROBE_PATH}') == 0
    assert s3server.count(method='PUT') == 0
    assert keys(s3server, ignoring) == [f'forml/{PROBE_KEY}']


def test_single_writer_goes_on_with_a_warning(s3server, ignoring, tmp_path, package_factory, caplog):
    registry = Registry(
        f's3://{ignoring}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path, single_writer=True
    )
    with caplog.at_level(logging.WARNING, logger='forml_s3.storage.s3'):
        registry.push(package_factory('0.1'))
        commit(registry, 1)
    warnings = [r.getMessage() for r in caplog.records if 'cannot guard commits' in r.getMessage()]
    assert len(warnings) == 1 and 'single_writer is set' in warnings[0]  # once, not once per call
    assert list(registry.generations(PROJECT, '0.1')) == [1]


def test_the_probe_runs_once_per_bucket_and_process(s3server, raw_bucket, tmp_path, package_factory, monkeypatch):
    s3server.reset_counts()
    first = Registry(f's3://{raw_bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'a')
    first.push(package_factory('0.1'))
    probe = [r for r in s3server.requests if r.path.startswith(f'/{raw_bucket}/forml/{PROBE_PATH}')]
    assert [(r.method, r.path, r.status) for r in probe] == [
        ('PUT', f'/{raw_bucket}/forml/{PROBE_KEY}', 200),
        ('PUT', f'/{raw_bucket}/forml/{PROBE_KEY}', 412),
    ]
    assert s3server.requests[: len(probe)] == probe  # before anything else the push sends

    s3server.reset_counts()
    second = Registry(f's3://{raw_bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'b')
    commit(second, 1)
    second.push(package_factory('0.2'))
    assert s3server.count(path_prefix=f'/{raw_bucket}/forml/{PROBE_PATH}') == 0  # this process knows the answer
    assert list(second.generations(PROJECT, '0.1')) == [1]

    monkeypatch.setattr(s3, '_VERIFIED', {})  # another process: the kept probe object is refused at once
    s3server.reset_counts()
    commit(Registry(f's3://{raw_bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path), 2)
    probe = [(r.method, r.status) for r in s3server.requests if PROBE_PATH in r.path]
    assert probe == [('PUT', 412)]


def test_writers_with_the_documented_policy_pass_the_check(
    embedded_server, s3server, raw_bucket, tmp_path, package_factory
):
    """The minimal writer policy of docs/security.md (no s3:DeleteObject) on a bucket never checked before."""
    policy = documented_policy(raw_bucket)
    # moto authorizes DeleteObjectTagging as s3:DeleteObject (see test_security): allowed here, and the request
    # log below shows that nothing is really deleted
    policy['Statement'].append(
        {'Effect': 'Allow', 'Action': 's3:DeleteObject', 'Resource': f'arn:aws:s3:::{raw_bucket}/forml/*'}
    )
    writer = user_with(s3server, policy)
    previous = s3server.set_auth(0)
    try:
        s3server.reset_counts()
        registry = Registry(
            f's3://{raw_bucket}/forml', storage_options=s3server.storage_options(**writer), cache_dir=tmp_path
        )
        registry.push(package_factory('0.1'))
        assert [(r.method, r.status) for r in s3server.requests if PROBE_PATH in r.path] == [('PUT', 200), ('PUT', 412)]
        requests = s3server.requests
        assert not [r for r in requests if (r.method == 'DELETE' and 'tagging' not in r.query) or r.status == 403]
    finally:
        s3server.set_auth(previous)
    assert [str(r) for r in registry.releases(PROJECT)] == ['0.1']


def test_a_server_refusing_conditional_writes_is_named(s3server, raw_bucket, embedded_server, tmp_path):
    fault = s3server.inject(501, 'NotImplemented', count=10, match=lambda call: 'if-none-match' in call.headers)
    try:
        store = storage.open_store(f's3://{raw_bucket}/forml', s3server.storage_options())
        with pytest.raises(forml.InvalidError, match=r'refuses a PUT with If-None-Match: \* \(NotImplemented\)'):
            store.verify_exclusive_create()
    finally:
        s3server.clear_faults()
    assert fault.fired >= 1
