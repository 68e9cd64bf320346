"""Lifecycle rules select only their registry's objects: a bucket shared by two registries and unrelated data,
checked through ``forml-s3 lifecycle preview`` and by carrying out what the bucket's rules would do."""

import datetime
import json

import pytest

from forml_s3.model import layout
from forml_s3.ops import lifecycle
from forml_s3.ops import snapshot as inspect
from forml_s3.registry import Registry
from forml_s3.runtime import retention

from .helpers import PROJECT, commit, run_cli, s3_options

LATER = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)
UNRELATED = {
    'data/readings.csv': b't,v\n1,2\n',
    'data/tagged.bin': b'a user object that happens to carry the tag',  # tagged forml-s3=retired below
    'team-a-notes.txt': b'next to team-a/, not under it',
}


@pytest.fixture
def shared(s3server, bucket, tmp_path, package_factory):
    """Registries at s3://bucket/team-a and s3://bucket/team-b, three generations each (the oldest two retired),
    an uncommitted state each, plus unrelated objects and an unrelated incomplete multipart upload."""
    client = s3server.client()
    registries = {}
    for team in ('team-a', 'team-b'):
        registry = Registry(
            f's3://{bucket}/{team}',
            storage_options=s3server.storage_options(),
            cache_dir=tmp_path / f'cache-{team}',
            pack_states=False,
        )
        registry.push(package_factory('0.1'))
        for generation in (1, 2, 3):
            commit(registry, generation, payloads=(f'{team}-{generation}'.encode(),))
        assert retention.retire(registry._store, registry._layout, PROJECT, '0.1', keep=1) == [1, 2]
        registry._store.write(
            f'{bucket}/{team}/{PROJECT}/0.1/states/abandoned.bin', b'x', tags=dict([layout.UNCOMMITTED_TAG])
        )
        registries[team] = registry
    for key, body in UNRELATED.items():
        client.put_object(Bucket=bucket, Key=key, Body=body)
    client.put_object_tagging(
        Bucket=bucket, Key='data/tagged.bin', Tagging={'TagSet': [{'Key': 'forml-s3', 'Value': 'retired'}]}
    )
    upload = client.create_multipart_upload(Bucket=bucket, Key='data/big-upload.bin')['UploadId']
    return registries, upload


def keys(s3server, bucket) -> set[str]:
    return {o['Key'] for o in s3server.client().list_objects_v2(Bucket=bucket).get('Contents', [])}


def carry_out(s3server, bucket, at: datetime.datetime) -> None:
    """Do what the bucket's lifecycle rules would have done by ``at``: the preview of every rule over the whole
    bucket (a root store sees every key), then each due expiry deleted and each due upload aborted."""
    root = inspect.store_for(f's3://{bucket}', s3server.storage_options())
    client = s3server.client()
    for effect in lifecycle.preview(root, root.lifecycle_rules(), at):
        for target in effect.due:
            if effect.action.startswith('expire after'):
                client.delete_object(Bucket=bucket, Key=target.key)
            elif effect.action.startswith('abort'):
                client.abort_multipart_upload(Bucket=bucket, Key=target.key, UploadId=target.version)


def test_two_registries_and_unrelated_data_keep_what_they_should(s3server, bucket, shared):
    registries, upload = shared
    options = s3_options(s3server)
    for team, days in (('team-a', '1'), ('team-b', '60')):
        args = ['--expire-retired-after', days, '--expire-staging-after', days, '--abort-multipart-after', '1']
        applied = run_cli('lifecycle', 'apply', f's3://{bucket}/{team}', *args, '--transition-releases-after', '90',
                          '--noncurrent-versions-after', '1', *options)  # fmt: skip
        assert applied.exit_code == 0, applied.output
    rules = s3server.client().get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']
    assert len(rules) == 10 and all(
        r['Filter'].get('Prefix', r['Filter'].get('And', {}).get('Prefix')) in ('team-a/', 'team-b/') for r in rules
    )

    previewed = run_cli('lifecycle', 'preview', f's3://{bucket}/team-a', '--at', LATER.isoformat(), '--json', *options)
    assert previewed.exit_code == 0, previewed.output
    matched = {k for r in json.loads(previewed.stdout)['rules'] for k in (t['key'] for t in r['matched'])}
    assert matched and all(k.startswith('team-a/') for k in matched), matched
    due = {r['id']: {t['key'] for t in r['due']} for r in json.loads(previewed.stdout)['rules']}
    assert not any(due[i] for i in due if i.startswith('forml-s3:team-b/'))  # team-b's rules: nothing of team-a
    retired, uncommitted = due['forml-s3:team-a/:retired'], due['forml-s3:team-a/:uncommitted']
    assert len(retired) == 4 and all('/retired/' in k or '/states/' in k for k in retired), retired
    assert uncommitted == {f'team-a/{PROJECT}/0.1/states/abandoned.bin'}

    before = keys(s3server, bucket)
    carry_out(s3server, bucket, LATER)
    gone = before - keys(s3server, bucket)
    assert gone == retired | uncommitted  # team-a's retired and abandoned objects, nothing else
    assert set(UNRELATED) <= keys(s3server, bucket)
    uploads = s3server.client().list_multipart_uploads(Bucket=bucket).get('Uploads', [])
    assert [u['UploadId'] for u in uploads] == [upload]  # not under either registry: never aborted
    for team, registry in registries.items():
        fresh = Registry(registry.url, storage_options=s3server.storage_options(), cache_dir=registry._cache.root / 'x')
        sid = fresh.open(PROJECT, '0.1', 3).states[0]
        assert fresh.read(PROJECT, '0.1', 3, sid) == f'{team}-3'.encode()
    b_retired = [k for k in before if k.startswith('team-b/') and '/retired/' in k]
    assert len(b_retired) == 2 and set(b_retired) <= keys(s3server, bucket)  # team-b's own timer: 60 days


def test_a_registry_at_the_bucket_root_needs_the_whole_bucket_flag(s3server, bucket, shared):
    options = s3_options(s3server)
    for command in ('plan', 'apply'):
        refused = run_cli('lifecycle', command, f's3://{bucket}', *options)
        assert (
            refused.exit_code == 2
            and 'is the root of its bucket' in refused.output
            and '--whole-bucket' in refused.output
        )
    with pytest.raises(Exception, match='NoSuchLifecycleConfiguration'):
        s3server.client().get_bucket_lifecycle_configuration(Bucket=bucket)

    applied = run_cli('lifecycle', 'apply', f's3://{bucket}', '--whole-bucket', *options)
    assert applied.exit_code == 0, applied.output
    said = applied.stderr
    assert 'forml-s3::retired would expire after 30 days for 9 objects' in said, said  # team-a/b's and the user's
    assert 'data/tagged.bin' in said and f'team-b/{PROJECT}/0.1/retired/1.json' in said
    assert 'forml-s3::multipart would abort incomplete multipart uploads after 7 days' in said
    assert 'data/big-upload.bin' in said

    nested = run_cli('lifecycle', 'apply', f's3://{bucket}/team-a', *options)  # inside the root registry's rules
    assert nested.exit_code == 2 and 's3://' + bucket + ' (the bucket root)' in nested.output
    assert run_cli('lifecycle', 'remove', f's3://{bucket}', *options).exit_code == 0
    assert run_cli('lifecycle', 'apply', f's3://{bucket}/team-a', *options).exit_code == 0


def test_the_lock_waits_for_a_live_holder_and_takes_over_an_expired_one(s3server, bucket):
    import forml

    st = inspect.store_for(f's3://{bucket}/team-a', s3server.storage_options())
    client = s3server.client()
    with lifecycle.locked(st, ttl=30):
        assert lifecycle.LOCK in keys(s3server, bucket)
        with (
            pytest.raises(forml.FailedError, match='being changed by .*try again later'),
            lifecycle.locked(st, wait=0.3),
        ):
            pass
    assert lifecycle.LOCK not in keys(s3server, bucket)  # released
    crashed = {'token': 'gone', 'holder': 'crashed-host:1', 'expires': 0}
    client.put_object(Bucket=bucket, Key=lifecycle.LOCK, Body=json.dumps(crashed).encode())
    applied = run_cli('lifecycle', 'apply', f's3://{bucket}/team-a', *s3_options(s3server))
    assert applied.exit_code == 0, applied.output
    assert lifecycle.LOCK not in keys(s3server, bucket)
    assert len(client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']) == 3


def test_a_live_holder_renews_its_lock_and_a_stalled_one_writes_nothing_once_taken_over(s3server, bucket, monkeypatch):
    import time

    import forml

    st = inspect.store_for(f's3://{bucket}/team-a', s3server.storage_options())
    with lifecycle.locked(st, ttl=1.0) as lost:
        time.sleep(2.5)  # more than twice the ttl: only the renewals keep it
        with pytest.raises(forml.FailedError, match='being changed by'), lifecycle.locked(st, ttl=1.0, wait=0.5):
            pass
        assert not lost.is_set()
    assert lifecycle.LOCK not in keys(s3server, bucket)

    # a holder whose lock another process took over (it stalled past the expiry) notices and writes nothing
    client = s3server.client()
    original = lifecycle.locked

    def taken_over(st, ttl=lifecycle.LOCK_TTL, wait=lifecycle.LOCK_WAIT):
        return original(st, ttl=0.4, wait=wait)

    def change(rules):
        other = {'token': 'other', 'holder': 'other-host:2', 'expires': time.time() + 60}
        client.put_object(Bucket=bucket, Key=lifecycle.LOCK, Body=json.dumps(other).encode())
        time.sleep(0.6)  # a renewal turn: it finds the other holder's lock
        return [*rules, {'ID': 'mine', 'Status': 'Enabled', 'Filter': {'Prefix': 'x/'}, 'Expiration': {'Days': 1}}]

    monkeypatch.setattr(lifecycle, 'locked', taken_over)
    with pytest.raises(lifecycle.Lost, match='taken over .* nothing was written'):
        lifecycle.update(st, change)
    assert st.lifecycle_rules() == []
    assert json.loads(client.get_object(Bucket=bucket, Key=lifecycle.LOCK)['Body'].read())['token'] == 'other'
