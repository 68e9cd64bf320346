"""The Alias, Fallback and Split selectors on real registries: following a moved alias, surviving a registry that
fails (injected 503s on moto's HTTP server), cold starts, weights and sticky assignment."""

import collections
import pickle

import forml
import pytest
from forml.io import asset
from forml.provider.registry.filesystem import posix

from forml_s3 import selector as selector_module
from forml_s3.registry import Registry
from forml_s3.selector import Alias, Fallback, Refreshing, Split

from .helpers import PROJECT, commit


@pytest.fixture
def served(registry, package_factory) -> tuple[Registry, asset.Directory]:
    registry.push(package_factory('0.1'))
    for generation in (1, 2, 3):
        commit(registry, generation, payloads=())
    return registry, asset.Directory(registry)


def generation(instance: asset.Instance) -> int:
    return int(str(instance).rsplit('-', 1)[-1])


def test_alias_follows_a_move_after_the_interval(served, monkeypatch):
    registry, directory = served
    clock = [1000.0]  # the selector's clock, moved by the test: no dependence on how long requests take
    monkeypatch.setattr(selector_module.time, 'monotonic', lambda: clock[0])
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)
    selector = Alias(PROJECT, 'champion', refresh=10)
    first = selector.select(directory, None, None)
    assert generation(first) == 1
    registry.aliases.set(PROJECT, 'champion', '0.1', 3)
    clock[0] += 9.9
    assert selector.select(directory, None, None) is first  # within the interval: no registry call
    clock[0] += 0.2
    assert generation(selector.select(directory, None, None)) == 3
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)  # roll back
    clock[0] += 10
    assert generation(selector.select(directory, None, None)) == 1


def test_unknown_alias_and_foreign_registry_are_clear_errors(served, tmp_path):
    _, directory = served
    with pytest.raises(forml.MissingError, match="No alias 'champion' of project demo-proj"):
        Alias(PROJECT, 'champion').select(directory, None, None)
    with pytest.raises(forml.InvalidError, match='Alias selectors need a forml-s3 registry'):
        Alias(PROJECT, 'champion').select(asset.Directory(posix.Registry(tmp_path / 'posix')), None, None)
    with pytest.raises(forml.InvalidError, match='Invalid alias name'):
        Alias(PROJECT, 'not/a/name')
    with pytest.raises(ValueError, match='negative'):
        Alias(PROJECT, 'champion', refresh=-1)


def test_alias_keeps_serving_while_the_registry_fails(counted, bucket, package_factory, tmp_path):
    """503s on every request (retries included) at refresh time: the last good pick keeps serving."""
    registry = Registry(
        f's3://{bucket}/forml',
        storage_options=counted.storage_options(max_attempts=1, retries=1),
        cache_dir=tmp_path / 'cache',
    )
    registry.push(package_factory('0.1'))
    commit(registry, 1, payloads=())
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)
    directory = asset.Directory(registry)
    selector = Alias(PROJECT, 'champion', refresh=0)
    first = selector.select(directory, None, None)
    fault = counted.inject(503, 'ServiceUnavailable', count=1000, match=lambda call: 'aliases/' in call.path)
    assert selector.select(directory, None, None) is first
    assert fault.fired >= 1, 'the selector did read the alias, and failed'
    counted.clear_faults()


def test_fallback_serves_the_latest_until_the_alias_exists(served):
    registry, directory = served
    selector = Fallback(Alias(PROJECT, 'champion', refresh=0), Refreshing(PROJECT, refresh=0))
    assert generation(selector.select(directory, None, None)) == 3  # cold start: no alias yet
    registry.aliases.set(PROJECT, 'champion', '0.1', 2)
    assert generation(selector.select(directory, None, None)) == 2
    with pytest.raises(forml.MissingError, match='No selector resolved'):
        Fallback(Alias(PROJECT, 'nope'), Alias(PROJECT, 'neither')).select(directory, None, None)
    with pytest.raises(ValueError, match='at least one fallback'):
        Fallback(Alias(PROJECT, 'x'))


def test_split_is_weighted_and_sticky_by_request_key(served):
    registry, directory = served
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)
    registry.aliases.set(PROJECT, 'challenger', '0.1', 2)
    split = Split({'champion': 3, 'challenger': 1}, project=PROJECT, key='user', refresh=60)  # weights sum to 4
    picks = {user: generation(split.select(directory, {'params': {'user': user}}, None)) for user in range(2000)}
    share = collections.Counter(picks.values())
    assert set(share) == {1, 2} and 0.70 < share[1] / 2000 < 0.80, share
    again = Split({'champion': 3, 'challenger': 1}, project=PROJECT, key='user')  # another gateway, another process
    assert all(generation(again.select(directory, {'params': {'user': u}}, None)) == g for u, g in picks.items())
    assert generation(split.select(directory, {'user': 7}, None)) == picks[7]  # a custom descriptor's context


def test_split_without_a_key_draws_at_random(served):
    registry, directory = served
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)
    registry.aliases.set(PROJECT, 'challenger', '0.1', 2)
    split = Split({'champion': 0.5, 'challenger': 0.5}, project=PROJECT)
    drawn = {
        generation(split.select(directory, context, None)) for context in [None, {}, {'params': {'user': ''}}] * 30
    }
    assert drawn == {1, 2}


def test_split_passes_an_unresolved_variant_on(served):
    registry, directory = served
    registry.aliases.set(PROJECT, 'champion', '0.1', 1)
    split = Split({'champion': 0.5, 'challenger': 0.5}, project=PROJECT)  # challenger not set yet
    assert {generation(split.select(directory, {'params': {'user': u}}, None)) for u in range(50)} == {1}


def test_split_refuses_bad_weights():
    for weights, message in (
        ({}, 'at least one variant'),
        ({'champion': 0}, 'positive number'),
        ({'champion': -1, 'challenger': 2}, 'positive number'),
        ({'champion': True}, 'positive number'),
        ({'champion': 1}, 'give the project'),
        ({3: 1.0}, 'neither an alias name nor a selector'),
    ):
        with pytest.raises(ValueError, match=message):
            Split(weights)


def test_selectors_pickle_without_their_picks(served):
    _, directory = served
    split = Split({'champion': 1, Refreshing(PROJECT): 1}, project=PROJECT, key='client')
    clone = pickle.loads(pickle.dumps(Fallback(split, Alias(PROJECT, 'champion', 5))))
    assert repr(clone) == repr(Fallback(split, Alias(PROJECT, 'champion', 5)))
    assert generation(clone.select(directory, {'params': {'client': 'x'}}, None)) == 3
