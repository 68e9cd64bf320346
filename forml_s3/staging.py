"""Installing release packages into the shared staging path that every runner node reaches, and pruning them.

A release is extracted into a temporary directory beside its target (same file system), stamped with the
package's sha256, then renamed into place: N processes (or nodes sharing the mount) installing the same
release at once end with one complete tree, and none ever sees a partial one. An flock beside the target
lets the others wait instead of downloading too; the rename alone keeps it correct where flock is not
honoured (some network file systems).

Pruning is the same protocol backwards: under the same lock, re-check that the tree is still unused, rename
it aside (one atomic step: the target is complete or absent, never half-deleted), then delete the aside copy.
The stamp's mtime is the last use: every mount touches it under the lock, so a prune that waited for a mount
sees the fresh use and keeps the tree.
"""

import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import time
import typing
import uuid
import zipfile

from . import cache

LOGGER = logging.getLogger(__name__)

STAMP = '.forml-s3.json'
"""File inside an installed tree naming the package it came from (sha256); its mtime is the last use."""
LOCKS = '.locks'
INCOMPLETE = '.incomplete'
"""Suffix of a tree being extracted (left behind by a killed installer)."""
TRASH = '.trash'
"""Suffix of a tree renamed aside to be deleted (left behind by a killed installer or prune)."""

IN_USE_GRACE = 60.0
"""Seconds after its last use during which a tree is never pruned, whatever ``older_than`` says: the mount that
touched it may still be reading its manifest and putting it on ``sys.path``."""
LEFTOVER_MIN_AGE = 3600.0
"""Seconds an ``.incomplete`` tree must be untouched before prune takes it for a killed installer's leftover
(where flock is not honoured, the install lock alone cannot tell a live installer from a dead one)."""

# .<release>.<random>.incomplete or .<release>.<random>.trash (the random part never holds a dot)
_LEFTOVER = re.compile(r'^\.(?P<release>.+)\.[^.]+(?P<suffix>\.incomplete|\.trash)$')


def target(staging: pathlib.Path, project: str, release: str) -> pathlib.Path:
    """Where a release is installed under the staging root (ForML's own convention)."""
    return staging / project / release


def default_root() -> pathlib.Path:
    """The staging path of a registry configured without ``staging`` nor ``cache_dir``."""
    return cache.default_root() / 'staging'


def installed(path: pathlib.Path, sha256: str) -> bool:
    """Whether ``path`` holds the complete tree of the package with this sha256."""
    try:
        stamp = json.loads((path / STAMP).read_text())
    except (FileNotFoundError, NotADirectoryError, ValueError):
        return False
    return isinstance(stamp, dict) and stamp.get('sha256') == sha256


@contextlib.contextmanager
def locked(path: pathlib.Path) -> typing.Iterator[None]:
    """Hold the install lock of one target (other installers and pruners of the same release wait).

    Lock files are never deleted: a process waiting on an unlinked lock file would hold a lock nobody else
    sees. Not re-entrant: flock is per open file, so a nested ``locked`` on the same path waits for itself.
    """
    with cache.file_lock(path.parent / LOCKS / f'{path.name}.lock'):
        yield


def ensure(path: pathlib.Path, sha256: str, fetch: typing.Callable[[], tuple[pathlib.Path, str]]) -> pathlib.Path:
    """Install the package at ``path`` unless it is there, and record the use, all under the install lock.

    Checking and touching under the lock is what makes a concurrent prune safe: the prune either removed the
    tree before this call took the lock (then it is installed again here), or it re-checks the last use after
    this call released the lock and finds it fresh.

    Args:
        path: The release's target under the staging root (see :func:`target`).
        sha256: The package's sha256 per the release marker.
        fetch: Returns the verified package file and its sha256; called only if the tree is missing.

    Returns:
        ``path``, holding the complete tree.
    """
    with locked(path):
        if not installed(path, sha256):
            package, sha256 = fetch()
            install(package, sha256, path)
        touch(path)
    return path


def install(package: pathlib.Path, sha256: str, path: pathlib.Path) -> pathlib.Path:
    """Extract the package (a zip file) into ``path`` atomically; a no-op if already there."""
    if installed(path, sha256):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir rather than tempfile.mkdtemp: mkdtemp makes the directory 0700, and renamed into place it would
    # lock every other user (the runners of a shared staging path) out of the tree
    temp = _aside(path, INCOMPLETE)
    os.mkdir(temp)
    try:
        with zipfile.ZipFile(package) as archive:
            archive.extractall(temp)  # zipfile drops absolute paths and '..' components
        (temp / STAMP).write_text(json.dumps({'sha256': sha256, 'installed': time.time()}))
        try:
            os.rename(temp, path)
        except OSError:  # target exists: complete from a racing installer, or stale content to replace
            if installed(path, sha256):
                return path
            trash = _aside(path, TRASH)
            os.rename(path, trash)
            os.rename(temp, path)
            shutil.rmtree(trash, ignore_errors=True)
        LOGGER.info('Installed %s into %s', package.name, path)
        return path
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _aside(path: pathlib.Path, suffix: str) -> pathlib.Path:
    """A unique hidden sibling of ``path`` (same file system, so renames between them are atomic)."""
    return path.with_name(f'.{path.name}.{uuid.uuid4().hex[:12]}{suffix}')


def touch(path: pathlib.Path) -> None:
    """Record a use of an installed tree (for pruning by age)."""
    with contextlib.suppress(FileNotFoundError):
        os.utime(path / STAMP)


def last_use(path: pathlib.Path) -> float | None:
    """When the tree at ``path`` was last mounted (epoch seconds), or None if it is not installed there."""
    try:
        return (path / STAMP).stat().st_mtime
    except (FileNotFoundError, NotADirectoryError):
        return None


def tree_size(path: pathlib.Path) -> int:
    """Bytes of the regular files under ``path`` (0 if it is gone)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _dirs(path: pathlib.Path) -> list[pathlib.Path]:
    """Subdirectories of ``path``, sorted; empty if ``path`` is not a directory (or vanishes meanwhile)."""
    try:
        return sorted(p for p in path.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):
        return []


def staged(staging: pathlib.Path, sizes: bool = False) -> list[dict[str, typing.Any]]:
    """The releases installed under a staging root: project, release, path, sha256, last use (mtime).

    Only trees carrying a readable stamp count (trees forml-s3 did not install are left alone). With
    ``sizes``, each entry also has the tree's ``size`` in bytes (walks every tree: slower on network mounts).
    """
    found = []
    for project in _dirs(staging):
        if project.name.startswith('.'):
            continue
        for release in _dirs(project):
            if release.name.startswith('.'):
                continue
            try:
                stamp = json.loads((release / STAMP).read_text())
                used = (release / STAMP).stat().st_mtime
            except (FileNotFoundError, ValueError):  # not ours, damaged, or pruned meanwhile
                continue
            entry = {
                'project': project.name,
                'release': release.name,
                'path': str(release),
                'sha256': stamp.get('sha256') if isinstance(stamp, dict) else None,
                'used': used,
            }
            if sizes:
                entry['size'] = tree_size(release)
            found.append(entry)
    return found


def leftovers(staging: pathlib.Path) -> list[pathlib.Path]:
    """Trees a killed installer or prune left behind (``.<release>.<random>.incomplete`` or ``.trash``)."""
    return [
        path
        for project in _dirs(staging)
        if not project.name.startswith('.')
        for path in _dirs(project)
        if _LEFTOVER.match(path.name)
    ]


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What :func:`prune` did, or would do, with one staged release or leftover tree."""

    PRUNED: typing.ClassVar[str] = 'pruned'
    WOULD_PRUNE: typing.ClassVar[str] = 'would prune'
    KEPT: typing.ClassVar[str] = 'kept'

    action: str
    """:attr:`PRUNED`, :attr:`WOULD_PRUNE` (dry run) or :attr:`KEPT` (used while the prune waited for it)."""
    path: str
    project: str
    release: str
    used: float | None
    """Last use (epoch seconds); None for a leftover tree."""
    size: int
    leftover: bool = False
    """A killed installer's or prune's leftover rather than an installed release."""


def prune(
    staging: pathlib.Path,
    older_than: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
    grace: float = IN_USE_GRACE,
) -> list[Pruned]:
    """Delete the releases under ``staging`` not mounted for ``older_than`` seconds, and installers' leftovers.

    Safe against concurrent mounts of the same release: each candidate is re-checked under its install lock
    (a mount that got there first has touched it: kept), then renamed aside and only then deleted, so the
    target path always holds a complete tree or nothing. A release used within ``grace`` seconds is kept
    whatever ``older_than`` says. With ``dry_run`` nothing is locked, renamed or deleted.

    Args:
        staging: The staging root.
        older_than: Minimum seconds since the last mount.
        dry_run: Only report what would be pruned.
        now: The current time (epoch seconds; default: the clock).
        grace: Seconds after a mount during which its tree is never pruned.

    Returns:
        One entry per release pruned (or that would be, or kept after the re-check) and per leftover removed.
    """
    now = time.time() if now is None else now
    cutoff = now - max(float(older_than), float(grace))
    done = []
    for entry in staged(staging):
        if entry['used'] >= cutoff:
            continue
        path = pathlib.Path(entry['path'])
        if dry_run:
            done.append(_outcome(Pruned.WOULD_PRUNE, path, entry['used'], tree_size(path)))
            continue
        with locked(path):
            used = last_use(path)  # again, now that no mount can be installing or touching it
            if used is None:  # removed or being replaced meanwhile: nothing of ours to prune
                continue
            if used >= cutoff:
                LOGGER.info('Keeping %s: mounted while the prune waited for it', path)
                done.append(_outcome(Pruned.KEPT, path, used, 0))
                continue
            aside = _aside(path, TRASH)
            try:
                os.rename(path, aside)
            except FileNotFoundError:  # replaced by an installer that does not honour the lock: not ours
                continue
        done.append(_outcome(Pruned.PRUNED, path, used, _delete(aside)))
    done.extend(_prune_leftovers(staging, min(cutoff, now - LEFTOVER_MIN_AGE), dry_run))
    return done


def _prune_leftovers(staging: pathlib.Path, cutoff: float, dry_run: bool) -> list[Pruned]:
    """Remove ``.trash`` trees (always dead) and ``.incomplete`` ones untouched since ``cutoff`` with no
    installer holding their release's lock."""
    done = []
    for path in leftovers(staging):
        match = _LEFTOVER.match(path.name)
        release = path.parent / match['release']
        if match['suffix'] == INCOMPLETE:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mtime >= cutoff:
                    continue
        if dry_run:
            done.append(_outcome(Pruned.WOULD_PRUNE, release, None, tree_size(path), leftover=path))
            continue
        with locked(release):
            aside = path
            if match['suffix'] == INCOMPLETE:
                # aside first: an installer deaf to the lock, renaming it into place now, then loses the race
                # cleanly instead of publishing a half-deleted tree
                aside = _aside(release, TRASH)
                try:
                    os.rename(path, aside)
                except FileNotFoundError:  # renamed into place, or taken by another prune
                    continue
            elif not path.exists():  # another prune took it
                continue
        done.append(_outcome(Pruned.PRUNED, release, None, _delete(aside), leftover=path))
    return done


def _delete(path: pathlib.Path) -> int:
    """Delete a tree already renamed aside; its size (what it held)."""
    size = tree_size(path)
    shutil.rmtree(path, ignore_errors=True)
    if path.exists():  # e.g. a permission problem: harmless (hidden name), the next prune retries
        LOGGER.warning('Could not delete all of %s', path)
    return size


def _outcome(
    action: str, path: pathlib.Path, used: float | None, size: int, leftover: pathlib.Path | None = None
) -> Pruned:
    return Pruned(
        action=action,
        path=str(leftover or path),
        project=path.parent.name,
        release=path.name,
        used=used,
        size=size,
        leftover=leftover is not None,
    )
