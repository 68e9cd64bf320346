"""Every Registry method, with ForML's posix-registry semantics, on memory://, file:// and S3 (moto over HTTP)."""

import hashlib
import pathlib
import pickle
import uuid

import forml
import pytest
from forml import project as prj
from forml.io import asset

from forml_s3.model import layout
from forml_s3.registry import Conflict, Registry
from forml_s3.runtime import transfers

from .helpers import PROJECT, commit, tag


def test_empty_registry_lists_nothing(registry):
    assert list(registry.projects()) == []
    assert list(registry.releases(PROJECT)) == []
    assert list(registry.generations(PROJECT, '0.1')) == []


def test_push_lists_and_pulls_the_release(registry, package_factory):
    package = package_factory('0.1')
    registry.push(package)
    assert list(registry.projects()) == [PROJECT]
    assert list(registry.releases(PROJECT)) == [asset.Release.Key('0.1')]
    pulled = registry.pull(PROJECT, '0.1')
    assert isinstance(pulled, prj.Package)
    assert pulled.manifest == package.manifest
    assert pulled.path.read_bytes() == package.path.read_bytes()


class Died(BaseException):
    """The pushing process dying at a given point (nothing after it runs; a BaseException passes every handler)."""


@pytest.mark.parametrize('point', ['project marker', 'release marker'])
def test_a_push_dying_between_its_markers_never_hides_a_committed_release(
    make_registry, package_factory, point, tmp_path
):
    from forml_s3.ops import snapshot

    pusher = make_registry()
    store, create = pusher._store, pusher._store.create

    def dying(path: str, data: bytes) -> None:
        create(path, data)
        if (point == 'release marker') == ('/releases/' in path):
            raise Died(path)

    store.create = dying
    with pytest.raises(Died):
        pusher.push(package_factory('0.1'))
    reader = make_registry(cache_dir=tmp_path / 'other-cache')
    assert list(reader.projects()) == [PROJECT]  # listed whether its release made it or not
    assert list(reader.releases(PROJECT)) == ([asset.Release.Key('0.1')] if point == 'release marker' else [])
    _, problems = snapshot.verify(reader._store, orphans=False)  # the package of the push that died is one
    assert [p.kind for p in problems] == []


def test_pull_of_missing_release_is_a_missing_error(registry, package_factory):
    with pytest.raises(forml.MissingError, match='No release demo-proj-0.9'):
        registry.pull(PROJECT, '0.9')
    registry.push(package_factory('0.1'))
    with pytest.raises(forml.MissingError):
        registry.pull(PROJECT, '0.2')


def test_releases_are_immutable_and_monotonic(registry, package_factory):
    registry.push(package_factory('0.2', payload='original'))
    with pytest.raises(Conflict, match='already exists.*bump the version'):
        registry.push(package_factory('0.2', payload='other'))
    with pytest.raises(asset.Level.Invalid, match='not an increment'):
        registry.push(package_factory('0.1'))
    registry.push(package_factory('0.3'))
    assert sorted(registry.releases(PROJECT)) == [asset.Release.Key('0.2'), asset.Release.Key('0.3')]
    installed = registry.mount(PROJECT, '0.2')
    assert "PAYLOAD = 'original'" in (installed.path / 'demo' / '__init__.py').read_text()


def test_generation_round_trip(registry, package_factory):
    registry.push(package_factory('0.1'))
    committed, sids = commit(registry, 1, payloads=(b'first', b'\x00' * 1000), ordinal=42)
    assert list(registry.generations(PROJECT, '0.1')) == [asset.Generation.Key(1)]
    opened = registry.open(PROJECT, '0.1', 1)
    assert opened == committed
    assert opened.training.timestamp == committed.training.timestamp  # datetimes survive exactly
    assert opened.tuning.timestamp.tzinfo is not None
    assert opened.training.ordinal == 42
    assert [registry.read(PROJECT, '0.1', 1, s) for s in sids] == [b'first', b'\x00' * 1000]


def test_read_semantics_match_posix(registry, package_factory):
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    assert registry.read(PROJECT, '0.1', 1, uuid.uuid4()) == b''  # unknown state of an existing generation
    with pytest.raises(asset.Level.Invalid):
        registry.read(PROJECT, '0.1', 2, uuid.uuid4())  # generation that does not exist
    with pytest.raises(asset.Level.Listing.Empty):
        registry.open(PROJECT, '0.1', 2)


def test_generations_list_in_numeric_order(registry, package_factory):
    registry.push(package_factory('0.1'))
    for generation in range(1, 12):
        commit(registry, generation, payloads=())
    assert list(asset.Release.Listing(registry.generations(PROJECT, '0.1'))) == list(range(1, 12))


def test_closing_a_committed_generation_is_a_conflict_and_keeps_the_winner(registry, package_factory):
    registry.push(package_factory('0.1'))
    winner, winner_sids = commit(registry, 1, payloads=(b'winner',))
    with pytest.raises(Conflict, match=r'Generation 1 of demo-proj-0.1 .*Train again to build generation 2'):
        commit(registry, 1, payloads=(b'loser',))
    assert registry.open(PROJECT, '0.1', 1) == winner
    assert registry.read(PROJECT, '0.1', 1, winner_sids[0]) == b'winner'


def test_close_into_a_missing_release_is_invalid(registry):
    with pytest.raises(asset.Level.Invalid, match='No release'):
        registry.close(PROJECT, '0.1', 1, tag())


def test_close_with_a_state_never_written_fails_and_commits_nothing(make_registry, package_factory):
    registry = make_registry(commit_timeout=0.3)
    registry.push(package_factory('0.1'))
    with pytest.raises(asset.Level.Invalid, match='was not stored within'):
        registry.close(PROJECT, '0.1', 1, tag([uuid.uuid4()]))
    assert list(registry.generations(PROJECT, '0.1')) == []


def test_state_written_by_another_process_is_committed_with_its_checksum(make_registry, package_factory):
    """A Dask worker writes, another closes: close finds the state in the store, not in its own memory."""
    writer, closer = make_registry(), make_registry()
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    writer.write(PROJECT, '0.1', sid, b'from a worker')
    uri = writer._store.url_of(writer._layout.state(PROJECT, '0.1', sid))
    transfers.pending(uri).future.result()
    transfers.forget(uri)  # as if written in another process: this one holds no record of the upload
    closer.close(PROJECT, '0.1', 1, tag([sid]))
    assert make_registry(cache_dir=None).read(PROJECT, '0.1', 1, sid) == b'from a worker'


def test_uncommitted_work_is_invisible(registry, package_factory):
    """Requirement 1: a half-pushed release or unclosed states never show in listings."""
    package = package_factory('0.1')
    store = registry._store
    store.write(registry._layout.package(PROJECT, '0.1', 'f' * 64), package.path.read_bytes())
    assert list(registry.projects()) == []
    assert list(registry.releases(PROJECT)) == []
    registry.push(package_factory('0.2'))
    registry.write(PROJECT, '0.2', uuid.uuid4(), b'orphan')
    assert list(registry.releases(PROJECT)) == [asset.Release.Key('0.2')]
    assert list(registry.generations(PROJECT, '0.2')) == []


def test_mount_installs_a_complete_tree_and_reuses_it(registry, package_factory, tmp_path):
    package = package_factory('0.1')
    registry.push(package)
    artifact = registry.mount(PROJECT, '0.1')
    sha256 = hashlib.sha256(pathlib.Path(package.path).read_bytes()).hexdigest()
    target = tmp_path / 'staging' / PROJECT / f'0.1-{sha256[:16]}'  # keyed by the package it holds
    assert artifact.path == target
    assert (target / 'demo' / '__init__.py').exists()
    assert (target / '__4ml__.py').exists()
    stamp = (target / '.forml-s3.json').read_text()
    again = registry.mount(PROJECT, '0.1')
    assert again.path == target and (target / '.forml-s3.json').read_text() == stamp


@pytest.mark.parametrize(
    'call',
    [
        lambda r: r.releases('a/b'),
        lambda r: r.releases('..'),
        lambda r: r.generations('ok', '../x'),
        lambda r: r.generations('ok', 'not-a-version'),
        lambda r: r.open('ok', '1.0', 0),
        lambda r: r.open('ok', '1.0', -1),
        lambda r: r.write('ok\x00', '1.0', uuid.uuid4(), b''),
        lambda r: r.read('ok', '1.0', 1, 'not-a-uuid'),
    ],
)
def test_bad_names_never_become_keys(registry, call):
    with pytest.raises(asset.Level.Invalid):
        call(registry)


def test_registry_pickles_without_its_connection_and_compares_by_url(make_registry, registry):
    list(registry.projects())  # connect
    clone = pickle.loads(pickle.dumps(registry))
    assert clone == registry and hash(clone) == hash(registry)
    assert clone._store._fs is None
    assert list(clone.projects()) == []
    other = Registry('memory://somewhere-else', staging=registry._staging)
    assert other != registry


def test_repr_shows_the_url_and_never_credentials(s3server, tmp_path):
    registry = Registry(
        's3://bucket/forml',
        storage_options={'key': 'AKIASECRETKEY', 'secret': 'very-secret-value'},
        cache_dir=tmp_path,
    )
    assert repr(registry) == 'S3-registry(s3://bucket/forml)'
    assert 'secret' not in repr(registry.__dict__.get('_store'))


def test_s3_objects_stay_tagged_uncommitted_until_their_marker(s3server, bucket, tmp_path, package_factory):
    registry = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path)
    registry.push(package_factory('0.1'))
    client = s3server.client()

    def tags(key):
        bucket_name, _, object_key = key.partition('/')
        return {t['Key']: t['Value'] for t in client.get_object_tagging(Bucket=bucket_name, Key=object_key)['TagSet']}

    sid = uuid.uuid4()
    registry.write(PROJECT, '0.1', sid, b'state')
    key = registry._layout.state(PROJECT, '0.1', sid)
    transfers.pending(registry._store.url_of(key)).future.result()
    assert tags(key) == dict([layout.UNCOMMITTED_TAG])
    registry.close(PROJECT, '0.1', 1, tag([sid]))
    assert tags(key) == {}
    package_key = registry._layout.release_object(
        PROJECT, '0.1', registry._release_marker(PROJECT, '0.1')['package']['key']
    )
    assert tags(package_key) == {}
    head = client.head_object(Bucket=bucket, Key=key.partition('/')[2])
    assert len(head['Metadata']['sha256']) == 64
