"""One release per PEP 440 version: equal spellings (``2``, ``2.0``, ``2.0.0``) contend for one marker key.

Racers are real processes (``tests/workers.py``) with their own caches, pushing at one start signal, on local disk
and on moto's S3 server over HTTP. Registries written before canonical keys (marker ``releases/1.0.0.json``)
keep working under any spelling.
"""

import json
import types

import pytest
from forml.io import asset

from forml_s3.model import layout, names
from forml_s3.registry import Conflict, Registry

from . import conftest
from .helpers import PROJECT, commit, run_cli, s3_options
from .test_concurrency import Crowd

SPELLINGS = ('2.0', '2.0.0')


@pytest.fixture(params=['file', 's3'])
def where(request, tmp_path):
    return conftest.registry_url(request.param, tmp_path, request)


def test_canonical_keys():
    assert {names.canonical(v) for v in ('2', '2.0', '2.0.0', '2.0.0.0')} == {'2.0'}
    assert [names.canonical(v) for v in ('0.1', '1.2.0', '1.2.3', '1.0.0rc1', '1!2.0.0.post1+Local.1')] == [
        '0.1',
        '1.2',
        '1.2.3',
        '1.0rc1',
        '1!2.0.post1+local.1',
    ]


def test_equal_versions_pushed_at_once_have_exactly_one_winner(where, tmp_path, package_factory):
    url, options = where
    crowd = Crowd(tmp_path, url, options)
    packages = {spelling: package_factory(spelling, payload=f'pushed as {spelling}') for spelling in SPELLINGS}
    for i, package in enumerate(packages.values()):
        crowd.spawn('push-race', f'racer{i}', '--package', str(package.path))
    crowd.start()
    results = crowd.results()

    winners = [SPELLINGS[int(r['name'].removeprefix('racer'))] for r in results if r['won']]
    assert len(winners) == 1, results
    (winner,) = winners
    reader = Registry(url, storage_options=options, cache_dir=tmp_path / 'reader', listing_ttl=0)
    assert list(reader.releases(PROJECT)) == [asset.Release.Key('2.0')]
    markers = [e.name for e in reader._store.listdir(reader._layout.releases(PROJECT))]
    assert markers == ['2.0.json']  # one marker, under the canonical key
    marker = json.loads(reader._store.read(reader._layout.release_marker(PROJECT, '2.0')))
    assert marker['release'] == winner and marker['manifest']['version'] == winner  # the spelling pushed
    for result in results:
        if not result['won']:
            assert 'was pushed to' in result['error'] or 'already exists' in result['error'], result
            assert f'as {winner}' in result['error'], result  # says which spelling won
    for spelling in SPELLINGS:  # any spelling reaches the one release
        assert reader.pull(PROJECT, spelling).path.read_bytes() == packages[winner].path.read_bytes()


def test_a_registry_written_before_canonical_keys_keeps_working(where, tmp_path, package_factory, monkeypatch):
    url, options = where
    with monkeypatch.context() as old:  # forml-s3 before canonical keys stored a release under its own spelling
        old.setattr(names, 'canonical', lambda version: str(names.release(version)))
        before = Registry(url, storage_options=options, cache_dir=tmp_path / 'before')
        package = package_factory('1.0.0', payload='legacy')
        before.push(package)
        commit(before, 1, payloads=(b'one',), release='1.0.0')
    assert [e.name for e in before._store.listdir(before._layout.releases(PROJECT))] == ['1.0.0.json']

    registry = Registry(url, storage_options=options, cache_dir=tmp_path / 'after', staging=tmp_path / 'staging')
    assert list(registry.releases(PROJECT)) == [asset.Release.Key('1.0.0')]
    for spelling in ('1', '1.0', '1.0.0'):
        assert registry.pull(PROJECT, spelling).path.read_bytes() == package.path.read_bytes()
        assert [int(g) for g in registry.generations(PROJECT, spelling)] == [1]
    with pytest.raises(Conflict, match=r'demo-proj-1\.0 already exists .* \(pushed as 1\.0\.0\)'):
        registry.push(package_factory('1.0', payload='again'))

    _, sids = commit(registry, 2, payloads=(b'two',), release='1')  # into the release's existing directory
    assert registry._store.exists(f'{registry._layout.generations(PROJECT, "1.0.0")}/2{layout.MARKER}')
    assert not registry._store.exists(registry._layout.release_marker(PROJECT, '1.0'))
    fresh = Registry(url, storage_options=options, cache_dir=tmp_path / 'fresh', staging=tmp_path / 'staging')
    assert fresh.read(PROJECT, '1.0', 2, sids[0]) == b'two'
    assert (fresh.mount(PROJECT, '1').path / 'demo' / '__init__.py').read_text().endswith("PAYLOAD = 'legacy'\n")

    cli_options = s3_options(types.SimpleNamespace(storage_options=lambda: options))
    done = run_cli('pin', url, PROJECT, '1.0', '1', *cli_options)  # the operator commands resolve spellings too
    assert done.exit_code == 0 and 'Pinned generation 1 of demo-proj-1.0' in done.output, done.output
    done = run_cli('retire', url, '--keep', '1', '--project', PROJECT, '--release', '1', *cli_options)
    assert done.exit_code == 0 and '0 generations retired' in done.output, done.output
    assert [int(g) for g in fresh.generations(PROJECT, '1.0.0')] == [1, 2]
