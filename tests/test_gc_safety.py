"""``gc`` racing real writers (issue 22): no interleaving leaves a listed generation naming a missing state.

Writers are separate processes (``tests/workers.py``) holding uncommitted states while ``forml-s3 gc`` runs (in
this process, or as its own as cron runs it); the test process owns the server and inspects the bucket. The
real-process races run on moto's S3 server and on the GCS and Azure emulators (:class:`Target`).
"""

import dataclasses
import json
import pathlib
import subprocess
import sys
import time
import typing
import uuid

import forml
import pytest

from forml_s3.model import codec, layout
from forml_s3.ops import gc as garbage
from forml_s3.ops import snapshot as inspect
from forml_s3.registry import Incomplete, Registry
from forml_s3.runtime import lease, transfers

from . import helpers
from .helpers import PROJECT, s3_options
from .helpers import run_cli as run
from .test_concurrency import Crowd

FORML_S3 = pathlib.Path(sys.executable).with_name('forml-s3')
SHORT = ('--older-than', '0', '--allow-short-grace')
BACKENDS = ('s3', 'gcs', 'azure')


@dataclasses.dataclass
class Target:
    """A fresh registry root on one backend's server: its URL, storage options, and the test's own look at it."""

    backend: str
    server: typing.Any
    bucket: str
    root: str = 'forml'

    @property
    def url(self) -> str:
        return f's3://{self.bucket}/{self.root}' if self.backend == 's3' else self.server.url(self.bucket, self.root)

    @property
    def options(self) -> dict:
        return self.server.storage_options()

    def keys(self, prefix: str = '') -> set[str]:
        """Every object name in the bucket under ``<root>/<prefix>``, listed straight at the server."""
        if self.backend != 's3':
            return set(self.server.keys(self.bucket, f'{self.root}/{prefix}'))
        pages = (
            self.server.client()
            .get_paginator('list_objects_v2')
            .paginate(Bucket=self.bucket, Prefix=f'{self.root}/{prefix}')
        )
        return {o['Key'] for page in pages for o in page.get('Contents', ())}

    def uri(self, path: str) -> str:
        """The URI gc prints for a store path (``bucket/key``)."""
        return f'{self.url.partition("://")[0]}://{path}'


@pytest.fixture(params=BACKENDS)
def target(request) -> Target:
    if request.param == 'gcs' and request.node.callspec.params.get('tag_uncommitted'):
        pytest.skip('GCS objects have no tags: tag_uncommitted changes nothing there (the untagged case runs)')
    if request.param == 's3':
        return Target('s3', request.getfixturevalue('s3server'), request.getfixturevalue('bucket'))
    server = request.getfixturevalue(f'{request.param}_server')
    return Target(request.param, server, server.create_bucket(f'test-{uuid.uuid4().hex[:12]}'))


@pytest.fixture
def s3url(s3server, bucket):
    return f's3://{bucket}/forml', s3server.storage_options()


def registry_with_a_release(url: str, options: dict, cache: pathlib.Path, package_factory) -> Registry:
    """The test's own registry (fresh listings), with release 0.1 pushed."""
    registry = Registry(url, storage_options=options, cache_dir=cache, listing_ttl=0)
    registry.push(package_factory('0.1'))
    return registry


@pytest.fixture
def reader(s3url, tmp_path, package_factory):
    return registry_with_a_release(*s3url, tmp_path / 'reader', package_factory)


@pytest.fixture
def treader(target, tmp_path, package_factory):
    """:func:`reader` on the parametrized backend."""
    return registry_with_a_release(target.url, target.options, tmp_path / 'reader', package_factory)


def gc(server, url: str, *args: str, process: bool = False) -> subprocess.CompletedProcess:
    """``forml-s3 gc``: in this process (the writers are the processes that matter), or as its own process as an
    operator's cron job runs it."""
    if not process:
        done = run('gc', url, *args, *s3_options(server))
        return subprocess.CompletedProcess(['forml-s3', 'gc'], done.exit_code, done.stdout, done.stderr)
    return subprocess.run(
        [FORML_S3, 'gc', url, *args, *s3_options(server)], capture_output=True, text=True, timeout=120, check=False
    )


def ready(crowd: Crowd, name: str, timeout: float = 120) -> list[str]:
    """The state ids a worker wrote, once it says they are stored."""
    path, deadline = crowd.tmp / f'ready-{name}', time.monotonic() + timeout
    while not (path.exists() and path.read_text()):
        failed = [p.communicate() for n, p in crowd.procs if n == name and p.poll() is not None]
        assert not failed, failed
        assert time.monotonic() < deadline, f'{name} did not get ready'
        time.sleep(0.05)
    return path.read_text().split(',')


def assert_complete(reader: Registry) -> None:
    """Every listed generation reads whole (the invariant gc must never break)."""
    for generation in reader.generations(PROJECT, '0.1'):
        tag = reader.open(PROJECT, '0.1', generation)
        assert all(reader.read(PROJECT, '0.1', generation, sid) for sid in tag.states)


def wait_unleased(target: Target, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while target.keys(f'{layout.LEASES}/'):
        assert time.monotonic() < deadline, 'the lease was never dropped'
        time.sleep(0.1)


@pytest.mark.parametrize('pack_states', [True, False], ids=['packs', 'no-packs'])
@pytest.mark.parametrize('tag_uncommitted', [True, False], ids=['tagged', 'untagged'])
def test_gc_spares_a_training_between_its_last_write_and_close(target, treader, tmp_path, tag_uncommitted, pack_states):
    crowd = Crowd(tmp_path, target.url, target.options)
    settings = {'tag_uncommitted': tag_uncommitted, 'pack_states': pack_states, 'lease_after': 0.2}
    crowd.spawn('write-then-close', 'trainer', '--settings', json.dumps(settings), '--await-lease')
    sids = ready(crowd, 'trainer')
    states = target.keys(f'{PROJECT}/0.1/states/')
    assert len(states) == 3

    collected = gc(target.server, target.url, *SHORT)
    assert collected.returncode == 0, collected.stderr
    assert f'spared {PROJECT}/0.1: a live writer holds uncommitted uploads there' in collected.stderr
    assert collected.stdout.startswith('0 uncommitted objects older than 0 days deleted')
    assert target.keys(f'{PROJECT}/0.1/states/') == states

    crowd.go.touch()
    [result] = crowd.results()
    assert result['won'], result
    assert [str(s) for s in treader.open(PROJECT, '0.1', 1).states] == sids
    assert_complete(treader)
    wait_unleased(target)  # committed: the lease is dropped


@pytest.mark.parametrize('tag_uncommitted', [True, False], ids=['tagged', 'untagged'])
def test_close_refuses_states_gc_deleted_before_the_writer_took_a_lease(target, treader, tmp_path, tag_uncommitted):
    """A writer not leased yet (its first lease_after seconds) loses its states to a short-grace gc: its close
    then refuses to commit them, naming them, and nothing is listed."""
    options = {**target.options, 'max_attempts': 1} if target.backend == 's3' else target.options
    crowd = Crowd(tmp_path, target.url, options)  # moto answers 500 to untagging a missing key: no retries there
    settings = {'tag_uncommitted': tag_uncommitted, 'pack_states': False, 'lease_after': 150}
    crowd.spawn('write-then-close', 'trainer', '--settings', json.dumps(settings))
    sids = ready(crowd, 'trainer')

    collected = gc(target.server, target.url, *SHORT)
    assert collected.returncode == 0, collected.stderr
    assert collected.stdout.count(f'deleted {target.uri("")}') == 3
    assert target.keys(f'{PROJECT}/0.1/states/') == set()

    crowd.go.touch()
    [result] = crowd.results()
    assert not result['won']
    assert 'Cannot commit generation 1 of demo-proj-0.1' in result['error']
    assert all(f'state {sid} (missing)' in result['error'] for sid in sids)
    assert 'nothing was committed' in result['error']
    assert list(treader.generations(PROJECT, '0.1')) == []


def test_dask_worker_states_wait_for_another_process_close(target, treader, tmp_path):
    crowd = Crowd(tmp_path, target.url, target.options)
    crowd.spawn('write-and-wait', 'worker', '--settings', json.dumps({'lease_after': 0.2}), '--await-lease')
    sids = ready(crowd, 'worker')

    collected = gc(target.server, target.url, *SHORT, process=True)
    assert collected.returncode == 0 and f'spared {PROJECT}/0.1' in collected.stderr, collected.stderr
    assert len(target.keys(f'{PROJECT}/0.1/states/')) == 3

    (tmp_path / 'driver').mkdir()
    driver = Crowd(tmp_path / 'driver', target.url, target.options)
    driver.spawn('close-only', 'driver', '--sids', ','.join(sids), wait=False)
    assert driver.results()[0]['won']
    assert_complete(treader)
    crowd.go.touch()
    crowd.results()
    wait_unleased(target)  # the worker dropped its lease at exit


def test_gc_dry_run_lists_exactly_what_a_real_run_deletes(target, treader):
    url, store, lay = target.url, treader._store, treader._layout
    helpers.commit(treader, 1)
    # garbage: an abandoned state, an abandoned package, an expired lease, (S3) a killed multipart upload
    orphan = lay.state(PROJECT, '0.1', uuid.uuid4())
    store.write(orphan, b'abandoned')
    package = lay.package(PROJECT, '0.1', 'cd' * 32)
    store.write(package, b'a package whose marker never came')
    expired = lay.lease('deadhost-1-abc')
    store.write(expired, b'{"format": "forml-s3/1", "writer": "deadhost:1", "releases": [], "ttl": 0.5}')
    if target.backend == 's3':  # GCS and Azure expire abandoned upload sessions and uncommitted blocks themselves
        client = target.server.client()
        killed = lay.state(PROJECT, '0.1', uuid.uuid4()).partition('/')[2]
        upload = client.create_multipart_upload(Bucket=target.bucket, Key=killed)['UploadId']
        client.upload_part(Bucket=target.bucket, Key=killed, UploadId=upload, PartNumber=1, Body=b'part')
    # not ours to delete: a user's file named like a package, states of a project without any marker
    backup = f'{target.bucket}/{target.root}/{PROJECT}/0.1/package-backup.4ml'
    stray = f'{target.bucket}/{target.root}/nomarker/0.1/states/{uuid.uuid4()}.bin'
    for path in (backup, stray):
        store.write(path, b'not forml-s3 garbage')
    time.sleep(1)  # the lease expires
    before = target.keys()

    dry = run('gc', url, *SHORT, '--dry-run', *s3_options(target.server))
    assert dry.exit_code == 0, dry.output
    assert target.keys() == before
    done = run('gc', url, *SHORT, *s3_options(target.server))
    assert done.exit_code == 0, done.output

    past = {'would delete': 'deleted', 'would abort': 'aborted', 'would drop': 'dropped'}
    would = sorted(
        past[line[: line.index(' ', 6)]] + line[line.index(' ', 6) :] for line in dry.stdout.splitlines()[:-1]
    )
    assert would == sorted(done.stdout.splitlines()[:-1])
    assert f'deleted {target.uri(orphan)} (9 B)' in would and any(target.uri(package) in line for line in would)
    assert f'dropped expired lease {target.uri(expired)} of deadhost:1' in would
    uploads = 0
    if target.backend == 's3':
        assert f'aborted multipart upload {upload} of s3://{target.bucket}/{killed}' in would
        assert client.list_multipart_uploads(Bucket=target.bucket).get('Uploads') is None
        uploads = 1
    assert len(would) == 3 + uploads
    assert done.stdout.splitlines()[-1] == (
        f'2 uncommitted objects older than 0 days deleted (42 B), {uploads} multipart uploads aborted, '
        '1 expired leases dropped'
    )
    assert target.keys() == before - {path.partition('/')[2] for path in (orphan, package, expired)}
    assert {path.partition('/')[2] for path in (backup, stray)} <= target.keys()
    assert_complete(treader)


def test_gc_refuses_a_short_grace_without_the_flag(s3server, s3url, reader):
    orphan = reader._layout.state(PROJECT, '0.1', uuid.uuid4())
    reader._store.write(orphan, b'abandoned')
    refused = run('gc', s3url[0], '--older-than', '1', *s3_options(s3server))
    assert refused.exit_code == 2 and '--allow-short-grace' in refused.output
    default = run('gc', s3url[0], *s3_options(s3server))  # 7 days: the orphan is minutes old
    assert default.exit_code == 0 and default.stdout.startswith('0 uncommitted objects older than 7 days')
    assert reader._store.exists(orphan)
    assert 'RISK' in run('gc', '--help').output


def test_gc_stopped_by_a_denied_delete_lists_what_it_deleted_and_exits_2(embedded_server, s3url, reader):
    orphans = sorted(reader._layout.state(PROJECT, '0.1', uuid.uuid4()) for _ in range(3))
    for path in orphans:
        reader._store.write(path, b'abandoned')
    denied = orphans[1].partition('/')[2]
    embedded_server.inject(403, 'AccessDenied', match=lambda call: call.method == 'DELETE' and denied in call.path)
    done = run('gc', s3url[0], *SHORT, *s3_options(embedded_server))
    assert done.exit_code == 2
    assert done.stdout.splitlines() == [f'deleted s3://{orphans[0]} (9 B)']
    assert 'gc stopped after 1 of its deletions (listed above)' in done.stderr and 'Access denied' in done.stderr
    assert [reader._store.exists(p) for p in orphans] == [False, True, True]


def test_gc_keeps_an_object_rewritten_after_it_was_judged(s3server, s3url, reader):
    """If-Match on the judged ETag: moto honours it (412), so the rewritten object survives."""
    store = inspect.store_for(*s3url)
    orphan = reader._layout.state(PROJECT, '0.1', uuid.uuid4())
    reader._store.write(orphan, b'abandoned')
    judged = garbage.judge(store, garbage.datetime.timedelta(0), now=time.time() + 60)
    assert [o.path for o in judged.objects] == [orphan]
    reader._store.write(orphan, b'rewritten by a writer')
    done = garbage.collect(store, garbage=judged)
    assert done.objects == [] and done.changed == [orphan]
    assert reader._store.read(orphan) == b'rewritten by a writer'


def test_reading_a_generation_with_a_missing_state_names_it_and_verify_reports_it(s3server, s3url, reader, tmp_path):
    _, sids = helpers.commit(reader, 1, payloads=(b'x' * 10, b'y' * 10))
    marker = json.loads(reader._store.read(reader._layout.generation_marker(PROJECT, '0.1', 1)))
    gone = next(iter(reader._layout.stored(PROJECT, '0.1', marker)))
    reader._store.delete(gone)
    fresh = Registry(s3url[0], storage_options=s3url[1], cache_dir=tmp_path / 'fresh')
    fresh.open(PROJECT, '0.1', 1)
    with pytest.raises(forml.MissingError) as missing:
        for sid in sids:
            fresh.read(PROJECT, '0.1', 1, sid)
    message = str(missing.value)
    assert f'of generation 1 of {PROJECT}-0.1 is missing from {s3url[0]}' in message
    assert any(f'State {sid}' in message for sid in sids) and f'`forml-s3 verify {s3url[0]}`' in message
    verified = run('verify', s3url[0], '--quick', *s3_options(s3server))
    assert verified.exit_code == 1 and 'MISSING: Missing ' in verified.stdout and gone in verified.stdout


@pytest.mark.parametrize('what', ['package', 'pack', 'state'])
def test_a_commit_never_names_an_object_deleted_before_its_marker(s3url, tmp_path, package_factory, monkeypatch, what):
    """The object vanishes right before the marker (as if gc won that instant): push and close refuse, naming it."""
    url, options = s3url
    registry = Registry(
        url, storage_options=options, cache_dir=tmp_path / 'c', pack_states=what == 'pack', listing_ttl=0
    )
    if what != 'package':
        registry.push(package_factory('0.1'))
    original = registry._commit_tags

    def vanish(keys):
        original(keys)
        for key in keys:
            registry._store.delete(key)

    monkeypatch.setattr(registry, '_commit_tags', vanish)
    monkeypatch.setattr('forml_s3.runtime.packing.LINGER', 60.0)
    with pytest.raises(Incomplete, match=f'{what} .*missing.*nothing was committed'):
        if what == 'package':
            registry.push(package_factory('0.1'))
        else:
            helpers.commit(registry, 1, payloads=(b'a', b'b'))
    assert [str(r) for r in registry.releases(PROJECT)] == ([] if what == 'package' else ['0.1'])
    if what != 'package':
        assert list(registry.generations(PROJECT, '0.1')) == []
    assert lease.held(registry._store) is None


# every backend -----------------------------------------------------------------------------------------------
def test_every_backend_refuses_to_commit_a_state_that_is_gone(make_registry, backend, package_factory, tmp_path):
    options = {**make_registry.options, 'max_attempts': 1} if backend == 's3' else {}  # moto: 500, retried
    registry = Registry(make_registry.url, storage_options=options, cache_dir=tmp_path / 'c', pack_states=False)
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(2)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes * 10)
    transfers.wait_all()
    registry._store.delete(registry._layout.state(PROJECT, '0.1', sids[1]))  # what gc would have done
    with pytest.raises(Incomplete, match=f'state {sids[1]} \\(missing\\)'):
        registry.close(PROJECT, '0.1', 1, helpers.tag(sids))
    assert list(registry.generations(PROJECT, '0.1')) == []


def test_every_backend_spares_a_leased_release_from_gc(make_registry, package_factory):
    registry = make_registry(pack_states=False, lease_after=0)
    registry.push(package_factory('0.1'))
    registry.write(PROJECT, '0.1', uuid.uuid4(), b'uncommitted')
    transfers.wait_all()
    deadline = time.monotonic() + 30
    while lease.held(registry._store) is None:
        assert time.monotonic() < deadline, 'no lease taken'
        time.sleep(0.05)
    store = inspect.store_for(make_registry.url, make_registry.options)
    judged = garbage.judge(store, garbage.datetime.timedelta(0), now=time.time() + 60)
    assert judged.objects == [] and judged.leased == {f'{PROJECT}/0.1'}
    lease.forget()  # as if the writer died: its lease expires after its ttl
    expired = garbage.judge(store, garbage.datetime.timedelta(0), now=time.time() + lease.TTL + 60)
    assert len(expired.objects) == 1 and [x.writer for x in expired.leases] == [codec.writer()]
