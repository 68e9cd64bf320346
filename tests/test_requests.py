"""Request and byte accounting against moto's HTTP server: listing a level is one LIST, immutable objects are
fetched at most once per machine. Request counts are deterministic, so they are asserted exactly; timings
belong to the benchmarks, not here."""

import hashlib
import os
import threading
import uuid

import pytest
from forml import application
from forml.io import asset

from forml_s3.inventory import Inventory
from forml_s3.registry import Registry
from forml_s3.runtime import cache as cachemod
from forml_s3.runtime import packing, transfers

from .helpers import PROJECT, commit, tag


@pytest.fixture
def s3registry(embedded_server, s3server, bucket, tmp_path):
    def make(**kwargs) -> Registry:
        kwargs.setdefault('cache_dir', tmp_path / 'cache')
        kwargs.setdefault('staging', tmp_path / 'staging')
        return Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), **kwargs)

    make.bucket = bucket
    return make


def lists(server) -> int:
    return server.count(method='GET', query_contains='list-type=2')


def test_listing_300_generations_is_one_list_request(s3server, s3registry, package_factory):
    writer = s3registry()
    writer.push(package_factory('0.1'))
    transfers.run_all(lambda g: writer.close(PROJECT, '0.1', g, tag()), range(1, 301))

    reader = s3registry()  # a fresh process: nothing cached in memory
    s3server.reset_counts()
    generations = list(reader.generations(PROJECT, '0.1'))
    assert sorted(generations) == list(range(1, 301))
    assert lists(s3server) == 1
    assert len(s3server.requests) == 1  # no per-generation HEAD or GET


def test_listing_is_cached_in_process_and_invalidated_by_own_writes(s3server, s3registry, package_factory):
    registry = s3registry(listing_ttl=60)
    registry.push(package_factory('0.1'))
    s3server.reset_counts()
    for _ in range(50):  # ForML's `model train` lists the same levels dozens of times
        list(registry.projects())
        list(registry.releases(PROJECT))
        list(registry.generations(PROJECT, '0.1'))
    assert lists(s3server) == 3
    commit(registry, 1, payloads=())
    s3server.reset_counts()
    assert list(registry.generations(PROJECT, '0.1')) == [asset.Generation.Key(1)]
    assert lists(s3server) == 1  # own close invalidated the generations listing


def test_immutable_objects_are_fetched_once_per_machine(s3server, s3registry, package_factory, monkeypatch):
    monkeypatch.setattr(packing, 'LINGER', 60.0)  # both states go into one pack however slow the machine is
    writer = s3registry(cache_dir=None)  # the trainer: its own cache
    writer.push(package_factory('0.1'))
    _, sids = commit(writer, 1, payloads=(b'x' * 5000, b'y' * 7000))

    s3server.reset_counts()
    first = s3registry()  # a serving process on another machine (empty cache dir), as ForML does it: list, open
    assert list(first.generations(PROJECT, '0.1')) == [1]
    first.open(PROJECT, '0.1', 1)
    assert [first.read(PROJECT, '0.1', 1, s) for s in sids] == [b'x' * 5000, b'y' * 7000]
    state_gets = s3server.count(method='GET', path_prefix=f'/{s3registry.bucket}/forml/{PROJECT}/0.1/states/')
    marker_gets = s3server.count(method='GET', path_prefix=f'/{s3registry.bucket}/forml/{PROJECT}/0.1/generations/1')
    assert (state_gets, marker_gets) == (1, 1)  # both states were committed in one pack: one GET

    s3server.reset_counts()
    second = s3registry()  # a second process on the same machine: same cache dir
    assert list(second.generations(PROJECT, '0.1')) == [1]
    second.open(PROJECT, '0.1', 1)
    assert [second.read(PROJECT, '0.1', 1, s) for s in sids] == [b'x' * 5000, b'y' * 7000]
    assert s3server.count(method='GET') == lists(s3server) == 1  # one LIST, no object fetched again

    s3server.reset_counts()
    third = s3registry()  # one that opens a known number without listing: its marker tells it, nothing else
    third.open(PROJECT, '0.1', 1)
    assert [third.read(PROJECT, '0.1', 1, s) for s in sids] == [b'x' * 5000, b'y' * 7000]
    marker_gets = s3server.count(method='GET', path_prefix=f'/{s3registry.bucket}/forml/{PROJECT}/0.1/generations/1')
    assert len(s3server.requests) == marker_gets == 1  # no listing to tell the marker's version by: one small GET


def test_second_mount_transfers_no_package_bytes(s3server, s3registry, package_factory):
    registry = s3registry(cache_dir=None)
    registry.push(package_factory('0.1', payload='p' * 50_000))
    s3server.reset_counts()
    s3registry().mount(PROJECT, '0.1')
    package_gets = [r for r in s3server.requests if r.method == 'GET' and r.path.endswith('.4ml')]
    assert len(package_gets) == 1 and package_gets[0].bytes_out > 0
    s3server.reset_counts()
    s3registry().mount(PROJECT, '0.1')
    assert [r for r in s3server.requests if r.path.endswith('.4ml')] == []
    assert sum(r.bytes_out for r in s3server.requests) < 2000  # one LIST and one small marker at most


@pytest.mark.parametrize(
    'pack_states, expected',
    [
        pytest.param(True, (1, 1, 1), id='packed'),  # one pack PUT, its tag clear, the marker
        pytest.param(False, (100, 100, 1), id='one-object-each'),  # a PUT and a tag clear per state
    ],
)
def test_write_and_close_cost(s3server, s3registry, package_factory, monkeypatch, pack_states, expected):
    """100 small states written, then closed at once: one pack (or one object each), tag clears, one LIST confirming
    them, one marker."""
    monkeypatch.setattr(packing, 'LINGER', 60.0)  # held until close however slow the machine is
    registry = s3registry(pack_states=pack_states, listing_ttl=600)  # however long 100 writes take here
    registry.push(package_factory('0.1'))
    list(registry.releases(PROJECT))  # ForML lists both levels before it closes: those LISTs are not close's
    list(registry.generations(PROJECT, '0.1'))
    s3server.reset_counts()
    sids = [uuid.uuid4() for _ in range(100)]
    for sid in sids:
        registry.write(PROJECT, '0.1', sid, sid.bytes * 4096)
    registry.close(PROJECT, '0.1', 1, tag(sids))
    puts = s3server.count(method='PUT', path_prefix=f'/{s3registry.bucket}/forml/{PROJECT}/0.1/states/')
    untag = s3server.count(method='DELETE', query_contains='tagging')
    markers = s3server.count(method='PUT', path_prefix=f'/{s3registry.bucket}/forml/{PROJECT}/0.1/generations/')
    assert (puts, untag, markers) == expected
    # close confirms every state is stored: one LIST of the states, not a HEAD each; after its marker, one LIST of
    # the release's retirement floor (a retired number is never committed again, see forml_s3.retention)
    assert lists(s3server) == 2
    assert len(s3server.requests) == sum(expected) + 2  # no lease: the commit came within lease_after


def test_a_level_past_one_page_costs_one_list_per_1000(s3server, s3registry, package_factory):
    """1,001 generations: two LIST pages, continued by token, every generation listed once."""
    writer = s3registry()
    writer.push(package_factory('0.1'))
    commit(writer, 1, payloads=())
    marker = writer._store.read(writer._layout.generation_marker(PROJECT, '0.1', 1))
    client = s3server.client()
    prefix = writer._layout.generations(PROJECT, '0.1').partition('/')[2]
    transfers.run_all(  # the same (valid) marker under 1,000 more numbers: the listing reads no content
        lambda g: client.put_object(Bucket=s3registry.bucket, Key=f'{prefix}/{g}.json', Body=marker), range(2, 1002)
    )
    s3server.reset_counts()
    generations = list(s3registry().generations(PROJECT, '0.1'))
    assert sorted(generations) == list(range(1, 1002))
    pages = [r for r in s3server.requests if 'list-type=2' in r.query]
    assert len(pages) == len(s3server.requests) == 2
    assert 'continuation-token=' in pages[1].query


def test_listing_the_inventory_is_one_list(counted, s3server, bucket, tmp_path):
    inventory = Inventory(f's3://{bucket}/apps', storage_options=s3server.storage_options())
    for name in ('alpha', 'beta', 'gamma'):
        path = tmp_path / f'{name}.py'
        path.write_text(f'from forml import application\napplication.setup(application.Generic({name!r}))\n')
        inventory.put(application.Descriptor.Handle(path))
    s3server.reset_counts()
    assert sorted(inventory.list()) == ['alpha', 'beta', 'gamma']
    assert s3server.count(method='GET', query_contains='list-type=2') == len(s3server.requests) == 1


def test_a_state_evicted_between_its_fetch_and_its_reading_is_read_without_fetching_it_again(
    s3server, s3registry, package_factory, monkeypatch
):
    """Another process evicts every blob (a pack, a state, the package) right after the cache hands it to the reader:
    each read still returns the committed bytes from the one GET it made, the mount installs the package fetched
    once."""
    monkeypatch.setattr(packing, 'LINGER', 60.0)  # the small states go into one pack however slow the machine is
    writer = s3registry(cache_dir=None)
    writer.push(package_factory('0.1'))
    payloads = (os.urandom(2 * 2**20), b'small one' * 100, b'small two' * 100)  # one stored alone, two packed
    _, sids = commit(writer, 1, payloads=payloads)

    reader = s3registry()
    evicted = []

    def then_evicted(opening):  # the cache's ways to a blob opened for its reader: cached, or downloaded
        def opened(self, sha256, *args, **kwargs):
            found = opening(self, sha256, *args, **kwargs)
            if found is None:  # (not cached)
                return found
            other, data = cachemod.BlobCache(self.root, 1), os.urandom(16)  # a 1-byte cap: its scan evicts all
            evictor = threading.Thread(target=other.put, args=(data, hashlib.sha256(data).hexdigest()))
            evictor.start()
            evictor.join()
            evicted.append(not self.path(sha256).exists())
            return found

        return opened

    monkeypatch.setattr(cachemod.BlobCache, '_open_cached', then_evicted(cachemod.BlobCache._open_cached))
    monkeypatch.setattr(cachemod.BlobCache, '_fill', then_evicted(cachemod.BlobCache._fill))
    states = f'/{s3registry.bucket}/forml/{PROJECT}/0.1/states/'
    for sid, payload in zip(sids, payloads, strict=True):
        s3server.reset_counts()
        assert reader.read(PROJECT, '0.1', 1, sid) == payload
        assert s3server.count(method='GET', path_prefix=states) == 1  # its object or its pack, once
    # the state alone, then per packed state its pack (evicted after the first read: fetched again for the second);
    # a packed state is cut from its pack in memory, no blob of its own
    assert len(evicted) == 3 and all(evicted)
    s3server.reset_counts()  # the package, evicted as the install is about to extract it
    assert (reader.mount(PROJECT, '0.1').path / 'demo' / '__init__.py').is_file()
    assert [r.method for r in s3server.requests if r.path.endswith('.4ml')] == ['GET']
    assert len(evicted) == 4 and all(evicted)
