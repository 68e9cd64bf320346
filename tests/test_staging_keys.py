"""Staged trees keyed by the package they hold, leased while a process uses them, and prunes that say what failed.

Mounts run in their own processes (as runners and gateways do); ``forml-s3 staging`` runs as the real command
(in the test process: it holds no lease of these trees).
Ages are set by moving a stamp's or a lease's mtime back, never by waiting.
"""

import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import types

import pytest
from click.testing import CliRunner

from forml_s3.cli import main
from forml_s3.registry import Registry
from forml_s3.runtime import staging

from . import conftest
from .helpers import PROJECT

ROOT = pathlib.Path(__file__).parent.parent
DAY = 86400.0

MOUNTER = """
import json, os, pathlib, sys, time
from forml_s3.registry import Registry
args = json.loads(sys.argv[1])
options = {'cache_dir': args.get('cache'), 'staging': args.get('staging')}
registry = Registry(args['url'], storage_options=args['options'], **options)
path = registry.mount('demo-proj', '1.0').path
print(json.dumps({'path': str(path), 'module': (path / 'demo' / '__init__.py').read_text()}), flush=True)
while args.get('stay') and not os.path.exists(args['stay']):  # a runner or gateway using the tree until told
    time.sleep(0.05)
"""


def mounter(url: str, options: dict, stay: pathlib.Path | None = None, **where: str) -> subprocess.Popen:
    args = {'url': url, 'options': options, 'stay': str(stay) if stay else None, **where}
    return subprocess.Popen(
        [sys.executable, '-c', MOUNTER, json.dumps(args)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def mounted(proc: subprocess.Popen) -> dict:
    """What the mounting process printed once it had mounted (it may keep running)."""
    line = proc.stdout.readline()
    assert line, proc.communicate()
    return json.loads(line)


def forml_s3(*args: str) -> types.SimpleNamespace:
    """The real ``forml-s3`` command, in this process (the processes using the trees are the mounters)."""
    done = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return types.SimpleNamespace(returncode=done.exit_code, stdout=done.stdout, stderr=done.stderr)


def age(path: pathlib.Path, days: float) -> None:
    when = time.time() - days * DAY
    os.utime(path, (when, when))


def test_two_registries_with_one_release_name_get_their_own_trees(request, tmp_path, package_factory):
    """churn 1.0 in bucket A and in a file:// registry B, mounted on one machine with the default staging path:
    two trees; mounting B leaves A's tree, already handed to a process, exactly as it was."""
    (url_a, options_a), (url_b, options_b) = (
        conftest.registry_url('s3', tmp_path, request),
        conftest.registry_url('file', tmp_path, request),
    )
    Registry(url_a, storage_options=options_a, cache_dir=tmp_path / 'pusher-a').push(
        package_factory('1.0', payload='A')
    )
    Registry(url_b, storage_options=options_b, cache_dir=tmp_path / 'pusher-b').push(
        package_factory('1.0', payload='B')
    )

    stay = tmp_path / 'stop'
    first = mounter(url_a, options_a, stay)  # default cache and staging: per machine (XDG_CACHE_HOME)
    a = mounted(first)
    b = mounted(mounter(url_b, options_b))
    assert a['path'] != b['path']
    assert pathlib.Path(a['path']).parent == pathlib.Path(b['path']).parent == staging.default_root() / PROJECT
    assert a['module'].endswith("PAYLOAD = 'A'\n") and b['module'].endswith("PAYLOAD = 'B'\n")
    assert (pathlib.Path(a['path']) / 'demo' / '__init__.py').read_text() == a['module']  # A's tree untouched
    stay.touch()
    first.communicate(timeout=60)

    same_staging = [Registry(u, storage_options=o) for u, o in ((url_a, options_a), (url_b, options_b))]
    assert same_staging[0] != same_staging[1] and len(set(same_staging)) == 2  # ForML caches providers by these


@pytest.fixture
def release(tmp_path, package_factory):
    """demo-proj 1.0 in a file:// registry, and where it is staged."""
    url = f'file://{tmp_path}/registry'
    Registry(url, cache_dir=tmp_path / 'pusher').push(package_factory('1.0'))
    return url, tmp_path / 'staging'


def test_prune_never_deletes_a_tree_a_running_process_uses(release, tmp_path):
    url, root = release
    stay = tmp_path / 'stop'
    runner = mounter(url, {}, stay, staging=str(root), cache=str(tmp_path / 'cache'))
    tree = pathlib.Path(mounted(runner)['path'])
    age(tree / staging.STAMP, 40)  # mounted long ago, far past the grace period

    listed = json.loads(forml_s3('staging', 'ls', str(root), '--json').stdout)
    assert [r['in_use'] for r in listed['releases']] == [[{'host': socket.gethostname(), 'pid': runner.pid}]]
    shown = forml_s3('staging', 'ls', str(root)).stdout
    assert f'pid {runner.pid} on {socket.gethostname()}' in shown and '1 in use' in shown, shown
    done = forml_s3('staging', 'prune', str(root), '--older-than', '0')
    assert done.returncode == 0, done.stderr
    assert f'kept {PROJECT} 1.0: in use by pid {runner.pid} on {socket.gethostname()}' in done.stdout, done.stdout
    assert tree.is_dir() and staging.installed(tree, json.loads((tree / staging.STAMP).read_text())['sha256'])

    runner.send_signal(signal.SIGKILL)  # dies without removing its lease: on this node, a dead pid is no lease
    runner.communicate(timeout=60)
    done = forml_s3('staging', 'prune', str(root), '--older-than', '0')
    assert done.returncode == 0 and done.stdout.startswith(f'pruned {PROJECT} 1.0'), done.stdout
    assert not tree.exists() and not (root / PROJECT / staging.LEASES / tree.name).exists()


def test_leases_of_other_nodes_count_until_they_expire_and_an_exiting_process_drops_its_own(release, tmp_path):
    url, root = release
    exited = mounter(url, {}, staging=str(root), cache=str(tmp_path / 'cache'))
    tree = pathlib.Path(mounted(exited)['path'])
    exited.communicate(timeout=60)
    assert list((root / PROJECT / staging.LEASES / tree.name).iterdir()) == []  # removed at exit
    age(tree / staging.STAMP, 40)

    lease = root / PROJECT / staging.LEASES / tree.name / 'other-node~0123abcd.4242.feedbeef'
    lease.write_text('{}')  # a runner on another node sharing the staging path, renewing its lease
    done = forml_s3('staging', 'prune', str(root), '--older-than', '0')
    assert 'in use by pid 4242 on other-node' in done.stdout and tree.exists(), done.stdout
    age(lease, (staging.LEASE_TTL + 60) / DAY)  # not renewed for longer than the TTL: that node is gone
    done = forml_s3('staging', 'prune', str(root), '--older-than', '0')
    assert done.stdout.startswith(f'pruned {PROJECT} 1.0') and not tree.exists(), done.stdout


def undeletable(path: pathlib.Path) -> None:
    """Make ``path`` (a file) impossible to delete for the prune: immutable as root, a read-only directory else."""
    if os.geteuid() != 0:
        path.parent.chmod(0o555)
        return
    if subprocess.run(['chattr', '+i', str(path)], capture_output=True).returncode != 0:
        pytest.skip('running as root on a file system without chattr +i: no way to make a file undeletable')


def deletable(root: pathlib.Path) -> None:
    """Undo :func:`undeletable` wherever the file is now under ``root``."""
    for path in root.rglob('__init__.py'):
        if os.geteuid() != 0:
            path.parent.chmod(0o755)
        else:
            subprocess.run(['chattr', '-i', str(path)], capture_output=True)


def test_a_prune_that_cannot_delete_a_tree_says_so_and_exits_2(tmp_path, package_factory):
    url, root = f'file://{tmp_path}/registry', tmp_path / 'staging'
    registry = Registry(url, cache_dir=tmp_path / 'cache', staging=root)
    registry.push(package_factory('1.0'))
    registry.push(package_factory('1.1'))
    stuck, fine = registry.mount(PROJECT, '1.0').path, registry.mount(PROJECT, '1.1').path
    staging.LEASES_HELD.release()  # as if the mounting process had exited
    for tree in (stuck, fine):
        age(tree / staging.STAMP, 40)
    blocker = stuck / 'demo' / '__init__.py'
    undeletable(blocker)
    try:
        done = forml_s3('staging', 'prune', str(root), '--older-than', '30')
        assert done.returncode == 2, (done.stdout, done.stderr)
        assert done.stdout.splitlines()[0].startswith(f'pruned {PROJECT} 1.1 (')  # what it did prune is listed
        assert f'failed to prune {PROJECT} 1.0: could not delete all of it' in done.stderr, done.stderr
        assert done.stdout.splitlines()[-1].startswith('1 releases not mounted for 30 days and 0 leftovers pruned (')
        assert done.stdout.splitlines()[-1].endswith('; 1 could not be deleted')
        assert not stuck.exists() and not fine.exists()  # the stuck tree is hidden aside, never half-deleted
        (trash,) = staging.leftovers(root)

        again = forml_s3('staging', 'prune', str(root), '--older-than', '30', '--json')
        assert again.returncode == 2
        assert [(o['action'], o['path']) for o in json.loads(again.stdout)] == [('failed', str(trash))]
    finally:
        deletable(root)
    done = forml_s3('staging', 'prune', str(root), '--older-than', '30')
    assert done.returncode == 0 and done.stdout.startswith(f'pruned leftover {trash}'), done.stdout
    assert staging.leftovers(root) == []
