"""Retention: ``forml-s3 lifecycle`` (plan, apply, show, preview, remove), ``retire``, ``pin`` and the registry's
``keep_generations`` setting, against moto's HTTP server (and the memory/file backends where S3 is not needed)."""

import datetime
import json
import uuid

import forml
import pytest
from forml.io import asset

from forml_s3.model import layout
from forml_s3.ops import lifecycle
from forml_s3.ops import snapshot as inspect
from forml_s3.registry import Conflict, Registry
from forml_s3.runtime import retention

from .helpers import PROJECT, commit, run_cli, s3_options, tag

RETIRED_TAG = [{'Key': 'forml-s3', 'Value': 'retired'}]
FOREIGN_RULE = {
    'ID': 'logs-expiry',
    'Status': 'Enabled',
    'Filter': {'Prefix': 'logs/'},
    'Expiration': {'Days': 3},
}


@pytest.fixture
def url(bucket) -> str:
    return f's3://{bucket}/forml'


@pytest.fixture
def seven(s3server, url, tmp_path, package_factory):
    """A registry on S3 with 7 generations of one release: {generation: [state ids]}, one object per state (the
    tests follow single states' tags; a packed generation: test_packing.py)."""
    registry = Registry(
        url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'cache', pack_states=False
    )
    registry.push(package_factory('0.1'))
    sids = {g: commit(registry, g, payloads=(f'{g}a'.encode(), f'{g}b'.encode()))[1] for g in range(1, 8)}
    return registry, sids


def object_tags(s3server, bucket: str, key: str) -> list[dict]:
    return s3server.client().get_object_tagging(Bucket=bucket, Key=key)['TagSet']


def key_of(path: str) -> str:
    """The S3 key of a store path (``bucket/key``)."""
    return path.partition('/')[2]


def fresh(registry: Registry, s3server) -> Registry:
    """Another process's view: a new instance, nothing cached in memory."""
    return Registry(registry.url, storage_options=s3server.storage_options(), cache_dir=registry._cache.root)


# lifecycle apply / show / remove ----------------------------------------------------------------------------
def test_apply_round_trips_keeps_foreign_rules_and_is_idempotent(s3server, bucket, url):
    client = s3server.client()
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={'Rules': [FOREIGN_RULE]})

    dry = run_cli('lifecycle', 'apply', url, '--expire-retired-after', '14', '--dry-run', *s3_options(s3server))
    assert dry.exit_code == 0 and '+      "ID": "forml-s3:forml/:retired"' in dry.stdout
    assert client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules'] == [FOREIGN_RULE]  # dry: unchanged

    applied = run_cli('lifecycle', 'apply', url, '--expire-retired-after', '14', *s3_options(s3server))
    assert applied.exit_code == 0, applied.output
    rules = client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']
    assert rules[0] == FOREIGN_RULE
    ours = {r['ID']: r for r in rules[1:]}
    assert set(ours) == {'forml-s3:forml/:uncommitted', 'forml-s3:forml/:multipart', 'forml-s3:forml/:retired'}
    assert ours['forml-s3:forml/:retired']['Expiration'] == {'Days': 14}
    assert ours['forml-s3:forml/:retired']['Filter'] == {'And': {'Prefix': 'forml/', 'Tags': RETIRED_TAG}}
    assert ours['forml-s3:forml/:multipart']['AbortIncompleteMultipartUpload'] == {'DaysAfterInitiation': 7}

    again = run_cli('lifecycle', 'apply', url, '--expire-retired-after', '14', *s3_options(s3server))
    assert again.exit_code == 0 and 'nothing to change' in again.stdout
    assert client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules'] == rules

    changed = run_cli('lifecycle', 'apply', url, '--expire-retired-after', '0', *s3_options(s3server))
    assert changed.exit_code == 0 and '-      "ID": "forml-s3:forml/:retired"' in changed.stdout
    ids = [r['ID'] for r in client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']]
    assert ids == ['logs-expiry', 'forml-s3:forml/:uncommitted', 'forml-s3:forml/:multipart']


def test_registries_sharing_a_bucket_own_their_rules_apart(s3server, bucket):
    options = s3_options(s3server)
    assert run_cli('lifecycle', 'apply', f's3://{bucket}/team-a', *options).exit_code == 0
    assert run_cli('lifecycle', 'apply', f's3://{bucket}/team-b', *options).exit_code == 0
    nested = run_cli('lifecycle', 'apply', f's3://{bucket}/team-a/sub', *options)  # would cross team-a's rules
    assert nested.exit_code == 2 and 'are nested' in nested.output
    removed = run_cli('lifecycle', 'remove', f's3://{bucket}/team-a', *options)
    assert removed.exit_code == 0
    rules = s3server.client().get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']
    assert {r['ID'].rsplit(':', 1)[0] for r in rules} == {'forml-s3:team-b/'}

    shown = run_cli('lifecycle', 'show', f's3://{bucket}/team-a', *options)
    assert shown.exit_code == 0 and '[forml-s3, other registry] forml-s3:team-b/:retired' in shown.stdout
    assert 'tag forml-s3=retired' in shown.stdout and "prefix 'team-b/'" in shown.stdout

    assert run_cli('lifecycle', 'remove', f's3://{bucket}/team-b', *options).exit_code == 0
    empty = run_cli('lifecycle', 'show', f's3://{bucket}/team-a', *options)
    assert 'no lifecycle rules' in empty.stdout  # the last rule gone: the configuration is deleted


def test_registry_at_the_bucket_root_filters_by_tag_alone(s3server, bucket):
    store = inspect.store_for(f's3://{bucket}', s3server.storage_options())
    rules = {r['ID']: r for r in lifecycle.plan(store, lifecycle.Policy())}
    assert rules['forml-s3::retired']['Filter'] == {'Tag': RETIRED_TAG[0]}
    assert rules['forml-s3::multipart']['Filter'] == {'Prefix': ''}
    store.set_lifecycle_rules(list(rules.values()))  # S3 (moto) accepts them as they are
    assert store.lifecycle_rules() == list(rules.values())


# invalid input ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    'args, message',
    [
        (['--expire-retired-after', '-1'], 'Invalid expire-retired-after: -1'),
        (['--abort-multipart-after', '-5'], 'Invalid abort-multipart-after: -5'),
        (['--transition-releases-after', '60', '--storage-class', 'FAST'], "Unknown storage class 'FAST'"),
        (['--transition-releases-after', '60', '--storage-class', 'GLACIER'], 'GLACIER is an archive'),
        (['--transition-releases-after', '10'], 'no earlier than 30 days'),
        (['--noncurrent-versions-after', 'soon'], "'soon' is not a valid integer"),
    ],
)
def test_rules_reject_invalid_input(s3server, bucket, url, args, message):
    result = run_cli('lifecycle', 'plan', url, *args)
    assert result.exit_code == 2 and message in result.output
    applied = run_cli('lifecycle', 'apply', url, *args, *s3_options(s3server))
    assert applied.exit_code == 2 and message in applied.output
    with pytest.raises(Exception, match='NoSuchLifecycleConfiguration'):  # nothing reached the bucket
        s3server.client().get_bucket_lifecycle_configuration(Bucket=bucket)


def test_policy_validates_in_the_library_too():
    with pytest.raises(forml.InvalidError, match='at least 1'):
        lifecycle.Policy(expire_staging_after=0)
    with pytest.raises(forml.InvalidError, match='whole number'):
        lifecycle.Policy(expire_retired_after=1.5)
    assert lifecycle.Policy(transition_releases_after=1, storage_class='GLACIER_IR').storage_class == 'GLACIER_IR'


def test_lifecycle_off_s3_is_a_clear_error(tmp_path):
    result = run_cli('lifecycle', 'apply', f'file://{tmp_path}/registry')
    assert result.exit_code == 2 and 'has no bucket lifecycle rules forml-s3 can manage (file store' in result.output


def test_missing_bucket_is_a_clear_error(s3server):
    result = run_cli('lifecycle', 'show', f's3://no-such-bucket-{uuid.uuid4().hex[:8]}/forml', *s3_options(s3server))
    assert result.exit_code == 2 and 'does not exist' in result.output


# retire and pin ---------------------------------------------------------------------------------------------
def test_retire_keep_3_of_7_hides_tags_and_previews(s3server, bucket, url, seven):
    registry, sids = seven
    retired = run_cli('retire', url, '--keep', '3', *s3_options(s3server))
    assert retired.exit_code == 0, retired.output
    assert f'{PROJECT}-0.1: retired 1, 2, 3, 4 (kept 5, 6, 7)' in retired.stdout

    assert sorted(fresh(registry, s3server).generations(PROJECT, '0.1')) == [5, 6, 7]
    lay = registry._layout
    retired_keys = []
    for generation in range(1, 5):
        keys = [key_of(lay.state(PROJECT, '0.1', sid)) for sid in sids[generation]]
        keys.append(key_of(lay.retired_marker(PROJECT, '0.1', generation)))
        for key in keys:
            assert object_tags(s3server, bucket, key) == RETIRED_TAG, key
        retired_keys += keys
    for generation in range(5, 8):  # kept generations: untouched and readable
        for sid in sids[generation]:
            assert object_tags(s3server, bucket, key_of(lay.state(PROJECT, '0.1', sid))) == []
        reader = fresh(registry, s3server)
        reader.open(PROJECT, '0.1', generation)
        assert [reader.read(PROJECT, '0.1', generation, s) for s in sids[generation]] == [
            f'{generation}a'.encode(),
            f'{generation}b'.encode(),
        ]

    later = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=32)).date().isoformat()
    preview = run_cli('lifecycle', 'preview', url, '--planned', '--json', '--at', later, *s3_options(s3server))
    assert preview.exit_code == 0, preview.output
    rules = {r['id']: r for r in json.loads(preview.stdout)['rules']}
    rule = rules['forml-s3:forml/:retired']
    assert sorted(t['key'] for t in rule['matched']) == sorted(retired_keys)
    assert sorted(t['key'] for t in rule['due']) == sorted(retired_keys)  # 30 days + midnight rounding < 32 days
    assert rules['forml-s3:forml/:uncommitted']['matched'] == []  # everything else is committed

    today = run_cli('lifecycle', 'preview', url, '--planned', '--json', *s3_options(s3server))
    rule = {r['id']: r for r in json.loads(today.stdout)['rules']}['forml-s3:forml/:retired']
    assert len(rule['matched']) == len(retired_keys) and rule['due'] == []  # nothing expires today

    listed = run_cli('ls', '--json', url, *s3_options(s3server))
    generations = json.loads(listed.stdout)['projects'][0]['releases'][0]['generations']
    assert [(g['generation'], g['retired']) for g in generations] == [(5, False), (6, False), (7, False)] + [
        (g, True) for g in range(1, 5)
    ]
    verified = run_cli('verify', url, *s3_options(s3server))
    assert verified.exit_code == 0, verified.output  # tombstones and retired markers are not problems


def test_pinned_generations_are_never_retired(s3server, bucket, url, seven):
    registry, sids = seven
    pinned = run_cli('pin', url, PROJECT, '0.1', '2', '--note', 'audited', *s3_options(s3server))
    assert pinned.exit_code == 0 and 'Pinned generation 2' in pinned.stdout
    listed = run_cli('pin', url, PROJECT, '0.1', *s3_options(s3server))
    assert listed.stdout.strip() == f'{PROJECT}-0.1 pinned: 2'

    dry = run_cli('retire', url, '--keep', '3', '--dry-run', *s3_options(s3server))
    assert 'would retire 1, 3, 4 (kept 2, 5, 6, 7; pinned 2)' in dry.stdout
    assert sorted(fresh(registry, s3server).generations(PROJECT, '0.1')) == list(range(1, 8))  # dry run

    assert run_cli('retire', url, '--keep', '3', *s3_options(s3server)).exit_code == 0
    assert sorted(fresh(registry, s3server).generations(PROJECT, '0.1')) == [2, 5, 6, 7]
    for sid in sids[2]:
        assert object_tags(s3server, bucket, key_of(registry._layout.state(PROJECT, '0.1', sid))) == []
    reader = fresh(registry, s3server)
    reader.open(PROJECT, '0.1', 2)
    assert reader.read(PROJECT, '0.1', 2, sids[2][0]) == b'2a'
    tree = json.loads(run_cli('ls', '--json', url, *s3_options(s3server)).stdout)
    assert [g['generation'] for g in tree['projects'][0]['releases'][0]['generations'] if g['pinned']] == [2]

    unpinned = run_cli('pin', url, PROJECT, '0.1', '2', '--remove', *s3_options(s3server))
    assert unpinned.exit_code == 0
    assert run_cli('retire', url, '--keep', '3', *s3_options(s3server)).stdout.startswith(f'{PROJECT}-0.1: retired 2')


def test_pinning_what_is_not_live_is_refused(s3server, url, seven):
    assert run_cli('retire', url, '--keep', '6', *s3_options(s3server)).exit_code == 0
    retired = run_cli('pin', url, PROJECT, '0.1', '1', *s3_options(s3server))
    assert retired.exit_code == 2 and 'Generation 1 of demo-proj-0.1 is retired' in retired.output
    missing = run_cli('pin', url, PROJECT, '0.1', '99', *s3_options(s3server))
    assert missing.exit_code == 2 and 'does not exist' in missing.output
    invalid = run_cli('pin', url, 'no/such', '0.1', '1', *s3_options(s3server))
    assert invalid.exit_code == 2 and "Invalid project name 'no/such'" in invalid.output
    assert run_cli('retire', url, '--keep', '0', *s3_options(s3server)).exit_code == 2


def test_a_stale_writer_cannot_resurrect_a_retired_number(s3server, url, seven):
    registry, _ = seven
    assert run_cli('retire', url, '--keep', '3', *s3_options(s3server)).exit_code == 0
    stale = fresh(registry, s3server)
    sid = uuid.uuid4()
    stale.write(PROJECT, '0.1', sid, b'late')
    with pytest.raises(Conflict, match='Generation 4 of demo-proj-0.1 was committed and retired meanwhile'):
        stale.close(PROJECT, '0.1', 4, tag([sid]))
    assert sorted(fresh(registry, s3server).generations(PROJECT, '0.1')) == [5, 6, 7]
    with pytest.raises(asset.Level.Listing.Empty):
        fresh(registry, s3server).open(PROJECT, '0.1', 4)
    retired = json.loads(registry._store.read(registry._layout.retired_marker(PROJECT, '0.1', 4)))
    assert sid.hex not in json.dumps(retired) and str(sid) not in retired['states']  # the retired one is untouched


def test_old_tombstones_still_hide_and_the_next_retire_moves_them_out(make_registry, package_factory):
    """A registry retired by an earlier version holds empty markers in the level: they are skipped as before, and
    the next retire raises the floor above them and deletes them, so no stale writer can take their numbers."""
    registry = make_registry()
    registry.push(package_factory('0.1'))
    for generation in range(1, 6):
        commit(registry, generation, payloads=(bytes([generation]),))
    store, lay = registry._store, registry._layout
    for generation in (1, 2):  # what retire wrote before the floor existed
        marker = store.read(lay.generation_marker(PROJECT, '0.1', generation))
        store.write(lay.retired_marker(PROJECT, '0.1', generation), marker)
        store.write(lay.generation_marker(PROJECT, '0.1', generation), layout.TOMBSTONE)
    reader = make_registry()
    assert sorted(reader.generations(PROJECT, '0.1')) == [3, 4, 5]
    with pytest.raises(asset.Level.Listing.Empty):
        reader.open(PROJECT, '0.1', 1)
    todo = retention.plan(store, lay, PROJECT, '0.1', 3)
    assert (todo.retired, todo.tombstones) == ([], [1, 2])

    assert retention.retire(store, lay, PROJECT, '0.1', 3) == []
    assert not store.exists(lay.generation_marker(PROJECT, '0.1', 1))
    assert retention.floor(store, lay, PROJECT, '0.1') == 3
    assert sorted(make_registry().generations(PROJECT, '0.1')) == [3, 4, 5]
    stale = make_registry()
    with pytest.raises(Conflict, match='Generation 2 of demo-proj-0.1 was committed and retired meanwhile'):
        commit(stale, 2, payloads=(b'late',))
    assert not store.exists(lay.generation_marker(PROJECT, '0.1', 2))
    assert retention.retire(store, lay, PROJECT, '0.1', 1) == [3, 4]
    assert retention.floor(store, lay, PROJECT, '0.1') == 5
    assert [e.name for e in store.listdir(lay.floors(PROJECT, '0.1'))] == ['5.json']  # lower floors cleared
    commit(registry, 6, payloads=(b'six',))  # above the floor: commits as ever
    assert sorted(make_registry().generations(PROJECT, '0.1')) == [5, 6]


def test_a_retire_that_died_before_tagging_leaks_but_never_expires_live_states(s3server, bucket, url, seven):
    """Order of a retirement: retired marker, tombstone, then tags: a death in between leaves untagged (kept)
    objects of a hidden generation, never tagged objects of a live one."""
    registry, sids = seven
    store, lay = registry._store, registry._layout
    original = store.set_tags

    def die(*_):
        raise RuntimeError('killed')

    store.set_tags = die
    with pytest.raises(RuntimeError, match='killed'):
        retention.retire(store, lay, PROJECT, '0.1', 6)
    store.set_tags = original
    assert sorted(fresh(registry, s3server).generations(PROJECT, '0.1')) == list(range(2, 8))
    assert object_tags(s3server, bucket, key_of(lay.state(PROJECT, '0.1', sids[1][0]))) == []
    for generation in range(2, 8):
        for sid in sids[generation]:
            assert object_tags(s3server, bucket, key_of(lay.state(PROJECT, '0.1', sid))) == []


def test_keep_generations_setting_retires_after_each_commit(make_registry, package_factory):
    registry = make_registry(keep_generations=2)
    registry.push(package_factory('0.1'))
    kept = {}
    for generation in range(1, 5):
        kept[generation] = commit(registry, generation, payloads=(bytes([generation]) * 10,))[1]
    assert sorted(registry.generations(PROJECT, '0.1')) == [3, 4]
    other = make_registry()
    assert sorted(other.generations(PROJECT, '0.1')) == [3, 4]
    other.open(PROJECT, '0.1', 3)
    assert other.read(PROJECT, '0.1', 3, kept[3][0]) == bytes([3]) * 10
    snap = inspect.snapshot(other._store)
    assert [(g.number, g.retired) for g in snap.projects[0].releases[0].generations] == [
        (3, False),
        (4, False),
        (1, True),
        (2, True),
    ]
    moved = other._layout.generation_marker(PROJECT, '0.1', 1)
    assert moved not in snap.objects  # the level holds live generations only
    assert retention.floor(other._store, other._layout, PROJECT, '0.1') == 3
    with pytest.raises(forml.InvalidError, match='at least 1'):
        make_registry(keep_generations=0)


def test_retire_reuses_the_registrys_marker_cache(s3server, counted, url, seven):
    """keep_generations reads the kept and retired markers it needs once: the registry already cached them."""
    registry, _ = seven
    for generation in range(1, 8):
        registry.open(PROJECT, '0.1', generation)
    counted.reset_counts()
    retention.retire(registry._store, registry._layout, PROJECT, '0.1', 3, read=registry._marker)
    marker_gets = [r for r in counted.requests if r.method == 'GET' and r.path.endswith(layout.MARKER)]
    assert marker_gets == []
    lists = counted.count(method='GET', query_contains='list-type=2')
    assert lists == 6  # the generations, the pins, the aliases, the floors; the pins and the aliases again


def test_preview_reads_the_tags_only_of_objects_that_can_carry_them(s3server, counted, url, seven):
    """States, packs, packages and retired markers carry tags; project, release and generation markers, pins and
    floors never do: their tags are not read."""
    assert run_cli('retire', url, '--keep', '5', *s3_options(s3server)).exit_code == 0
    assert run_cli('pin', url, PROJECT, '0.1', '6', *s3_options(s3server)).exit_code == 0
    counted.reset_counts()
    preview = run_cli('lifecycle', 'preview', url, '--planned', '--json', *s3_options(s3server))
    assert preview.exit_code == 0, preview.output
    tag_reads = [r.path.rsplit('/', 2)[-2] for r in counted.requests if r.method == 'GET' and 'tagging' in r.query]
    assert sorted(set(tag_reads)) == ['0.1', 'retired', 'states']  # the package, retired markers, states
    assert len(tag_reads) == 1 + 2 + 7 * 2


def test_preview_shows_abandoned_uploads_and_incomplete_multipart_uploads(s3server, bucket, url, seven):
    registry, _ = seven
    client = s3server.client()
    abandoned = registry._layout.state(PROJECT, '0.1', uuid.uuid4())
    registry._store.write(abandoned, b'never committed', tags=dict([layout.UNCOMMITTED_TAG]))
    upload = client.create_multipart_upload(Bucket=bucket, Key='forml/demo-proj/0.1/states/big.bin')
    client.create_multipart_upload(Bucket=bucket, Key='elsewhere/big.bin')  # outside the registry

    later = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=9)).isoformat()
    preview = run_cli('lifecycle', 'preview', url, '--planned', '--json', '--at', later, *s3_options(s3server))
    rules = {r['id']: r for r in json.loads(preview.stdout)['rules']}
    assert [t['key'] for t in rules['forml-s3:forml/:uncommitted']['due']] == [key_of(abandoned)]
    multipart = rules['forml-s3:forml/:multipart']
    assert [(t['key'], t['version']) for t in multipart['due']] == [
        ('forml/demo-proj/0.1/states/big.bin', upload['UploadId'])
    ]
    text = run_cli('lifecycle', 'preview', url, '--planned', *s3_options(s3server))
    assert 'forml-s3:forml/:uncommitted [forml-s3]: expire after 7 days' in text.stdout
    modified = client.head_object(Bucket=bucket, Key=key_of(abandoned))['LastModified']
    due = (modified + datetime.timedelta(days=7)).date() + datetime.timedelta(days=1)  # S3: next midnight UTC
    assert f'{due:%Y-%m-%d} (in ' in text.stdout and f' days)  {key_of(abandoned)}' in text.stdout


def test_preview_of_noncurrent_versions_in_a_versioned_bucket(s3server, bucket, url, seven):
    """Retiring overwrites a marker with its tombstone: a versioned bucket keeps the old marker as noncurrent."""
    s3server.client().put_bucket_versioning(Bucket=bucket, VersioningConfiguration={'Status': 'Enabled'})
    assert run_cli('retire', url, '--keep', '6', *s3_options(s3server)).exit_code == 0
    later = (datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=3)).isoformat()
    args = ['--planned', '--noncurrent-versions-after', '1', '--json', '--at', later]
    preview = run_cli('lifecycle', 'preview', url, *args, *s3_options(s3server))
    rules = {r['id']: r for r in json.loads(preview.stdout)['rules']}
    assert [t['key'] for t in rules['forml-s3:forml/:noncurrent']['due']] == ['forml/demo-proj/0.1/generations/1.json']


def test_retire_off_s3_only_hides(tmp_path, package_factory):
    registry = Registry(f'file://{tmp_path}/registry', cache_dir=tmp_path / 'cache')
    registry.push(package_factory('0.1'))
    for generation in (1, 2, 3):
        commit(registry, generation)
    result = run_cli('retire', f'file://{tmp_path}/registry', '--keep', '1')
    assert result.exit_code == 0 and 'retired 1, 2 (kept 3)' in result.stdout
    assert sorted(Registry(f'file://{tmp_path}/registry', cache_dir=tmp_path / 'c2').generations(PROJECT, '0.1')) == [3]
    assert (tmp_path / 'registry' / PROJECT / '0.1' / 'retired' / '1.json').exists()
