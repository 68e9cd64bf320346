"""A full local disk under ``cache_dir`` (and the staging path, which defaults to beneath it) through the real
``forml`` CLI: ``forml project release`` warns once and completes the release (the cache is an optimisation), and
``forml model train`` fails with one line naming the staging path, leaving the registry as it was.

The full disk is real: a 64 KiB tmpfs mounted over ``cache_dir`` and filled up, inside a private mount namespace of
the command (``unshare --map-root-user --mount``: no root needed where unprivileged user namespaces are allowed), so
every write there fails with ENOSPC while the rest of the machine is untouched."""

import os
import shutil
import subprocess

import pytest

from forml_s3 import demo
from forml_s3.registry import Registry

from .helpers import run_cli, s3_options

FILL = 'for d in $FULL_DIRS; do mkdir -p "$d" && mount -t tmpfs -o size=64k tmpfs "$d" && \
(cat /dev/zero > "$d/.fill") 2>/dev/null; done; exec "$@"'
"""Mounts a full tmpfs over each of ``$FULL_DIRS``, then runs the command."""


def namespaces() -> bool:
    if not shutil.which('unshare'):
        return False
    try:
        probe = subprocess.run(
            ['unshare', '--map-root-user', '--mount', 'sh', '-c', 'mount -t tmpfs tmpfs /mnt'],
            capture_output=True, check=False, timeout=30,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


pytestmark = pytest.mark.skipif(not namespaces(), reason='needs unshare with user and mount namespaces (a tmpfs)')


def on_full_disk(home, *args, full, cwd=None) -> subprocess.CompletedProcess:
    """The real ``forml`` CLI with a full disk mounted over each directory of ``full``."""
    env = demo.forml_env(home, {'FULL_DIRS': ' '.join(str(d) for d in full)})
    return subprocess.run(
        ['unshare', '--map-root-user', '--mount', 'sh', '-c', FILL, 'sh', *demo.forml_command(), *args],
        cwd=cwd or home, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_full_cache_dir_neither_fails_a_release_nor_a_training_silently(s3server, bucket, tmp_path):
    url, cache = f's3://{bucket}/forml', tmp_path / 'cache'
    home = tmp_path / 'home'
    demo.render_config(home, registry_url=url, storage_options=s3server.storage_options(), cache_dir=cache)
    source = demo.copy_project(tmp_path / 'project')

    released = on_full_disk(home, 'project', 'release', full=[cache], cwd=source)
    said = released.stdout + released.stderr
    warnings = [line for line in said.splitlines() if 'cannot be written' in line]
    assert len(warnings) == 1, said  # once, however many objects the cache refused
    assert f'The cache_dir {cache} cannot be written (No space left on device' in warnings[0], said
    assert 'going on without it' in warnings[0] and 'Traceback' not in said, said
    assert released.returncode == 0, said
    # nothing lost, nothing orphaned: the release is listed and complete
    registry = Registry(url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'reader')
    assert [str(r) for r in registry.releases(demo.PROJECT)] == [demo.RELEASE]
    verified = run_cli('verify', url, *s3_options(s3server))
    assert verified.exit_code == 0, verified.output
    stored = sorted(o['Key'] for o in s3server.client().list_objects_v2(Bucket=bucket, Prefix='forml/')['Contents'])
    packages = [k for k in stored if k.endswith('.4ml')]
    assert len(packages) == 1, stored  # the one the marker names (verify checked it)
    tags = s3server.client().get_object_tagging(Bucket=bucket, Key=packages[0])['TagSet']
    assert tags == [], tags  # committed: no longer tagged uncommitted

    trained = on_full_disk(home, 'model', 'train', demo.PROJECT, full=[cache])
    said = trained.stdout + trained.stderr
    line = [x for x in said.splitlines() if 'Cannot install' in x]
    assert len(line) == 1, said
    assert f'into the staging path {cache / "staging"}: No space left on device' in line[0], said
    assert 'set staging' in line[0] and 'Traceback' not in said, said
    assert trained.returncode == 0, said  # ForML's CLI exits 0 on its errors (docs/troubleshooting.md)
    assert list(registry.generations(demo.PROJECT, demo.RELEASE)) == []  # nothing half-trained
    assert not os.listdir(cache), 'the full disk was a private tmpfs: nothing reached the real cache_dir'
