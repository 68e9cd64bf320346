"""Operator commands safe to automate (issue 26): typos exit non-zero, ``copy`` keeps pins and its dry run
matches the real run. Each runs the real ``forml-s3`` command and checks what is left in the bucket."""

import uuid

import pytest

from forml_s3.registry import Registry

from . import helpers
from .helpers import PROJECT, s3_options
from .helpers import run_cli as run


@pytest.fixture
def make(s3server, tmp_path):
    """Registries in fresh buckets (the test's view: fresh listings)."""

    def registry() -> Registry:
        url = f's3://{s3server.create_bucket(f"test-{uuid.uuid4().hex[:12]}")}/forml'
        return Registry(url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'cache', listing_ttl=0)

    return registry


@pytest.fixture
def source(make, package_factory) -> Registry:
    registry = make()
    registry.push(package_factory('0.1'))
    for number in (1, 2, 3):
        helpers.commit(registry, number, payloads=(f'{number}'.encode(),))
    return registry


def listing(registry: Registry, prefix: str) -> list[str]:
    return sorted(e.name for e in registry._store.listdir(prefix))


def test_retire_with_a_project_or_release_that_does_not_exist_exits_2(s3server, source):
    options = s3_options(s3server)
    for args, message in (
        (['--project', 'nope'], f'No project nope in {source.url}'),
        (['--project', PROJECT, '--release', '9.9'], f'No release {PROJECT}-9.9 in {source.url}'),
    ):
        done = run('retire', source.url, '--keep', '1', *args, *options)
        assert done.exit_code == 2 and message in done.stderr, done.output
    assert [int(g) for g in source.generations(PROJECT, '0.1')] == [1, 2, 3]  # nothing retired meanwhile
    done = run('retire', source.url, '--keep', '2', '--project', PROJECT, '--release', '0.1', *options)
    assert done.exit_code == 0 and [int(g) for g in source.generations(PROJECT, '0.1')] == [2, 3]


def test_pin_of_something_that_does_not_exist_exits_2(s3server, source):
    options = s3_options(s3server)
    for args, message in (
        (['nope', '7.7'], f'No project nope in {source.url}'),
        ([PROJECT, '7.7'], f'No release {PROJECT}-7.7'),
        ([PROJECT, '0.1', '9'], f'Generation 9 of {PROJECT}-0.1 does not exist'),
        ([PROJECT, '0.1', '9', '--remove'], f'Generation 9 of {PROJECT}-0.1 is not pinned'),
    ):
        done = run('pin', source.url, *args, *options)
        assert done.exit_code == 2 and message in done.stderr, done.output
    assert listing(source, source._layout.pinned(PROJECT, '0.1')) == []
    assert run('pin', source.url, PROJECT, '0.1', '2', *options).exit_code == 0
    assert listing(source, source._layout.pinned(PROJECT, '0.1')) == ['2.json']


def test_copy_keeps_pins_between_forml_s3_registries_and_says_when_it_cannot(s3server, source, make, tmp_path):
    options = s3_options(s3server)
    assert run('pin', source.url, PROJECT, '0.1', '1', '--note', 'audited', *options).exit_code == 0
    target = make()
    copy_options = [*s3_options(s3server, '--src-option'), *s3_options(s3server, '--dst-option')]

    dry = run('copy', '--dry-run', source.url, target.url, *copy_options)
    assert dry.exit_code == 0 and f'pin       pin of {PROJECT}-0.1 generation 1' in dry.stdout
    done = run('copy', source.url, target.url, *copy_options)
    assert done.exit_code == 0 and '4 copied, 0 skipped (already there), 1 pinned, 0 failed' in done.stdout
    assert listing(target, target._layout.pinned(PROJECT, '0.1')) == ['1.json']
    assert b'"note": "audited"' in target._store.read(target._layout.pin_marker(PROJECT, '0.1', 1))
    again = run('copy', source.url, target.url, *copy_options)
    assert again.exit_code == 0 and ' pinned' not in again.stdout.splitlines()[-1]
    # the pin protects the copy from retirement there, as at the source
    assert run('retire', target.url, '--keep', '1', *options).exit_code == 0
    assert [int(g) for g in target.generations(PROJECT, '0.1')] == [1, 3]

    posix = run('copy', source.url, str(tmp_path / 'posix'), *s3_options(s3server, '--src-option'))
    assert posix.exit_code == 0
    assert f'skip      pin of {PROJECT}-0.1 generation 1: pin not copied' in posix.stdout
    assert 'keeps no pins (ForML posix)' in posix.stdout


def test_copy_dry_run_matches_the_real_run_onto_retired_and_newer_releases(s3server, source, make, package_factory):
    copy_options = [*s3_options(s3server, '--src-option'), *s3_options(s3server, '--dst-option')]
    target = make()
    assert run('copy', source.url, target.url, *copy_options).exit_code == 0
    assert run('retire', target.url, '--keep', '1', *s3_options(s3server)).exit_code == 0  # retires 1 and 2 there
    live = listing(target, target._layout.generations(PROJECT, '0.1'))

    dry = run('copy', '--dry-run', source.url, target.url, *copy_options)
    assert dry.exit_code == 0
    for number in (1, 2):
        assert f'skip      {PROJECT}-0.1 generation {number}: retired at forml-s3:{target.url}' in dry.stdout
    assert 'copy ' not in dry.stdout and dry.stdout.splitlines()[-1] == '0 to copy, 4 already there'
    done = run('copy', source.url, target.url, *copy_options)
    assert done.exit_code == 0 and '0 copied, 4 skipped (already there), 0 failed' in done.stdout
    assert f'{PROJECT}-0.1 generation 2: retired at' in done.stdout
    assert listing(target, target._layout.generations(PROJECT, '0.1')) == live  # no retired number committed again
    assert [int(g) for g in target.generations(PROJECT, '0.1')] == [3]

    # a release older than the destination's newest: the dry run reports the conflict the real run meets
    older = make()
    older.push(package_factory('0.2'))
    dry = run('copy', '--dry-run', source.url, older.url, *copy_options)
    assert f'conflict  {PROJECT}-0.1: Release {PROJECT}-0.1 is older than {PROJECT}-0.2 at' in dry.stdout
    done = run('copy', source.url, older.url, *copy_options)
    assert done.exit_code == 1 and f'FAILED: Release {PROJECT}-0.1 is older' in done.stderr
    assert [str(r) for r in older.releases(PROJECT)] == ['0.2']
    assert not older._store.listdir(older._layout.states(PROJECT, '0.1'))
