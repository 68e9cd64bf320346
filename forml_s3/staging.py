"""Installing release packages into the shared staging path that every runner node reaches.

A release is extracted into a temporary directory beside its target (same file system), stamped with the
package's sha256, then renamed into place: N processes (or nodes sharing the mount) installing the same
release at once end with one complete tree, and none ever sees a partial one. An flock beside the target
lets the others wait instead of downloading too; the rename alone keeps it correct where flock is not
honoured (some network file systems).
"""

import contextlib
import json
import logging
import os
import pathlib
import shutil
import tempfile
import time
import typing
import zipfile

from . import cache

LOGGER = logging.getLogger(__name__)

STAMP = '.forml-s3.json'
"""File inside an installed tree naming the package it came from (sha256)."""
LOCKS = '.locks'


def target(staging: pathlib.Path, project: str, release: str) -> pathlib.Path:
    """Where a release is installed under the staging root (ForML's own convention)."""
    return staging / project / release


def installed(path: pathlib.Path, sha256: str) -> bool:
    """Whether ``path`` holds the complete tree of the package with this sha256."""
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    return stamp.get('sha256') == sha256


@contextlib.contextmanager
def locked(path: pathlib.Path) -> typing.Iterator[None]:
    """Hold the install lock of one target (other installers of the same release wait)."""
    with cache.file_lock(path.parent / LOCKS / f'{path.name}.lock'):
        yield


def install(package: pathlib.Path, sha256: str, path: pathlib.Path) -> pathlib.Path:
    """Extract the package (a zip file) into ``path`` atomically; a no-op if already there."""
    if installed(path, sha256):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = pathlib.Path(tempfile.mkdtemp(prefix=f'.{path.name}.', suffix='.incomplete', dir=path.parent))
    try:
        with zipfile.ZipFile(package) as archive:
            archive.extractall(temp)  # zipfile drops absolute paths and '..' components
        (temp / STAMP).write_text(json.dumps({'sha256': sha256, 'installed': time.time()}))
        try:
            os.rename(temp, path)
        except OSError:  # target exists: complete from a racing installer, or stale content to replace
            if installed(path, sha256):
                return path
            trash = path.with_name(f'.{path.name}.{os.getpid()}.trash')
            os.rename(path, trash)
            os.rename(temp, path)
            shutil.rmtree(trash, ignore_errors=True)
        LOGGER.info('Installed %s into %s', package.name, path)
        return path
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def staged(staging: pathlib.Path) -> list[dict[str, typing.Any]]:
    """The releases installed under a staging root: project, release, path, sha256, last use (mtime)."""
    found = []
    if not staging.is_dir():
        return found
    for project in sorted(p for p in staging.iterdir() if p.is_dir() and not p.name.startswith('.')):
        for release in sorted(r for r in project.iterdir() if r.is_dir() and not r.name.startswith('.')):
            try:
                stamp = json.loads((release / STAMP).read_text())
            except (FileNotFoundError, ValueError):
                continue
            found.append(
                {
                    'project': project.name,
                    'release': release.name,
                    'path': str(release),
                    'sha256': stamp.get('sha256'),
                    'used': (release / STAMP).stat().st_mtime,
                }
            )
    return found


def touch(path: pathlib.Path) -> None:
    """Record a use of an installed tree (for pruning by age)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path / STAMP)
