"""Model aliases (``forml_s3.runtime.aliases``, ``forml-s3 alias``): compare-and-swap moves, history, live targets only,
retention keeps aliased generations - on memory, local disk and S3 (moto's HTTP server), with real racing
processes and the real CLI."""

import json
import os
import subprocess
import sys

import forml
import pytest

from forml_s3 import storage
from forml_s3.registry import Registry
from forml_s3.runtime import aliases, retention

from .helpers import PROJECT, commit, run_cli, s3_options
from .test_concurrency import RACERS, ROOT, Crowd


@pytest.fixture
def trained(registry, package_factory) -> Registry:
    """A registry with three generations of release 0.1."""
    registry.push(package_factory('0.1'))
    for generation in (1, 2, 3):
        commit(registry, generation)
    return registry


def test_set_get_move_and_history(trained):
    champion = trained.aliases.set(PROJECT, 'champion', '0.1', 2)
    assert champion.target == aliases.Target('0.1', 2)
    assert trained.aliases.resolve(PROJECT, 'champion') == aliases.Target('0.1', 2)
    trained.aliases.set(PROJECT, 'champion', '0.1', 3)
    trained.aliases.set(PROJECT, 'champion', '0.1', 3)  # already there: no new history entry
    trained.aliases.set(PROJECT, 'challenger', '0.1', 1)
    assert [(a.name, str(a.target)) for a in trained.aliases.live(PROJECT)] == [
        ('challenger', '0.1#1'),
        ('champion', '0.1#3'),
    ]
    history = trained.aliases.history(PROJECT, 'champion')
    assert [(h['from'], h['to']) for h in history] == [
        (None, {'release': '0.1', 'generation': 2}),
        ({'release': '0.1', 'generation': 2}, {'release': '0.1', 'generation': 3}),
    ]
    assert all('@' in h['by'] and h['when'] for h in history)


def test_remove_keeps_history_and_set_brings_it_back(trained):
    trained.aliases.set(PROJECT, 'champion', '0.1', 1)
    trained.aliases.remove(PROJECT, 'champion')
    with pytest.raises(forml.MissingError, match='was removed'):
        trained.aliases.get(PROJECT, 'champion')
    assert trained.aliases.live(PROJECT) == []
    trained.aliases.set(PROJECT, 'champion', '0.1', 2)
    assert [h['to'] for h in trained.aliases.history(PROJECT, 'champion')] == [
        {'release': '0.1', 'generation': 1},
        None,
        {'release': '0.1', 'generation': 2},
    ]


def test_only_live_generations(trained):
    with pytest.raises(forml.MissingError, match='Generation 9 of .* does not exist'):
        trained.aliases.set(PROJECT, 'champion', '0.1', 9)
    retention.retire(trained._store, trained._layout, PROJECT, '0.1', keep=2)
    with pytest.raises(forml.MissingError, match='Generation 1 of .* is retired'):
        trained.aliases.set(PROJECT, 'champion', '0.1', 1)
    with pytest.raises(forml.MissingError, match='No alias'):
        trained.aliases.get(PROJECT, 'champion')


def test_bad_names_are_refused(trained):
    for name in ('', '1st', 'a/b', '../x', 'x' * 64, 'has space'):
        with pytest.raises(forml.InvalidError, match='Invalid alias name'):
            trained.aliases.set(PROJECT, name, '0.1', 1)


def test_expect_and_lost_swaps_write_nothing(trained, make_registry):
    trained.aliases.set(PROJECT, 'champion', '0.1', 1)
    other = make_registry()
    seen = other.aliases.read(PROJECT, 'champion')
    trained.aliases.set(PROJECT, 'champion', '0.1', 2)  # moves it after `other` read it
    with pytest.raises(aliases.Conflict, match=r'changed by another writer meanwhile: it now points to 0\.1#2'):
        other.aliases.swap(PROJECT, 'champion', seen, aliases.Target('0.1', 3))
    with pytest.raises(aliases.Conflict, match=r'points to 0\.1#2, not 0\.1#1 as expected'):
        other.aliases.set(PROJECT, 'champion', '0.1', 3, expect=aliases.Target('0.1', 1))
    with pytest.raises(aliases.Conflict, match='points to 0.1#2, not nothing'):
        other.aliases.set(PROJECT, 'champion', '0.1', 3, expect=None)
    assert trained.aliases.resolve(PROJECT, 'champion') == aliases.Target('0.1', 2)
    assert len(trained.aliases.history(PROJECT, 'champion')) == 2


def test_retention_never_retires_an_aliased_generation(trained):
    trained.aliases.set(PROJECT, 'champion', '0.1', 1)
    plan = retention.plan(trained._store, trained._layout, PROJECT, '0.1', keep=1)
    assert plan.retired == [2] and plan.aliased == [1] and plan.kept == [1, 3]
    assert retention.retire(trained._store, trained._layout, PROJECT, '0.1', keep=1) == [2]
    assert sorted(int(g) for g in trained.generations(PROJECT, '0.1')) == [1, 3]
    assert trained.aliases.resolve(PROJECT, 'champion') == aliases.Target('0.1', 1)


def test_a_store_without_compare_and_swap_refuses_aliases(tmp_path):
    st = storage.open_store(f'ftp://{tmp_path.name}/x', single_writer=True)
    with pytest.raises(forml.InvalidError, match='cannot update an object only if it is unchanged'):
        st.replace('x/y', b'{}', None)


@pytest.mark.parametrize('backend', ['file', 's3'])
def test_racing_processes_leave_one_winner_and_a_complete_history(make_registry, package_factory, tmp_path):
    """8 processes read the alias, then move it at once from what they read: the store's compare-and-swap lets
    exactly one through, whatever the timing, and the history shows exactly that one change."""
    reg = make_registry()
    reg.push(package_factory('0.1'))
    for generation in range(1, RACERS + 2):
        commit(reg, generation)
    reg.aliases.set(PROJECT, 'champion', '0.1', 1)
    crowd = Crowd(tmp_path, make_registry.url, make_registry.options)
    for i in range(RACERS):
        crowd.spawn('alias-race', f'r{i}', '--generation', str(i + 2))
    crowd.start()
    results = crowd.results()
    winners = [r for r in results if r['won']]
    assert len(winners) == 1, results
    assert all('changed by another writer meanwhile' in r['error'] for r in results if not r['won'])
    history = make_registry().aliases.history(PROJECT, 'champion')
    assert len(history) == 2 and history[0]['to'] == {'release': '0.1', 'generation': 1}
    winner = int(winners[0]['name'][1:]) + 2
    assert history[1] == {**history[1], 'from': history[0]['to'], 'to': {'release': '0.1', 'generation': winner}}


def test_cli_round_trip_and_exit_codes(s3server, bucket, package_factory, tmp_path):
    url = f's3://{bucket}/forml'
    reg = Registry(url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'c')
    reg.push(package_factory('0.1'))
    for generation in (1, 2):
        commit(reg, generation)
    opts = ['-u', url, *s3_options(s3server, '-o')]
    done = run_cli('alias', 'set', PROJECT, 'champion', '0.1', '1', *opts)
    assert done.exit_code == 0 and f'{PROJECT} champion -> 0.1#1' in done.output, done.output
    done = run_cli('alias', 'set', PROJECT, 'champion', '0.1', '2', '--expect', '0.1#1', '--json', *opts)
    assert done.exit_code == 0 and json.loads(done.stdout)['target'] == {'release': '0.1', 'generation': 2}
    lost = run_cli('alias', 'set', PROJECT, 'champion', '0.1', '1', '--expect', '0.1#1', *opts)
    assert lost.exit_code == 1 and 'points to 0.1#2, not 0.1#1 as expected' in lost.output
    missing = run_cli('alias', 'set', PROJECT, 'champion', '0.1', '7', *opts)
    assert missing.exit_code == 2 and 'Generation 7 of demo-proj-0.1 does not exist' in missing.output
    done = run_cli('alias', 'get', PROJECT, 'champion', '--json', *opts)
    assert json.loads(done.stdout)['target'] == {'release': '0.1', 'generation': 2}
    listed = run_cli('alias', 'ls', PROJECT, *opts)
    assert listed.stdout.startswith(f'{PROJECT} champion -> 0.1#2 (set by ')
    history = run_cli('alias', 'history', PROJECT, 'champion', '--json', *opts)
    assert [json.loads(line)['to'] for line in history.stdout.splitlines()] == [
        {'release': '0.1', 'generation': 1},
        {'release': '0.1', 'generation': 2},
    ]
    assert run_cli('alias', 'rm', PROJECT, 'champion', *opts).exit_code == 0
    gone = run_cli('alias', 'get', PROJECT, 'champion', *opts)
    assert gone.exit_code == 2 and 'was removed' in gone.output
    bad = run_cli('alias', 'set', PROJECT, 'champion', '0.1', '1', '--expect', 'nonsense', *opts)
    assert bad.exit_code == 2 and 'expected RELEASE#GENERATION' in bad.output


def test_cli_uses_the_forml_config_registry(s3server, bucket, package_factory, tmp_path):
    """No --url: the default [REGISTRY] section of $FORML_HOME/config.toml (a subprocess: ForML reads it on
    import), and a clear line when there is none."""
    url = f's3://{bucket}/forml'
    reg = Registry(url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'c')
    reg.push(package_factory('0.1'))
    commit(reg, 1)
    home = tmp_path / 'home'
    home.mkdir()
    options = ', '.join(f'{k} = {json.dumps(v)}' for k, v in s3server.storage_options().items() if isinstance(v, str))
    (home / 'config.toml').write_text(
        f'[REGISTRY]\ndefault = "bucket"\npath = ["forml_s3.registry"]\n\n'
        f'[REGISTRY.bucket]\nprovider = "s3"\nurl = "{url}"\nstorage_options = {{ {options} }}\n'
    )
    env = {**os.environ, **s3server.client_env(), 'FORML_HOME': str(home)}
    cli = [sys.executable, '-c', 'from forml_s3.cli import main; main()', 'alias']  # this checkout's package
    done = subprocess.run(
        [*cli, 'set', PROJECT, 'champion', '0.1', '1'], env=env, cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0 and 'champion -> 0.1#1' in done.stdout, done.stderr
    other = subprocess.run(
        [*cli, 'get', PROJECT, 'champion', '--registry', 'nope'],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert other.returncode == 2 and 'No registry section [REGISTRY.nope]' in other.stderr, other.stderr
