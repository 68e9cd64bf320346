"""The Refreshing selector follows new generations after its interval, on a real registry."""

import pickle
import time

import pytest
from forml.io import asset

from forml_s3.selector import Refreshing

from .helpers import PROJECT, commit


def test_follows_new_generations_after_the_interval(registry, package_factory):
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=())
    directory = asset.Directory(registry)
    selector = Refreshing(PROJECT, refresh=0.5)
    first = selector.select(directory, None, None)
    assert str(first).endswith('-0.1-1')
    commit(registry, 2, payloads=())
    assert selector.select(directory, None, None) is first  # within the interval: no registry call
    time.sleep(0.6)
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
