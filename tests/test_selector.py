"""The Refreshing selector follows new generations after its interval, on a real registry."""

import pickle

import pytest
from forml.io import asset

from forml_s3 import selector as selector_module
from forml_s3.selector import Refreshing

from .helpers import PROJECT, commit


def test_follows_new_generations_after_the_interval(registry, package_factory, monkeypatch):
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=())
    directory = asset.Directory(registry)
    clock = [1000.0]  # the selector's clock, moved by the test: no dependence on how long requests take
    monkeypatch.setattr(selector_module.time, 'monotonic', lambda: clock[0])
    selector = Refreshing(PROJECT, refresh=0.5)
    first = selector.select(directory, None, None)
    assert str(first).endswith('-0.1-1')
    commit(registry, 2, payloads=())
    clock[0] += 0.4
    assert selector.select(directory, None, None) is first  # within the interval: no registry call
    clock[0] += 0.2
    assert str(selector.select(directory, None, None)).endswith('-0.1-2')


def test_picks_the_newest_release_with_a_generation(registry, package_factory):
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=())
    registry.push(package_factory('0.2'))  # no generation yet
    assert str(Refreshing(PROJECT).pick(asset.Directory(registry))).endswith('-0.1-1')
    with pytest.raises(asset.Level.Listing.Empty):
        Refreshing(PROJECT, release='0.2').pick(asset.Directory(registry))


def test_keeps_serving_when_the_registry_fails(registry, package_factory, monkeypatch):
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=())
    directory = asset.Directory(registry)
    selector = Refreshing(PROJECT, refresh=0)
    first = selector.select(directory, None, None)
    monkeypatch.setattr(selector, 'pick', lambda _: (_ for _ in ()).throw(OSError('network down')))
    assert selector.select(directory, None, None) is first


def test_pickles_without_its_cache():
    selector = Refreshing('p', '1.0', 3)
    clone = pickle.loads(pickle.dumps(selector))
    assert repr(clone) == repr(selector) and clone._picked == {}


def serving(make_registry, package_factory):
    """A registry with generation 1, always listed fresh, and a selector re-checking at every request that has
    picked it: (registry, directory, selector, first pick)."""
    registry = make_registry(listing_ttl=0)
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=())
    directory = asset.Directory(registry)
    selector = Refreshing(PROJECT, refresh=0)
    return registry, directory, selector, selector.select(directory, None, None)


def test_survives_the_retirement_of_its_pick(make_registry, package_factory):
    """ForML's own Instance equality re-lists the generation and raises once it is retired; picks compare by name."""
    from forml_s3.runtime import retention

    registry, directory, selector, first = serving(make_registry, package_factory)
    commit(registry, 2, payloads=())
    forml_own = asset.Instance(PROJECT, '0.1', 1, directory)
    assert retention.retire(registry._store, registry._layout, PROJECT, '0.1', keep=1) == [1]
    with pytest.raises(asset.Level.Invalid, match='Invalid level key 1'):
        hash(forml_own)  # what took the gateway down: it hashes the selected instance on every request
    assert hash(first) == hash((PROJECT, '0.1', 1)) and first == first and str(first) == f'{PROJECT}-0.1-1'
    second = selector.select(directory, None, None)
    assert second.name == (PROJECT, '0.1', 2) and second != first
    assert tuple(second.tag.states) == ()  # the new pick is a working ForML instance


def test_drops_a_pick_the_registry_no_longer_has(make_registry, package_factory):
    """Expired (deleted) with nothing newer: the error is raised, never a pick that cannot be read."""
    registry, directory, selector, first = serving(make_registry, package_factory)
    assert first.name == (PROJECT, '0.1', 1)
    registry._store.delete(registry._layout.generation_marker(PROJECT, '0.1', 1))
    with pytest.raises(asset.Level.Listing.Empty, match='No trained generation'):
        selector.select(directory, None, None)
    assert selector._picked == {}
    commit(registry, 2, payloads=())
    assert selector.select(directory, None, None).name == (PROJECT, '0.1', 2)


def test_an_alias_pick_retired_after_the_alias_moved_still_hashes(make_registry, package_factory):
    """Alias (and Split/Fallback over it) return the same name-hashed instances: the old pick, served until the
    next read of the alias, survives its generation's retirement."""
    from forml_s3.runtime import retention
    from forml_s3.selector import Alias, Named

    registry, directory, _, _ = serving(make_registry, package_factory)
    commit(registry, 2, payloads=())
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)
    selector = Alias(PROJECT, 'champion', refresh=3600)
    old = selector.select(directory, None, None)
    registry.aliases.set(PROJECT, 'champion', '0.1', 2)
    assert retention.retire(registry._store, registry._layout, PROJECT, '0.1', keep=1) == [1]
    again = selector.select(directory, None, None)  # within the interval: the old pick, as the gateway gets it
    assert isinstance(again, Named) and again is old and hash(again) == hash((PROJECT, '0.1', 1))
