"""The shared staging path: concurrent mounts, re-mounts from the warm cache, and ``forml-s3 staging ls/prune``.

Mounts go through the real ``Registry.mount`` (file:// registries where the bucket does not matter, moto's
HTTP server where requests are counted). Ages are set by moving a stamp's mtime back, never by waiting; the
prune-versus-mount interleavings are forced with events, not timings.
"""

import contextlib
import hashlib
import json
import multiprocessing
import os
import pathlib
import shutil
import threading
import time
import traceback
import types
import zipfile

import pytest
from click.testing import CliRunner

from forml_s3.cli import main
from forml_s3.registry import Registry
from forml_s3.runtime import cache, staging

from .helpers import PROJECT

DAY = 86400.0
RACERS = 8


def tree(path: pathlib.Path) -> dict[str, str]:
    """sha256 of every file of an installed tree by relative path (the stamp left out)."""
    return {
        str(file.relative_to(path)): hashlib.sha256(file.read_bytes()).hexdigest()
        for file in sorted(path.rglob('*'))
        if file.is_file() and file.name != staging.STAMP
    }


def contents(package: pathlib.Path) -> dict[str, str]:
    """sha256 of every file in a package (what a complete tree holds)."""
    with zipfile.ZipFile(package) as archive:
        return {
            name: hashlib.sha256(archive.read(name)).hexdigest()
            for name in archive.namelist()
            if not name.endswith('/')
        }


def age(path: pathlib.Path, days: float) -> None:
    """Make the tree at ``path`` look last mounted ``days`` days ago."""
    when = time.time() - days * DAY
    os.utime(path / staging.STAMP, (when, when))


def snapshot(root: pathlib.Path) -> dict[str, tuple[int, float]]:
    """Every file and directory under ``root`` with size and mtime (to show nothing changed)."""
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime) for p in sorted(root.rglob('*'))}


def staging_cli(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, ['staging', *args], env=env, catch_exceptions=False)


@pytest.fixture
def local(tmp_path, package_factory):
    """A file:// registry holding demo-proj 0.1 and 0.2 and other-proj 1.0, all mounted into one staging path;
    ``packages`` are their package files by (project, release)."""
    registry = Registry(f'file://{tmp_path}/registry', staging=tmp_path / 'staging', cache_dir=tmp_path / 'cache')
    packages, trees = {}, {}
    for project, release in ((PROJECT, '0.1'), (PROJECT, '0.2'), ('other-proj', '1.0')):
        package = package_factory(release, project=project, payload=f'{project} {release}')
        registry.push(package)
        trees[project, release] = registry.mount(project, release).path
        # a copy: helpers.PackageFactory writes 0.1 and 0.2 of a project to the same file (Path.with_suffix)
        packages[project, release] = shutil.copy(package.path, tmp_path / f'{project}-{release}.4ml')
    staging.LEASES_HELD.release()  # as if the mounting processes had exited: pruning goes by age alone
    return types.SimpleNamespace(registry=registry, packages=packages, trees=trees, root=tmp_path / 'staging')


# concurrent mounts ----------------------------------------------------------------------------------------------
def mount_and_read(url: str, options: dict, cache_dir: str, staging_dir: str, start, results) -> None:
    """One racer (a spawned process, as on its own machine): mount at the start signal, then read the whole tree."""
    try:
        registry = Registry(url, storage_options=options, cache_dir=cache_dir, staging=staging_dir)
        start.wait(timeout=120)
        artifact = registry.mount(PROJECT, '0.1')
        stamp = json.loads((artifact.path / staging.STAMP).read_text())
        results.put({'path': str(artifact.path), 'tree': tree(artifact.path), 'sha256': stamp['sha256']})
    except BaseException:  # reported to the test as the racer's failure
        results.put({'error': traceback.format_exc()})


def test_eight_processes_mounting_at_once_each_see_the_complete_tree_from_one_download(
    embedded_server, s3server, bucket, tmp_path, package_factory
):
    """Stronger than test_concurrency's: every racer reads back every file of the tree as mount returns it."""
    url, options = f's3://{bucket}/forml', s3server.storage_options()
    package = package_factory('0.1', payload='x' * 100_000, data=os.urandom(300_000))
    Registry(url, storage_options=options, cache_dir=tmp_path / 'pusher').push(package)
    expected, sha256 = contents(package.path), cache.sha256_of(package.path)[1]
    assert len(expected) >= 3  # module, data file, ForML's manifest

    shared = tmp_path / 'shared-staging'
    context = multiprocessing.get_context('spawn')
    start, results = context.Barrier(RACERS + 1), context.Queue()
    racers = [
        context.Process(
            target=mount_and_read,
            args=(url, options, str(tmp_path / f'cache-{i}'), str(shared), start, results),
        )
        for i in range(RACERS)
    ]
    for racer in racers:
        racer.start()
    s3server.reset_counts()
    start.wait(timeout=180)  # all racers imported and ready: released together
    outcomes = [results.get(timeout=180) for _ in racers]
    for racer in racers:
        racer.join(timeout=60)

    assert [o.get('error') for o in outcomes] == [None] * RACERS, outcomes
    target = staging.target(shared, PROJECT, '0.1', sha256)
    assert {o['path'] for o in outcomes} == {str(target)}
    assert all(o['tree'] == expected and o['sha256'] == sha256 for o in outcomes)
    assert tree(target) == expected
    package_gets = [r for r in s3server.requests if r.method == 'GET' and r.path.endswith('.4ml')]
    assert len(package_gets) == 1, package_gets
    assert staging.leftovers(shared) == []
    assert sorted(p.name for p in (shared / PROJECT).iterdir()) == ['.leases', '.locks', target.name]


# re-mounts from the warm cache ----------------------------------------------------------------------------------
def test_remount_into_an_empty_staging_path_transfers_no_package_bytes(
    embedded_server, s3server, bucket, tmp_path, package_factory
):
    """The blob cache is warm, the staging tree is gone (pruned, or a fresh staging path): no package GET."""
    url, options = f's3://{bucket}/forml', s3server.storage_options()
    package = package_factory('0.1', data=os.urandom(200_000))
    Registry(url, storage_options=options, cache_dir=tmp_path / 'pusher').push(package)

    def mount(staging_dir: pathlib.Path) -> pathlib.Path:
        registry = Registry(url, storage_options=options, cache_dir=tmp_path / 'cache', staging=staging_dir)
        return registry.mount(PROJECT, '0.1').path

    s3server.reset_counts()
    first = mount(tmp_path / 'staging')
    downloaded = [r for r in s3server.requests if r.path.endswith('.4ml')]
    assert len(downloaded) == 1 and downloaded[0].bytes_out >= 200_000

    age(first, 40)
    staging.LEASES_HELD.release()  # as if the mounting process had exited
    assert [p.action for p in staging.prune(tmp_path / 'staging', 30 * DAY)] == [staging.Pruned.PRUNED]
    assert not first.exists()
    s3server.reset_counts()
    again, elsewhere = mount(tmp_path / 'staging'), mount(tmp_path / 'other-staging')
    assert [r for r in s3server.requests if r.path.endswith('.4ml')] == []
    assert sum(r.bytes_out for r in s3server.requests) < 10_000  # listings and markers only
    assert tree(again) == tree(elsewhere) == contents(package.path)


def test_installed_tree_is_readable_by_other_users(tmp_path, package_factory):
    """The tree's root gets the umask's permissions, not mkdtemp's 0700 (other runners' users must read it)."""
    umask = os.umask(0o022)
    try:
        path = staging.install(package_factory('0.1').path, 'f' * 64, tmp_path / 'staging' / PROJECT / '0.1')
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o755


# forml-s3 staging ls --------------------------------------------------------------------------------------------
def test_ls_lists_the_staged_releases(local):
    done = staging_cli('ls', str(local.root))
    assert done.exit_code == 0, done.output
    lines = done.output.splitlines()
    assert lines[0] == f'Staging {local.root}'
    rows = [line.split() for line in lines[2:-1]]
    assert [row[:2] for row in rows] == [[PROJECT, '0.1'], [PROJECT, '0.2'], ['other-proj', '1.0']]
    for row, package in zip(rows, local.packages.values(), strict=True):
        assert row[-2:] == [cache.sha256_of(package)[1][:12], '-']  # sha256, in use by no process
    assert lines[-1].startswith('3 releases staged (') and lines[-1].endswith('), 0 in use, 0 leftovers')

    as_json = json.loads(staging_cli('ls', str(local.root), '--json').output)
    assert as_json['staging'] == str(local.root) and as_json['leftovers'] == []
    assert [(r['project'], r['release'], r['sha256']) for r in as_json['releases']] == [
        (project, release, cache.sha256_of(package)[1]) for (project, release), package in local.packages.items()
    ]
    for release, package in zip(as_json['releases'], local.packages.values(), strict=True):
        with zipfile.ZipFile(package) as archive:  # the files plus the stamp
            assert release['size'] > sum(info.file_size for info in archive.infolist()) > 0
    assert all(0 <= r['age_days'] < 1 for r in as_json['releases'])


def test_ls_defaults_to_the_registry_default_staging_under_xdg_cache_home(tmp_path, package_factory, monkeypatch):
    monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path / 'xdg'))
    registry = Registry(f'file://{tmp_path}/registry')  # no staging, no cache_dir: the defaults
    registry.push(package_factory('0.1'))
    assert registry.mount(PROJECT, '0.1').path.parent == tmp_path / 'xdg' / 'forml-s3' / 'staging' / PROJECT
    done = staging_cli('ls', '--json', env={'XDG_CACHE_HOME': str(tmp_path / 'xdg')})
    listed = json.loads(done.output)
    assert listed['staging'] == str(tmp_path / 'xdg' / 'forml-s3' / 'staging')
    assert [(r['project'], r['release']) for r in listed['releases']] == [(PROJECT, '0.1')]


def test_ls_of_a_missing_path_says_so_and_of_a_file_fails(tmp_path):
    done = CliRunner().invoke(main, ['staging', 'ls', str(tmp_path / 'nowhere')])
    assert done.exit_code == 0 and 'does not exist' in done.output and '0 releases staged' in done.output
    (tmp_path / 'file').write_text('')
    done = CliRunner().invoke(main, ['staging', 'ls', str(tmp_path / 'file')])
    assert done.exit_code == 2, done.output


def test_staging_help_shows_examples():
    for args in ([], ['ls'], ['prune']):
        done = staging_cli(*args, '--help')
        assert done.exit_code == 0 and 'Examples:' in done.output and 'forml-s3 staging' in done.output


# forml-s3 staging prune -----------------------------------------------------------------------------------------
def test_prune_removes_only_releases_older_than_days(local):
    old, recent, fresh = (local.trees[PROJECT, '0.1'], local.trees[PROJECT, '0.2'], local.trees['other-proj', '1.0'])
    age(old, 40)
    age(recent, 10)
    done = staging_cli('prune', str(local.root), '--older-than', '30')
    assert done.exit_code == 0, done.output
    assert done.output.splitlines()[0].startswith(f'pruned {PROJECT} 0.1 (last used ')
    assert done.output.splitlines()[-1].startswith('1 releases not mounted for 30 days and 0 leftovers pruned (')
    assert not old.exists()
    assert staging.leftovers(local.root) == []
    assert tree(recent) == contents(local.packages[PROJECT, '0.2'])
    assert tree(fresh) == contents(local.packages['other-proj', '1.0'])
    assert [(r['project'], r['release']) for r in staging.staged(local.root)] == [
        (PROJECT, '0.2'),
        ('other-proj', '1.0'),
    ]
    assert (local.root / PROJECT / staging.LOCKS / f'{old.name}.lock').exists()  # lock files stay: see staging.locked

    again = staging_cli('prune', str(local.root), '--older-than', '30', '--json')
    assert json.loads(again.output) == []
    assert local.registry.mount(PROJECT, '0.1').path == old and tree(old) == contents(local.packages[PROJECT, '0.1'])


def test_prune_dry_run_removes_nothing(local):
    age(local.trees[PROJECT, '0.1'], 40)
    age(local.trees[PROJECT, '0.2'], 50)
    leftover = local.root / PROJECT / '.0.2.0123456789ab.trash'
    (leftover / 'demo').mkdir(parents=True)
    before = snapshot(local.root)
    done = staging_cli('prune', str(local.root), '--older-than', '30', '--dry-run')
    assert done.exit_code == 0, done.output
    assert snapshot(local.root) == before
    lines = done.output.splitlines()
    assert lines[0].startswith(f'would prune {PROJECT} 0.1 (last used ')
    assert lines[1].startswith(f'would prune {PROJECT} 0.2 (last used ')
    assert lines[2] == f'would prune leftover {leftover} (0 B)'
    assert lines[-1].startswith('2 releases not mounted for 30 days and 1 leftovers would be pruned (')


def test_prune_removes_leftovers_of_killed_installers_but_not_a_live_install(local):
    project = local.root / PROJECT
    dead = project / '.0.1.deadbeef0001.incomplete'
    trash = project / '.0.1.deadbeef0002.trash'
    live = project / '.0.2.deadbeef0003.incomplete'  # an install in progress: just created
    for path in (dead, trash, live):
        (path / 'demo').mkdir(parents=True)
        (path / 'demo' / '__init__.py').write_text('partial')
    os.utime(dead, (time.time() - 2 * 3600,) * 2)
    foreign = project / 'not-ours'  # no stamp: never installed by forml-s3
    foreign.mkdir()
    os.utime(foreign, (time.time() - 90 * DAY,) * 2)

    done = json.loads(staging_cli('prune', str(local.root), '--older-than', '0', '--json').output)
    assert sorted((d['path'], d['action'], d['leftover']) for d in done) == sorted(
        [(str(dead), 'pruned', True), (str(trash), 'pruned', True)]
    )
    assert not dead.exists() and not trash.exists()
    assert live.exists() and foreign.exists()
    assert len(staging.staged(local.root)) == 3  # mounted just now: within the grace period even at 0 days


def test_prune_renames_aside_before_deleting(local, monkeypatch):
    """Deletion never starts at the target: it is renamed aside whole, so a runner finds a complete tree or none."""
    target = local.trees[PROJECT, '0.1']
    expected = contents(local.packages[PROJECT, '0.1'])
    age(target, 40)
    deleting = []
    real_rmtree = shutil.rmtree

    def spy(path, *args, **kwargs):
        path = pathlib.Path(path)
        deleting.append((path, target.exists(), tree(path)))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(staging.shutil, 'rmtree', spy)
    pruned = staging.prune(local.root, 30 * DAY)
    assert [(p.action, p.path) for p in pruned] == [('pruned', str(target))]
    assert len(deleting) == 1
    aside, target_existed, held = deleting[0]
    assert aside.parent == target.parent and aside.name.startswith(f'.{target.name}.') and aside.name.endswith('.trash')
    assert not target_existed and held == expected
    assert not aside.exists() and not target.exists()


def test_prune_that_waited_for_a_mount_keeps_the_release(local, monkeypatch):
    """The prune scans (release unused for 40 days), then waits for the install lock a mount holds; the mount
    records its use under the lock, so the prune's re-check finds it fresh and keeps it."""
    target = local.trees[PROJECT, '0.1']
    sha256 = cache.sha256_of(local.packages[PROJECT, '0.1'])[1]
    age(target, 40)
    mount_holds_lock, prune_waits = threading.Event(), threading.Event()
    real_locked, real_installed = staging.locked, staging.installed

    @contextlib.contextmanager
    def locked(path):
        if threading.current_thread().name == 'pruner':
            prune_waits.set()  # scanned already; about to wait for the lock
        with real_locked(path):
            yield

    def installed(path, sha):
        mount_holds_lock.set()
        assert prune_waits.wait(60), 'the prune never asked for the lock'
        return real_installed(path, sha)

    monkeypatch.setattr(staging, 'locked', locked)
    monkeypatch.setattr(staging, 'installed', installed)
    fetched = []
    mounter = threading.Thread(
        target=lambda: staging.ensure(target, sha256, lambda _landed: fetched.append(1)), name='mounter', daemon=True
    )
    mounter.start()
    assert mount_holds_lock.wait(60)
    outcome = []
    pruner = threading.Thread(
        target=lambda: outcome.extend(staging.prune(local.root, 30 * DAY)), name='pruner', daemon=True
    )
    pruner.start()
    mounter.join(60)
    pruner.join(60)
    assert not mounter.is_alive() and not pruner.is_alive()
    assert [(p.action, p.path) for p in outcome] == [('kept', str(target))]
    assert fetched == []  # the tree was there: nothing fetched
    assert tree(target) == contents(local.packages[PROJECT, '0.1'])
    assert staging.leftovers(local.root) == []


def test_mount_that_waited_for_a_prune_installs_again(local, monkeypatch):
    """The other order: the prune holds the lock and removes the tree; the mount waiting for the lock then finds
    it gone and installs it again (from the package it fetches), complete."""
    target = local.trees[PROJECT, '0.1']
    package = local.packages[PROJECT, '0.1']
    sha256 = cache.sha256_of(package)[1]
    age(target, 40)
    prune_holds_lock, mount_waits = threading.Event(), threading.Event()
    real_locked, real_last_use = staging.locked, staging.last_use

    @contextlib.contextmanager
    def locked(path):
        if threading.current_thread().name == 'mounter':
            mount_waits.set()  # about to wait for the lock the prune holds
        with real_locked(path):
            yield

    def last_use(path):  # the prune's re-check, under the lock
        prune_holds_lock.set()
        assert mount_waits.wait(60), 'the mount never asked for the lock'
        return real_last_use(path)

    monkeypatch.setattr(staging, 'locked', locked)
    monkeypatch.setattr(staging, 'last_use', last_use)
    outcome, fetched, mounted = [], [], []
    pruner = threading.Thread(
        target=lambda: outcome.extend(staging.prune(local.root, 30 * DAY)), name='pruner', daemon=True
    )
    pruner.start()
    assert prune_holds_lock.wait(60)

    def fetch(_landed):
        fetched.append(tree(target) if target.exists() else None)  # what the mount finds once it has the lock
        return package, sha256

    mounter = threading.Thread(
        target=lambda: mounted.append(staging.ensure(target, sha256, fetch)), name='mounter', daemon=True
    )
    mounter.start()
    pruner.join(60)
    mounter.join(60)
    assert not mounter.is_alive() and not pruner.is_alive()
    assert [(p.action, p.path) for p in outcome] == [('pruned', str(target))]
    assert fetched == [None] and mounted == [target]
    assert tree(target) == contents(package) and staging.installed(target, sha256)
    assert staging.leftovers(local.root) == []


def test_registry_mount_never_returns_a_tree_a_prune_deletes(local, monkeypatch):
    """``Registry.mount`` of an installed release records its use under the install lock.

    Forced interleaving: the mount has found the tree installed and is about to record its use when a prune
    scans (unused for 40 days). If the mount holds the lock there, the prune waits and then finds the fresh use:
    kept. A mount that checked and touched without the lock would let the prune delete the tree under it and
    then fail reading the manifest (or return a path that is gone).
    """
    target = local.trees[PROJECT, '0.1']
    age(target, 40)
    at_touch, prune_waits, prune_done = threading.Event(), threading.Event(), threading.Event()
    holding = threading.local()
    real_locked, real_touch = staging.locked, staging.touch

    @contextlib.contextmanager
    def locked(path):
        if threading.current_thread().name == 'pruner':
            prune_waits.set()
        with real_locked(path):
            holding.lock = True
            try:
                yield
            finally:
                holding.lock = False

    def touch(path):
        if threading.current_thread().name == 'mounter':
            at_touch.set()
            if getattr(holding, 'lock', False):
                assert prune_waits.wait(60), 'the prune never asked for the lock'
            else:  # touching without the lock: nothing stops the prune
                assert prune_done.wait(60), 'the prune did not finish'
        real_touch(path)

    monkeypatch.setattr(staging, 'locked', locked)
    monkeypatch.setattr(staging, 'touch', touch)
    outcome, mounted, failed = [], [], []

    def mount():
        try:
            mounted.append(local.registry.mount(PROJECT, '0.1').path)
        except Exception as err:  # the test reports it
            failed.append(repr(err))

    def prune():
        outcome.extend(staging.prune(local.root, 30 * DAY))
        prune_done.set()

    mounter = threading.Thread(target=mount, name='mounter', daemon=True)
    mounter.start()
    assert at_touch.wait(60)
    pruner = threading.Thread(target=prune, name='pruner', daemon=True)
    pruner.start()
    mounter.join(60)
    pruner.join(60)
    assert failed == [] and mounted == [target], failed
    assert tree(target) == contents(local.packages[PROJECT, '0.1']), 'mount returned a tree the prune deleted'
    assert [(p.action, p.path) for p in outcome] == [('kept', str(target))]


def test_install_extracts_every_member_and_keeps_odd_names_inside_the_tree(tmp_path):
    """Plain names (all of a package ForML builds) are copied in large chunks; zipfile's own extraction takes any
    other name, and drops absolute paths and '..' components: nothing lands outside the tree."""
    package = tmp_path / 'odd.4ml'
    large = os.urandom(3 * staging.COPY_BUFFER + 5)
    with zipfile.ZipFile(package, 'w', zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr('pkg/', b'')
        zipped.writestr('pkg/large.bin', large)
        zipped.writestr('pkg/sub/small.py', b'X = 1\n')
        zipped.writestr('../escaped.txt', b'up')
        zipped.writestr('/absolute.txt', b'root')
        zipped.writestr('pkg/./dot.txt', b'dot')
    tree = tmp_path / 'staging' / 'proj' / 'tree'
    staging.install(package, 'ab' * 32, tree)
    assert (tree / 'pkg' / 'large.bin').read_bytes() == large
    assert (tree / 'pkg' / 'sub' / 'small.py').read_bytes() == b'X = 1\n'
    assert (tree / 'escaped.txt').read_bytes() == b'up'  # '..' dropped by zipfile
    assert (tree / 'absolute.txt').read_bytes() == b'root'
    assert (tree / 'pkg' / 'dot.txt').read_bytes() == b'dot'
    outside = sorted(p.name for p in tmp_path.rglob('*') if tree not in p.parents and p != tree)
    assert 'escaped.txt' not in outside and 'absolute.txt' not in outside
    assert staging.installed(tree, 'ab' * 32)


def test_a_corrupt_member_fails_the_install_and_leaves_no_tree(tmp_path):
    package = tmp_path / 'bad.4ml'
    with zipfile.ZipFile(package, 'w', zipfile.ZIP_STORED) as zipped:
        zipped.writestr('pkg/data.bin', b'a' * 4096)
    raw = bytearray(package.read_bytes())
    raw[raw.index(b'a' * 64) + 10] ^= 0xFF  # one byte of the member's data: its CRC no longer matches
    package.write_bytes(bytes(raw))
    tree = tmp_path / 'staging' / 'proj' / 'tree'
    with pytest.raises(zipfile.BadZipFile):
        staging.install(package, 'cd' * 32, tree)
    assert not tree.exists() and list(tree.parent.iterdir()) == []  # no tree, no temporary leftovers
