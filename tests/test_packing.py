"""Small states committed by the process that wrote them are stored side by side in one pack object; states
nobody commits in time are stored on their own. Against moto's HTTP server (or ``FORML_S3_TEST_ENDPOINT``)."""

import json
import multiprocessing
import subprocess
import sys
import textwrap
import threading
import uuid

import forml
import pytest
from forml.io import asset

from forml_s3.ops import snapshot as inspect
from forml_s3.registry import Conflict, Registry
from forml_s3.runtime import packing, transfers

from .helpers import PROJECT, commit, run_cli, s3_options, tag


@pytest.fixture
def url(bucket) -> str:
    return f's3://{bucket}/forml'


@pytest.fixture
def make(s3server, url, tmp_path):
    def make(**kwargs) -> Registry:
        kwargs.setdefault('cache_dir', tmp_path / f'cache-{uuid.uuid4().hex[:6]}')  # another machine by default
        kwargs.setdefault('storage_options', s3server.storage_options())
        return Registry(url, **kwargs)

    return make


@pytest.fixture
def lingering(monkeypatch):
    """States stay held until the test's commit however slow the machine is."""
    monkeypatch.setattr(packing, 'LINGER', 60.0)


def marker(registry: Registry, generation: int, release: str = '0.1') -> dict:
    return json.loads(registry._store.read(registry._layout.generation_marker(PROJECT, release, generation)))


def key_of(path: str) -> str:
    return path.partition('/')[2]


def tags_of(s3server, bucket: str, path: str) -> list[dict]:
    return s3server.client().get_object_tagging(Bucket=bucket, Key=key_of(path))['TagSet']


def test_small_states_of_one_commit_share_a_pack_and_read_back(make, package_factory, lingering):
    writer = make()
    writer.push(package_factory('0.1'))
    small = [uuid.uuid4().bytes * (i + 1) for i in range(50)]
    large = b'L' * (packing.MAX_STATE + 1)  # above the packing size: stored on its own
    committed, sids = commit(writer, 1, payloads=(*small, large))

    written = marker(writer, 1)
    assert len(written['packs']) == 1
    (pid, pack), sid_large = next(iter(written['packs'].items())), str(sids[-1])
    assert pack['size'] == sum(len(p) for p in small)
    assert all(written['states'][str(s)]['pack'] == pid for s in sids[:-1])
    assert 'pack' not in written['states'][sid_large]
    offsets = [written['states'][str(s)]['offset'] for s in sids[:-1]]
    assert offsets == sorted(offsets) and offsets[0] == 0  # side by side, in the tag's order
    listed = {path for path, _ in writer._store.walk(writer._layout.states(PROJECT, '0.1'))}
    assert listed == {writer._layout.pack(PROJECT, '0.1', pid), writer._layout.state(PROJECT, '0.1', sid_large)}

    reader = make()  # another machine: nothing cached
    assert reader.open(PROJECT, '0.1', 1) == committed
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == [*small, large]


def test_reading_a_packed_generation_fetches_the_pack_once(embedded_server, bucket, make, package_factory, lingering):
    writer = make()
    writer.push(package_factory('0.1'))
    payloads = tuple(f'state {i}'.encode() * 100 for i in range(20))
    _, sids = commit(writer, 1, payloads=payloads)
    embedded_server.reset_counts()
    reader = make()
    reader.open(PROJECT, '0.1', 1)
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == list(payloads)
    objects = f'/{bucket}/forml/{PROJECT}/0.1/'
    assert embedded_server.count(method='GET', path_prefix=objects + 'generations/1') == 1
    assert embedded_server.count(method='GET', path_prefix=objects + 'states/') == 1  # the pack, once
    embedded_server.reset_counts()
    again = make(cache_dir=reader._cache.root)  # same machine: all from the local cache
    again.open(PROJECT, '0.1', 1)
    assert [again.read(PROJECT, '0.1', 1, s) for s in sids] == list(payloads)
    assert embedded_server.count(method='GET', path_prefix=objects + 'states/') == 0
    # opening a known number lists nothing: the marker's one small GET is all (see test_requests.py)
    assert embedded_server.count(method='GET') == embedded_server.count(method='GET', path_prefix=objects + 'gen') == 1


def test_a_state_nobody_commits_in_time_is_stored_on_its_own(make, package_factory, monkeypatch):
    """What a Dask worker's states go through: the commit runs in another process, which finds them by key."""
    monkeypatch.setattr(packing, 'LINGER', 0.05)
    writer = make()
    writer.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(3)]
    for sid in sids:
        writer.write(PROJECT, '0.1', sid, sid.bytes)
    for sid in sids:
        uri = writer._store.url_of(writer._layout.state(PROJECT, '0.1', sid))
        transfers.pending(uri).future.result(timeout=30)  # sent by the linger, nobody claimed it
        transfers.forget(uri)  # as if written in another process: the committer holds no record of it
    for sid in sids:
        assert writer._store.read(writer._layout.state(PROJECT, '0.1', sid)) == sid.bytes

    committer = make()
    committer.close(PROJECT, '0.1', 1, tag(sids))
    assert 'packs' not in marker(committer, 1)
    reader = make()
    reader.open(PROJECT, '0.1', 1)
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == [s.bytes for s in sids]


def test_a_process_exiting_without_commit_still_stores_its_held_states(s3server, url, tmp_path, make):
    """Held states are sent before the interpreter exits: a commit in another process can still find them."""
    sid = uuid.uuid4()
    script = textwrap.dedent(f"""
        import json, sys, uuid
        from forml_s3.runtime import packing
        from forml_s3.registry import Registry
        packing.LINGER = 3600.0  # only the exit hook can send it
        registry = Registry({url!r}, storage_options=json.loads(sys.argv[1]), cache_dir={str(tmp_path / 'c')!r})
        registry.write('{PROJECT}', '0.1', uuid.UUID('{sid}'), b'written by a short-lived process')
    """)
    done = subprocess.run(
        [sys.executable, '-c', script, json.dumps(s3server.storage_options())],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    registry = make()
    assert registry._store.read(registry._layout.state(PROJECT, '0.1', sid)) == b'written by a short-lived process'


def test_a_failed_commit_keeps_its_states_committable(embedded_server, make, package_factory, lingering):
    registry = make(storage_options=embedded_server.storage_options(max_attempts=1, retries=1))
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(5)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes * 10)
    embedded_server.inject(503, 'SlowDown', count=1000, match=lambda c: c.method == 'PUT' and '/generations/' in c.path)
    with pytest.raises(Exception, match='retries exhausted'):
        registry.close(PROJECT, '0.1', 1, tag(sids))
    embedded_server.clear_faults()
    registry.close(PROJECT, '0.1', 1, tag(sids))  # the re-run packs them again
    reader = make()
    reader.open(PROJECT, '0.1', 1)
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == [s.bytes * 10 for s in sids]
    snap, problems = inspect.verify(registry._store)
    assert [(p.kind, inspect.classify(registry._layout, p.path)[0]) for p in problems] == [
        ('orphan', inspect.Kind.PACK)  # the first attempt's pack: uncommitted, `forml-s3 gc` (or lifecycle) removes it
    ]


def test_the_loser_of_a_race_leaves_its_pack_tagged_uncommitted(s3server, bucket, make, package_factory, lingering):
    winner, loser = make(), make()
    winner.push(package_factory('0.1'))
    list(loser.generations(PROJECT, '0.1'))  # the loser's listing is from before the winner's commit
    commit(winner, 1)
    with pytest.raises(Conflict):
        commit(loser, 1, payloads=(b'lost a', b'lost b'))
    packs = [p for p, _ in loser._store.walk(loser._layout.states(PROJECT, '0.1')) if p.endswith('.pack')]
    committed = loser._layout.pack(PROJECT, '0.1', next(iter(marker(winner, 1)['packs'])))
    assert tags_of(s3server, bucket, committed) == []
    (lost,) = set(packs) - {committed}
    assert tags_of(s3server, bucket, lost) == [{'Key': 'forml-s3', 'Value': 'uncommitted'}]


def test_verify_and_gc_know_packs(s3server, url, make, package_factory, lingering):
    registry = make()
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=(b'one', b'two', b'three'))
    checked = run_cli('verify', url, *s3_options(s3server))
    assert checked.exit_code == 0, checked.output
    assert '2 committed objects checked' in checked.stderr  # the package and the pack
    assert run_cli('gc', '--older-than', '0', '--allow-short-grace', url, *s3_options(s3server)).exit_code == 0
    reader = make()
    reader.open(PROJECT, '0.1', 1)
    assert reader.read(PROJECT, '0.1', 1, marker_sids(registry, 1)[0]) == b'one'  # gc left the committed pack alone

    pid = next(iter(marker(registry, 1)['packs']))
    pack = registry._layout.pack(PROJECT, '0.1', pid)
    s3server.client().put_object(Bucket=url.split('/')[2], Key=key_of(pack), Body=b'x' * len(b'onetwothree'))
    damaged = run_cli('verify', '--json', url, *s3_options(s3server))
    assert damaged.exit_code == 1
    (problem,) = json.loads(damaged.stdout)
    assert problem['kind'] == 'checksum-mismatch' and f'pack {pid} of generation 1' in problem['message']
    with pytest.raises(forml.InvalidError, match='is corrupted'):
        make().read(PROJECT, '0.1', 1, marker_sids(registry, 1)[1])


def marker_sids(registry: Registry, generation: int) -> list[uuid.UUID]:
    return [uuid.UUID(s) for s in marker(registry, generation)['tag']['states']]


def test_retiring_a_packed_generation_tags_its_pack(s3server, bucket, url, make, package_factory, lingering):
    registry = make(keep_generations=1)
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    old = registry._layout.pack(PROJECT, '0.1', next(iter(marker(registry, 1)['packs'])))
    commit(registry, 2)
    kept = registry._layout.pack(PROJECT, '0.1', next(iter(marker(registry, 2)['packs'])))
    assert list(make().generations(PROJECT, '0.1')) == [asset.Generation.Key(2)]
    assert tags_of(s3server, bucket, old) == [{'Key': 'forml-s3', 'Value': 'retired'}]
    assert tags_of(s3server, bucket, kept) == []


def test_a_marker_naming_an_unknown_pack_is_corrupted(make, package_factory, lingering):
    registry = make()
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    broken = marker(registry, 1)
    broken['packs'] = {}
    registry._store.write(registry._layout.generation_marker(PROJECT, '0.1', 2), json.dumps(broken).encode())
    with pytest.raises(asset.Level.Invalid, match='does not name'):
        make().open(PROJECT, '0.1', 2)


def test_a_close_racing_the_linger_never_deadlocks_the_pool(make, package_factory, monkeypatch):
    """The sender queues lingered uploads while close waits for them: close waits in its own thread, not in pool
    workers the uploads would queue behind."""
    monkeypatch.setattr(packing, 'LINGER', 0.01)
    registry = make()
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(100)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes * 64)
    closing = threading.Thread(target=registry.close, args=(PROJECT, '0.1', 1, tag(sids)), daemon=True)
    closing.start()
    closing.join(timeout=120)
    assert not closing.is_alive(), 'close hung'
    reader = make()
    reader.open(PROJECT, '0.1', 1)
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == [s.bytes * 64 for s in sids]


def test_held_bytes_are_capped_and_the_overflow_is_stored_on_its_own(make, package_factory, monkeypatch):
    monkeypatch.setattr(packing, 'LINGER', 60.0)
    monkeypatch.setattr(packing, 'HELD_BYTES', 10_000)
    registry = make()
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(10)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes * 250)  # 4,000 bytes each
        assert packing._held_bytes <= packing.HELD_BYTES
    registry.close(PROJECT, '0.1', 1, tag(sids))
    written = marker(registry, 1)
    packed = [s for s in sids if 'pack' in written['states'][str(s)]]
    assert packed == sids[-2:]  # the newest two fit the cap; the older ones were sent on their own by write
    reader = make()
    reader.open(PROJECT, '0.1', 1)
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == [s.bytes * 250 for s in sids]


def test_a_forked_child_leaves_its_parents_held_states_alone(make, package_factory, lingering):
    registry = make()
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(3)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes)
    child = multiprocessing.get_context('fork').Process(target=lambda: None)  # exits through threading's hooks
    child.start()
    child.join(timeout=60)
    assert child.exitcode == 0
    assert not any(registry._store.exists(registry._layout.state(PROJECT, '0.1', s)) for s in sids)
    registry.close(PROJECT, '0.1', 1, tag(sids))
    assert len(marker(registry, 1)['packs']) == 1


def test_a_registry_with_packing_off_never_packs_what_another_holds(make, package_factory, monkeypatch):
    monkeypatch.setattr(packing, 'LINGER', 0.2)  # the commit waits for the states to be sent on their own
    writer = make()
    writer.push(package_factory('0.1'))
    sids = [uuid.uuid4() for _ in range(3)]
    for sid in sids:
        writer.write(PROJECT, '0.1', sid, sid.bytes)
    make(pack_states=False).close(PROJECT, '0.1', 1, tag(sids))
    assert 'packs' not in marker(writer, 1)
    assert all('pack' not in info for info in marker(writer, 1)['states'].values())
