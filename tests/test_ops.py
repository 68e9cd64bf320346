"""The operator commands ``forml-s3 ls``, ``verify``, ``copy`` and ``gc`` against moto's HTTP server.

Registries are built through the real APIs: ForML's own posix ``Registry`` for the posix side, ours for S3.
"""

import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import numpy
import pytest
import toml
from forml.io import asset
from forml.provider.registry.filesystem import posix

from forml_s3.model import layout
from forml_s3.ops import copy as migrate
from forml_s3.ops import gc as garbage
from forml_s3.ops import snapshot as inspect
from forml_s3.registry import Registry

from . import helpers
from .helpers import run_cli as run
from .helpers import s3_options

OTHER = 'other-proj'
GENERATIONS = {  # (project, release) -> generation numbers; 2 projects, 3 releases, 5 generations (one gap)
    (helpers.PROJECT, '0.1'): [1, 2],
    (helpers.PROJECT, '0.2'): [1, 3],
    (OTHER, '1.0'): [1],
}


def realistic_tag(states, number: int) -> asset.Tag:
    """Tags as ForML writes them, varied per generation: naive training time, ordinals, tuning scores."""
    return asset.Tag(
        training=asset.Tag.Training(
            timestamp=datetime.datetime(2026, 3, number, 10, 20, 30, 123456),
            ordinal=number * 10 if number > 1 else None,
        ),
        tuning=asset.Tag.Tuning(
            timestamp=datetime.datetime(2026, 3, number, 12, tzinfo=datetime.UTC) if number != 2 else None,
            score=0.5 + number / 10 if number != 2 else None,
        ),
        states=list(states),
    )


def populate(registry: asset.Registry, package_factory) -> None:
    """Push the releases and close the generations of :data:`GENERATIONS` through the ``asset.Registry`` API."""
    for (project, release), numbers in GENERATIONS.items():
        registry.push(package_factory(release, project=project, payload=f'{project} {release}'))
        for number in numbers:
            sids = [uuid.uuid4() for _ in range(2)]
            for i, sid in enumerate(sids):
                registry.write(project, release, sid, os.urandom(1000 * number + i) + f'{project}{release}'.encode())
            registry.close(project, release, number, realistic_tag(sids, number))


def describe(registry: asset.Registry) -> dict:
    """Everything a registry holds, through the ``asset.Registry`` API: tags, state bytes and package bytes."""
    found = {}
    for project in registry.projects():
        for release in registry.releases(project):
            package = pathlib.Path(registry.pull(project, release).path).read_bytes()
            generations = {}
            for generation in registry.generations(project, release):
                tag = registry.open(project, release, generation)
                states = {str(sid): registry.read(project, release, generation, sid) for sid in tag.states}
                generations[int(generation)] = (tag, states)
            found[(str(project), str(release))] = (package, generations)
    return found


@pytest.fixture
def posix_registry(tmp_path, package_factory) -> pathlib.Path:
    root = tmp_path / 'posix-registry'
    populate(posix.Registry(root), package_factory)
    return root


@pytest.fixture
def s3_url(s3server, bucket) -> str:
    return f's3://{bucket}/forml'


def s3_registry(server, url: str, tmp_path: pathlib.Path) -> Registry:
    return Registry(  # one object per state: the tests below damage single states (packs: test_packing.py)
        url,
        storage_options=server.storage_options(),
        cache_dir=tmp_path / f'cache-{uuid.uuid4().hex[:6]}',
        pack_states=False,
    )


# copy ------------------------------------------------------------------------------------------------------
def test_copy_posix_into_s3_and_back_is_identical(s3server, s3_url, posix_registry, tmp_path):
    original = describe(posix.Registry(posix_registry))
    assert sum(len(g) for _, g in original.values()) == 5 and len({p for p, _ in original}) == 2

    into = run('copy', str(posix_registry), s3_url, *s3_options(s3server, '--dst-option'))
    assert into.exit_code == 0, into.output
    assert '8 copied, 0 skipped' in into.stdout  # 3 releases + 5 generations
    copied = describe(s3_registry(s3server, s3_url, tmp_path))
    assert copied == original  # same projects, releases, generation numbers (3 stays 3), tags, state bytes

    back_dir = tmp_path / 'back'
    back = run('copy', s3_url, str(back_dir), *s3_options(s3server, '--src-option'))
    assert back.exit_code == 0, back.output
    assert '8 copied' in back.stdout
    assert describe(posix.Registry(back_dir)) == original
    # the posix copy is in ForML's own layout, state files byte-identical to the original's
    for path in posix_registry.rglob('*.bin'):
        relative = path.relative_to(posix_registry)
        if '.stage' not in relative.parts:
            assert (back_dir / relative).read_bytes() == path.read_bytes()
    assert sorted(p.relative_to(back_dir) for p in back_dir.rglob('tag.toml')) == sorted(
        p.relative_to(posix_registry) for p in posix_registry.rglob('tag.toml')
    )

    again = run('copy', s3_url, str(back_dir), *s3_options(s3server, '--src-option'))
    assert again.exit_code == 0 and '0 copied, 8 skipped' in again.stdout and '0 bytes' in again.stdout


def test_second_copy_transfers_nothing(counted, s3_url, posix_registry):
    bucket = s3_url.split('/')[2]
    first = run('copy', str(posix_registry), s3_url, *s3_options(counted, '--dst-option'))
    assert first.exit_code == 0, first.output
    assert counted.count(method='PUT', path_prefix=f'/{bucket}/') > 0
    counted.reset_counts()

    second = run('copy', str(posix_registry), s3_url, *s3_options(counted, '--dst-option'))
    assert second.exit_code == 0, second.output
    assert '0 copied, 8 skipped (already there), 0 failed; 0 bytes transferred' in second.stdout
    writes = [r for r in counted.requests if r.method in ('PUT', 'POST', 'DELETE')]
    assert writes == []
    fetched = [r.path for r in counted.requests if r.method == 'GET' and r.path.endswith(('.bin', '.4ml'))]
    assert fetched == []  # compared by markers: no package or state downloaded either

    counted.reset_counts()  # and the way back: a second s3 -> posix copy reads markers only
    back = pathlib.Path(str(posix_registry) + '-back')
    run('copy', s3_url, str(back), *s3_options(counted, '--src-option'))
    counted.reset_counts()
    assert '8 skipped' in run('copy', s3_url, str(back), *s3_options(counted, '--src-option')).stdout
    assert [r.path for r in counted.requests if r.path.endswith(('.bin', '.4ml'))] == []


def test_copy_between_buckets_and_resume_after_partial_copy(s3server, tmp_path, package_factory):
    source_url = f's3://{s3server.create_bucket(f"src-{uuid.uuid4().hex[:8]}")}/forml'
    target_url = f's3://{s3server.create_bucket(f"dst-{uuid.uuid4().hex[:8]}")}/registry'
    populate(s3_registry(s3server, source_url, tmp_path), package_factory)
    # an earlier copy that died after release 0.1 and its generation 1
    partial = s3_registry(s3server, target_url, tmp_path)
    source = s3_registry(s3server, source_url, tmp_path)
    partial.push(source.pull(helpers.PROJECT, '0.1'))
    tag = source.open(helpers.PROJECT, '0.1', 1)
    for sid in tag.states:
        partial.write(helpers.PROJECT, '0.1', sid, source.read(helpers.PROJECT, '0.1', 1, sid))
    partial.close(helpers.PROJECT, '0.1', 1, tag)

    done = run(
        'copy', source_url, target_url, *s3_options(s3server, '--src-option'), *s3_options(s3server, '--dst-option')
    )
    assert done.exit_code == 0, done.output
    assert '6 copied, 2 skipped' in done.stdout
    assert describe(s3_registry(s3server, target_url, tmp_path)) == describe(source)
    _, problems = inspect.verify(inspect.store_for(target_url, s3server.storage_options()))
    assert problems == []


def test_copy_reports_a_conflicting_release_and_leaves_it_alone(
    s3server, s3_url, posix_registry, tmp_path, package_factory
):
    target = s3_registry(s3server, s3_url, tmp_path)
    target.push(package_factory('1.0', project=OTHER, payload='something else'))
    before = describe(target)

    done = run('copy', str(posix_registry), s3_url, *s3_options(s3server, '--dst-option'))
    assert done.exit_code == 1
    assert f'Release {OTHER}-1.0 exists at forml-s3:{s3_url} with another package' in done.stderr
    assert 'left alone' in done.stderr
    after = describe(s3_registry(s3server, s3_url, tmp_path))
    assert after[(OTHER, '1.0')] == before[(OTHER, '1.0')]  # untouched, no generation added
    assert {k for k in after if k[0] == helpers.PROJECT} == {(helpers.PROJECT, '0.1'), (helpers.PROJECT, '0.2')}


def test_copy_dry_run_copies_nothing(s3server, s3_url, posix_registry, tmp_path):
    done = run('copy', '--dry-run', f'posix:{posix_registry}', s3_url, *s3_options(s3server, '--dst-option'))
    assert done.exit_code == 0, done.output
    assert '8 to copy, 0 already there' in done.stdout
    assert list(s3_registry(s3server, s3_url, tmp_path).projects()) == []


def test_location_formats_are_detected(tmp_path, posix_registry):
    assert migrate.detect(str(posix_registry)) == migrate.POSIX
    assert migrate.detect(f'file://{posix_registry}') == migrate.POSIX
    assert migrate.detect(str(tmp_path / 'new')) == migrate.POSIX
    assert migrate.detect(f'file://{tmp_path}/new') == migrate.FORML_S3
    assert migrate.detect('s3://bucket/forml') == migrate.FORML_S3
    ours = tmp_path / 'ours'
    run('copy', str(posix_registry), f'file://{ours}')
    assert migrate.detect(str(ours)) == migrate.FORML_S3  # a plain path holding forml-s3 markers


# verify ----------------------------------------------------------------------------------------------------
@pytest.fixture
def committed(s3server, s3_url, tmp_path, package_factory):
    """An S3 registry with two releases and three generations, and a boto3 client on its bucket."""
    registry = s3_registry(s3server, s3_url, tmp_path)
    registry.push(package_factory('0.1'))
    helpers.commit(registry, 1, payloads=(b'first state', b'second state'))
    helpers.commit(registry, 2, payloads=(b'third state', b'fourth state'))
    registry.push(package_factory('0.2', data=b'x' * 5000))
    helpers.commit(registry, 1, payloads=(b'a' * 300,), release='0.2')
    return registry


def marker(registry: Registry, generation: int, release: str = '0.1') -> dict:
    return registry._generation_marker(helpers.PROJECT, release, generation)  # test inspection only


def test_verify_clean_registry_exits_zero(s3server, s3_url, committed):
    done = run('verify', s3_url, *s3_options(s3server))
    assert done.exit_code == 0, done.output
    assert done.stdout == ''
    assert '7 committed objects checked (sizes and sha256), 0 problems' in done.stderr  # 2 packages, 5 states


def test_verify_reports_each_problem_with_its_own_message(s3server, s3_url, committed):
    client = s3server.client()
    bucket = s3_url.split('/')[2]
    first, second = marker(committed, 1)['states'], marker(committed, 2)['states']
    (gone, gone_info), (changed, changed_info) = first.items()
    grown, grown_info = next(iter(second.items()))
    deleted, altered, resized = (committed._layout.state(helpers.PROJECT, '0.1', sid) for sid in (gone, changed, grown))
    client.delete_object(Bucket=bucket, Key=deleted.partition('/')[2])
    client.put_object(Bucket=bucket, Key=altered.partition('/')[2], Body=b'X' * changed_info['size'])  # same size
    client.put_object(Bucket=bucket, Key=resized.partition('/')[2], Body=b'grown' * 10)
    orphan = committed._layout.state(helpers.PROJECT, '0.2', uuid.uuid4())
    client.put_object(Bucket=bucket, Key=orphan.partition('/')[2], Body=b'abandoned')

    done = run('verify', s3_url, *s3_options(s3server))
    assert done.exit_code == 1
    lines = done.stdout.splitlines()
    assert len(lines) == 4, done.stdout
    assert (
        f'MISSING: Missing state {gone} of generation 1 of {helpers.PROJECT}-0.1: s3://{deleted} does not exist'
        in lines
    )
    assert any(
        line.startswith(f'CHECKSUM-MISMATCH: Checksum mismatch of state {changed} of generation 1')
        and f's3://{altered} has sha256' in line
        and f'its marker records {changed_info["sha256"]}' in line
        for line in lines
    )
    assert (
        f'SIZE-MISMATCH: Size mismatch of state {grown} of generation 2 of {helpers.PROJECT}-0.1: '
        f's3://{resized} has 50 bytes, its marker records {grown_info["size"]}'
    ) in lines
    assert any(
        line.startswith(f'ORPHAN: Orphan state s3://{orphan}') and 'no marker names it' in line for line in lines
    )
    assert '4 problems' in done.stderr

    quick = run('verify', '--quick', '--json', s3_url, *s3_options(s3server))
    assert quick.exit_code == 1
    kinds = sorted(p['kind'] for p in json.loads(quick.stdout))
    assert kinds == ['missing', 'orphan', 'size-mismatch']  # same size, other bytes: needs the checksum
    assert run('verify', '--quick', '--no-orphans', s3_url, *s3_options(s3server)).exit_code == 1


def test_verify_reports_staging_orphans(s3server, s3_url, committed, tmp_path):
    staging = tmp_path / 'shared-staging'
    mounted = Registry(s3_url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'c2', staging=staging)
    mounted.mount(helpers.PROJECT, '0.1')
    assert run('verify', '--staging', str(staging), s3_url, *s3_options(s3server)).exit_code == 0

    ghost = staging / 'ghost-project' / '1.0'
    ghost.mkdir(parents=True)
    (ghost / '.forml-s3.json').write_text(json.dumps({'sha256': 'f' * 64, 'installed': 0}))
    (staging / helpers.PROJECT / '.0.2.abc.incomplete').mkdir()
    done = run('verify', '--staging', str(staging), s3_url, *s3_options(s3server))
    assert done.exit_code == 1
    assert f'STAGING-ORPHAN: Staging orphan {ghost}: ghost-project-1.0 is not in s3://' in done.stdout
    assert (
        'STAGING-ORPHAN: Staging orphan' in done.stdout
        and '.0.2.abc.incomplete: left over by an interrupted' in done.stdout
    )
    assert len(done.stdout.splitlines()) == 2


def test_missing_bucket_is_a_clean_fatal_error(s3server):
    done = run('verify', 's3://no-such-bucket-ops/forml', *s3_options(s3server))
    assert done.exit_code == 2
    assert "Bucket 'no-such-bucket-ops' does not exist" in done.output
    assert 'Traceback' not in done.output


# ls --------------------------------------------------------------------------------------------------------
def test_ls_json_structure(s3server, s3_url, committed):
    done = run('ls', '--json', s3_url, *s3_options(s3server))
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)
    assert data['url'] == s3_url
    assert data['orphans'] == {'count': 0, 'size': 0}
    (project,) = data['projects']
    assert project['project'] == helpers.PROJECT and project['listed'] is True
    assert [r['release'] for r in project['releases']] == ['0.1', '0.2']
    first, second = project['releases']
    assert [g['generation'] for g in first['generations']] == [1, 2]
    assert [g['generation'] for g in second['generations']] == [1]
    one = first['generations'][0]
    assert one['states'] == 2 and one['size'] == len(b'first state') + len(b'second state')
    assert one['retired'] is False and one['error'] is None
    assert one['training'] == {'timestamp': {'$datetime': '2026-11-24T03:04:05.678901'}, 'ordinal': None}
    assert one['tuning']['score'] == 0.75
    datetime.datetime.fromisoformat(one['created'])
    head = s3server.client().head_object(
        Bucket=s3_url.split('/')[2],
        Key=committed._layout.release_object(helpers.PROJECT, '0.2', second['package']['key']).partition('/')[2],
    )
    assert second['package']['size'] == head['ContentLength'] and len(second['package']['sha256']) == 64
    assert first['committed'] and datetime.datetime.fromisoformat(first['created'])

    text = run('ls', s3_url, *s3_options(s3server))
    assert text.exit_code == 0
    assert helpers.PROJECT in text.stdout and 'generation 2' in text.stdout and '2 states' in text.stdout


def test_cli_runs_as_a_subprocess_with_the_endpoint_from_the_environment(s3server, s3_url, committed):
    forml_s3 = pathlib.Path(sys.executable).with_name('forml-s3')
    env = {**os.environ, **s3server.client_env()}  # AWS_ENDPOINT_URL: no --option needed
    listed = subprocess.run([forml_s3, 'ls', s3_url], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert listed.returncode == 0, listed.stderr
    assert s3_url in listed.stdout and helpers.PROJECT in listed.stdout and 'generation 1' in listed.stdout
    verified = subprocess.run(
        [forml_s3, 'verify', s3_url], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert '7 committed objects checked' in verified.stderr

    committed._store.delete(
        committed._layout.state(helpers.PROJECT, '0.2', next(iter(marker(committed, 1, '0.2')['states'])))
    )
    broken = subprocess.run(
        [forml_s3, 'verify', s3_url], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert broken.returncode == 1 and broken.stdout.startswith('MISSING: Missing state')


# gc --------------------------------------------------------------------------------------------------------
@pytest.fixture
def with_orphans(s3server, s3_url, committed):
    """The committed registry plus an abandoned state upload and an abandoned package (a push that lost)."""
    sid = uuid.uuid4()
    committed.write(helpers.PROJECT, '0.2', sid, b'never committed')
    abandoned_state = committed._layout.state(helpers.PROJECT, '0.2', sid)
    abandoned_package = committed._layout.package(helpers.PROJECT, '0.1', 'ab' * 32)
    committed._store.write(abandoned_package, b'a package whose marker was never created')
    deadline = time.monotonic() + 30
    while not committed._store.exists(abandoned_state):  # write() uploads in the background
        assert time.monotonic() < deadline
        time.sleep(0.05)
    return abandoned_state, abandoned_package


def test_gc_deletes_only_old_uncommitted_objects(s3server, s3_url, committed, with_orphans, tmp_path):
    store = inspect.store_for(s3_url, s3server.storage_options())
    before = describe(committed)
    all_objects = set(inspect.snapshot(store).objects)
    week = datetime.timedelta(days=7)

    assert garbage.collect(store, week).objects == []  # everything is minutes old
    assert set(inspect.snapshot(store).objects) == all_objects

    later = time.time() + 8 * 86400  # the clock of eight days later
    deleted = garbage.collect(store, week, now=later).objects
    assert sorted(o.path for o in deleted) == sorted(with_orphans)
    assert set(inspect.snapshot(store).objects) == all_objects - set(with_orphans)
    assert describe(s3_registry(s3server, s3_url, tmp_path)) == before
    _, problems = inspect.verify(store)
    assert problems == []


def test_gc_age_threshold_on_local_files(tmp_path, package_factory):
    url = f'file://{tmp_path}/registry'
    registry = Registry(url, cache_dir=tmp_path / 'cache')
    registry.push(package_factory('0.1'))
    helpers.commit(registry, 1)
    old, new = (registry._layout.state(helpers.PROJECT, '0.1', uuid.uuid4()) for _ in range(2))
    for path in (old, new):
        registry._store.write(path, b'abandoned')
    ten_days_ago = time.time() - 10 * 86400
    os.utime(old, (ten_days_ago, ten_days_ago))

    done = run('gc', url, '--older-than', '7')
    assert done.exit_code == 0, done.output
    assert f'deleted file://{old}' in done.stdout and '1 uncommitted objects older than 7 days deleted' in done.stdout
    assert not os.path.exists(old) and os.path.exists(new)
    assert registry.read(helpers.PROJECT, '0.1', 1, registry.open(helpers.PROJECT, '0.1', 1).states[0]) == b'a'


def test_gc_dry_run_deletes_nothing(s3server, s3_url, with_orphans):
    store = inspect.store_for(s3_url, s3server.storage_options())
    before = set(inspect.snapshot(store).objects)
    dry = run('gc', s3_url, '--older-than', '0', '--allow-short-grace', '--dry-run', *s3_options(s3server))
    assert dry.exit_code == 0, dry.output
    assert all(f'would delete s3://{path}' in dry.stdout for path in with_orphans)
    assert '2 uncommitted objects older than 0 days would be deleted' in dry.stdout
    assert set(inspect.snapshot(store).objects) == before

    done = run('gc', s3_url, '--older-than', '0', '--allow-short-grace', *s3_options(s3server))
    assert done.exit_code == 0 and '2 uncommitted objects older than 0 days deleted' in done.stdout
    assert set(inspect.snapshot(store).objects) == before - set(with_orphans)


def test_gc_spares_states_a_generation_commits_between_its_listings(
    s3server, s3_url, committed, with_orphans, monkeypatch
):
    store = inspect.store_for(s3_url, s3server.storage_options())
    state, _ = with_orphans
    sid = uuid.UUID(state.rsplit('/', 1)[1][: -len(layout.STATE_SUFFIX)])
    original = inspect.snapshot

    def snapshot_then_commit(st, *args):
        taken = original(st, *args)
        if not getattr(snapshot_then_commit, 'done', False):
            snapshot_then_commit.done = True
            committed.close(helpers.PROJECT, '0.2', 2, helpers.tag([sid]))  # a trainer commits meanwhile
        return taken

    monkeypatch.setattr(inspect, 'snapshot', snapshot_then_commit)
    deleted = garbage.collect(store, datetime.timedelta(0), now=time.time() + 60).objects
    assert [o.path for o in deleted] == [with_orphans[1]]
    assert committed.read(helpers.PROJECT, '0.2', 2, sid) == b'never committed'


def test_a_corrupted_marker_is_reported_and_protects_its_release_from_gc(s3server, s3_url, committed):
    store = inspect.store_for(s3_url, s3server.storage_options())
    key = committed._layout.generation_marker(helpers.PROJECT, '0.1', 2)
    states = set(marker(committed, 2)['states'])
    store.write(key, b'{not json')

    done = run('verify', s3_url, *s3_options(s3server))
    assert done.exit_code == 1
    assert f'CORRUPTED-MARKER: Corrupted marker s3://{key}: not valid JSON' in done.stdout
    assert done.stdout.count('ORPHAN:') == 2  # its states are named by nothing readable now...
    assert garbage.collect(store, datetime.timedelta(0), now=time.time() + 86400).objects == []  # ...but gc spares them
    assert {o.name for o in inspect.snapshot(store).objects.values() if o.kind is inspect.Kind.STATE} >= states


# help ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('command', ['ls', 'verify', 'copy', 'gc'])
def test_every_command_has_help(command):
    done = run(command, '--help')
    assert done.exit_code == 0 and 'Usage:' in done.output
    assert '--help' in done.output


# forml model apply from a copy (last: the slowest) ----------------------------------------------------------
def test_forml_model_apply_works_from_the_copy(s3server, bucket, tmp_path):
    from forml_s3 import demo
    from forml_s3.cli.demo import parse_predictions

    data = demo.write_data(tmp_path / 'data.csv')
    posix_root = tmp_path / 'posix-registry'
    posix_home = tmp_path / 'posix-home'
    config = demo.render_config(posix_home, registry_url='s3://unused/unused', data=data)
    settings = toml.loads(config.read_text())
    settings['REGISTRY'] = {
        'default': 'posix',
        'posix': {'provider': 'forml.provider.registry.filesystem.posix:Registry', 'path': str(posix_root)},
    }
    config.write_text(toml.dumps(settings))
    source = demo.copy_project(tmp_path / 'project')
    released = demo.run_forml(posix_home, 'project', 'release', cwd=source)
    trained = demo.run_forml(posix_home, 'model', 'train', demo.PROJECT)
    assert [int(g) for g in posix.Registry(posix_root).generations(demo.PROJECT, demo.RELEASE)] == [1], (
        released.stdout + released.stderr + trained.stdout + trained.stderr
    )
    expected = parse_predictions(demo.run_forml(posix_home, 'model', 'apply', demo.PROJECT).stdout)
    assert len(expected) == demo.BATCH_ROWS

    url = f's3://{bucket}/registry'
    copied = run('copy', str(posix_root), url, *s3_options(s3server, '--dst-option'))
    assert copied.exit_code == 0 and '2 copied' in copied.stdout, copied.output

    s3_home = tmp_path / 's3-home'
    demo.render_config(s3_home, registry_url=url, storage_options=s3server.storage_options(), data=data)
    listed = demo.run_forml(s3_home, 'model', 'list', demo.PROJECT, demo.RELEASE)
    assert listed.stdout.split() == ['1'], listed.stderr
    applied = demo.run_forml(s3_home, 'model', 'apply', demo.PROJECT)
    predictions = parse_predictions(applied.stdout)
    assert len(predictions) == demo.BATCH_ROWS, applied.stdout + applied.stderr
    numpy.testing.assert_allclose(predictions, expected, rtol=1e-9)


def test_long_commands_show_progress_on_stderr_and_keep_stdout_clean(s3server, s3_url, committed, tmp_path):
    verified = run('verify', '--json', s3_url, *s3_options(s3server))
    assert verified.exit_code == 0 and verified.stderr.splitlines()[0] == 'Verifying'  # the bar's label
    assert json.loads(verified.stdout) == []  # the bar never mixes into --json output
    copied = run('copy', s3_url, str(tmp_path / 'posix-copy'), *s3_options(s3server, '--src-option'))
    assert copied.exit_code == 0 and 'Copying' in copied.stderr.splitlines()[1:] and 'Copying' not in copied.stdout
    collected = run('gc', s3_url, '--older-than', '0', '--allow-short-grace', *s3_options(s3server))
    assert collected.exit_code == 0 and 'Deleting' in collected.stderr.splitlines()


def test_copy_reports_every_object_it_writes(s3server, s3_url, posix_registry, tmp_path):
    """The bytes behind ``copy``'s progress: each package and state, as written, adding up to the summary."""
    with migrate.Workdir() as workdir:
        source = migrate.open_side(str(posix_registry), {}, workdir / 'source', 'auto')
        target = migrate.open_side(s3_url, s3server.storage_options(), workdir / 'destination', 'auto')
        seen: list[tuple[str, int]] = []
        summary = migrate.copy(source, target, written=lambda step, size: seen.append((step.label, size)))
    packages = [label for label, _ in seen if 'generation' not in label]
    states = [label for label, _ in seen if 'generation' in label]
    assert len(packages) == 3 and len(states) == 10  # 3 releases; 5 generations of 2 states
    assert sum(size for _, size in seen) == summary.bytes > 0 and summary.copied == 8
