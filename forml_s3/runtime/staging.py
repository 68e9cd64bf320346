"""Installing release packages into the shared staging path that every runner node reaches, and pruning them.

A tree is keyed by what it holds: ``<staging>/<project>/<release>-<sha256[:16]>``, the package's content hash
in its name, so two registries (or two pushes of one version to two buckets) never share a tree, and a tree
is never replaced under a process importing from it: other content lands in another tree. A release is
extracted into a temporary directory beside its target (same file system), stamped with the package's sha256,
then renamed into place: N processes (or nodes sharing the mount) installing the same package at once end
with one complete tree, and none ever sees a partial one. An flock beside the target lets the others wait
instead of downloading too; the rename alone keeps it correct where flock is not honoured (some network file
systems).

Every process that mounts a tree holds a *lease* on it (``<project>/.leases/<tree>/<host>.<pid>.<token>``),
refreshed by a daemon thread while the process lives and removed when it exits; prune never deletes a tree
with a live lease.

Pruning is the same protocol backwards: under the same lock, re-check that the tree is still unused (last use
and leases), rename it aside (one atomic step: the target is complete or absent, never half-deleted), then
delete the aside copy. The stamp's mtime is the last use: every mount touches it and takes its lease under the
lock, so a prune that waited for a mount sees the fresh use and keeps the tree.
"""

import atexit
import contextlib
import dataclasses
import json
import logging
import os
import pathlib
import re
import shutil
import socket
import threading
import time
import typing
import uuid
import zipfile

from ..storage import digest
from . import cache

LOGGER = logging.getLogger(__name__)

STAMP = '.forml-s3.json'
"""File inside an installed tree naming the package it came from (sha256); its mtime is the last use."""
LOCKS = '.locks'
LEASES = '.leases'
"""Directory (beside the trees of a project) of the leases of the processes using each tree."""
INCOMPLETE = '.incomplete'
"""Suffix of a tree being extracted (left behind by a killed installer)."""
TRASH = '.trash'
"""Suffix of a tree renamed aside to be deleted (left behind by a killed installer or prune)."""
KEY_LENGTH = 16
"""Hex digits of the package's sha256 in a tree's name (the stamp holds all of them and is checked)."""

IN_USE_GRACE = 60.0
"""Seconds after its last use during which a tree is never pruned, whatever ``older_than`` says: the mount that
touched it may still be reading its manifest and putting it on ``sys.path``."""
LEFTOVER_MIN_AGE = 3600.0
"""Seconds an ``.incomplete`` tree must be untouched before prune takes it for a killed installer's leftover
(where flock is not honoured, the install lock alone cannot tell a live installer from a dead one)."""
LEASE_REFRESH = 60.0
"""Seconds between two renewals of a process's leases (its daemon thread touches them)."""
LEASE_TTL = 900.0
"""Seconds after its last renewal a lease counts as live (a process on another node that stopped renewing it for
this long is taken for dead; on this node a lease whose process is gone is dead at once)."""

# .<name>.<random>.incomplete or .<name>.<random>.trash (the random part never holds a dot)
_LEFTOVER = re.compile(r'^\.(?P<release>.+)\.[^.]+(?P<suffix>\.incomplete|\.trash)$')
# <release>-<sha256[:16]>: a normalised PEP 440 version never holds a '-'
_KEYED = re.compile(rf'^(?P<release>[^-]+)-(?P<key>[0-9a-f]{{{KEY_LENGTH}}})$')


def target(staging: pathlib.Path, project: str, release: str, sha256: str) -> pathlib.Path:
    """Where the package with this sha256 of a release is installed under the staging root."""
    return staging / project / f'{release}-{sha256[:KEY_LENGTH]}'


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
    """Hold the install lock of one target (other installers and pruners of the same tree wait).

    Lock files are never deleted: a process waiting on an unlinked lock file would hold a lock nobody else
    sees. Not re-entrant: flock is per open file, so a nested ``locked`` on the same path waits for itself.
    """
    with cache.file_lock(path.parent / LOCKS / f'{path.name}.lock'):
        yield


def ensure(
    path: pathlib.Path,
    sha256: str,
    fetch: typing.Callable[[typing.Callable[[int], None]], tuple[pathlib.Path | typing.BinaryIO, str]],
) -> pathlib.Path:
    """Install the package at ``path`` unless it is there, record the use and lease the tree, all under the lock.

    Checking, touching and leasing under the lock is what makes a concurrent prune safe: the prune either removed
    the tree before this call took the lock (then it is installed again here), or it re-checks the last use and
    the leases after this call released the lock and finds them.

    Args:
        path: The tree's target under the staging root (see :func:`target`).
        sha256: The package's sha256 per the release marker.
        fetch: Returns the verified package file (its path, or the file opened: closed here) and its sha256;
            called only if the tree is missing, with a callback for the download to hand the file to once every
            byte has landed (a descriptor): the package is extracted aside then, while the download's hash
            finishes, and that tree is used only once fetch returned (the sha256 matched).

    Returns:
        ``path``, holding the complete tree.
    """
    with locked(path):
        if not installed(path, sha256):
            early = _Early(path)
            try:
                package, sha256 = fetch(early.extract)
                try:
                    install(package, sha256, path, extracted=early.tree)
                finally:
                    if not isinstance(package, pathlib.Path):
                        package.close()
            finally:
                early.discard()
        touch(path)
        LEASES_HELD.take(path)
    return path


class _Early:
    """A package extracted aside as soon as its download has landed every byte, while its hash finishes (the
    download's thread runs :meth:`extract`); :func:`install` takes the tree once the package is verified."""

    def __init__(self, path: pathlib.Path):
        self._path = path
        self.tree: pathlib.Path | None = None
        """The complete extraction (None: none was made, or it failed: the install extracts the package itself)."""

    def extract(self, fd: int) -> None:
        self.discard()  # a download again (another client, or aside): only the latest one's tree may count
        temp = _aside(self._path, INCOMPLETE)
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(temp)
            with open(os.dup(fd), 'rb') as file, zipfile.ZipFile(file) as archive:
                _extract(archive, temp, crc=False)  # the sha256 of these very bytes decides
        except Exception as err:  # unverified bytes: whatever is wrong, the install finds (or the hash does)
            LOGGER.debug('Early extraction into %s failed (%r): extracting after the download', temp, err)
            shutil.rmtree(temp, ignore_errors=True)
            return
        self.tree = temp

    def discard(self) -> None:
        """Remove the tree if the install did not take it (the download failed its check, or raised)."""
        if self.tree is not None:
            shutil.rmtree(self.tree, ignore_errors=True)
            self.tree = None


def install(
    package: pathlib.Path | typing.BinaryIO, sha256: str, path: pathlib.Path, extracted: pathlib.Path | None = None
) -> pathlib.Path:
    """Extract the package (a zip file, by path or opened) into ``path`` atomically; a no-op if already there.
    ``extracted``: the package, verified, already extracted aside (see :class:`_Early`): only stamped and renamed."""
    if installed(path, sha256):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    # os.mkdir rather than tempfile.mkdtemp: mkdtemp makes the directory 0700, and renamed into place it would
    # lock every other user (the runners of a shared staging path) out of the tree
    temp = extracted if extracted is not None else _aside(path, INCOMPLETE)
    try:
        if extracted is None:
            os.mkdir(temp)
            with zipfile.ZipFile(package) as archive:
                _extract(archive, temp)
        (temp / STAMP).write_text(json.dumps({'sha256': sha256, 'installed': time.time()}))
        try:
            os.rename(temp, path)
        except OSError:  # target exists: complete from a racing installer, or a damaged tree to replace
            if installed(path, sha256):
                return path
            trash = _aside(path, TRASH)
            os.rename(path, trash)
            os.rename(temp, path)
            shutil.rmtree(trash, ignore_errors=True)
        name = package if isinstance(package, pathlib.Path) else pathlib.Path(package.name)
        LOGGER.info('Installed %s into %s', name.name, path)
        return path
    finally:
        shutil.rmtree(temp, ignore_errors=True)


COPY_BUFFER = digest.WRITE_SLICE
"""How much of a member is inflated and written at a time: zipfile's own 64 KiB took ~20% longer for a 50 MiB
member, and writes of a MiB or more can take several times as long (see :data:`digest.WRITE_SLICE`)."""
_PLAIN = re.compile(r'[^/\\:]+(/[^/\\:]+)*/?')


def _extract(archive: zipfile.ZipFile, into: pathlib.Path, *, crc: bool = True) -> None:
    """``extractall``, with members of plain relative names (all of a package ForML builds) copied in chunks of
    :data:`COPY_BUFFER`; any other name is left to zipfile, which drops absolute paths and '..' components.

    ``crc=False``: the members of plain names are not checked against their CRC32, for an archive whose sha256 is
    checked over the same bytes before the tree is used (see :class:`_Early`): a second check of those bytes, ~9 ms
    of a 50 MiB member (a third of the extraction). zipfile skips it for a member with no CRC to expect; that is
    its private ``_expected_crc`` (where a later Python has no such attribute, the check simply stays)."""
    for info in archive.infolist():
        name = info.filename
        if not _PLAIN.fullmatch(name) or any(part in ('.', '..') for part in name.split('/')):
            archive.extract(info, into)
            continue
        target = into / name
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, open(target, 'wb') as sink:
            if not crc and hasattr(source, '_expected_crc'):
                source._expected_crc = None
            shutil.copyfileobj(source, sink, COPY_BUFFER)


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


# leases -----------------------------------------------------------------------------------------------------
def _host() -> str:
    """This node's name in lease files: the host name plus the kernel's boot id (two boots, two hosts)."""
    try:
        boot = pathlib.Path('/proc/sys/kernel/random/boot_id').read_text().strip()[:8]
    except OSError:
        boot = 'noboot'
    return f'{socket.gethostname().replace(".", "_")}~{boot}'


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: it exists
        return True
    return True


@dataclasses.dataclass(frozen=True)
class Lease:
    """One process's claim on a tree: the file, and who holds it."""

    path: pathlib.Path
    host: str
    pid: int
    renewed: float
    """The lease file's mtime (epoch seconds)."""

    def live(self, now: float, host: str) -> bool:
        """Renewed within :data:`LEASE_TTL`, and (on this node) its process still running."""
        if now - self.renewed > LEASE_TTL:
            return False
        return self.host != host or _alive(self.pid)

    def __str__(self):
        return f'pid {self.pid} on {self.host.split("~")[0]}'


def _lease_dir(tree: pathlib.Path) -> pathlib.Path:
    return tree.parent / LEASES / tree.name


def leases(tree: pathlib.Path, now: float | None = None) -> list[Lease]:
    """The live leases on a tree (any process, any node sharing the staging path)."""
    now = time.time() if now is None else now
    host = _host()
    found = []
    try:
        files = list(_lease_dir(tree).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    for file in files:
        try:
            holder, pid, _ = file.name.rsplit('.', 2)
            lease = Lease(file, holder, int(pid), file.stat().st_mtime)
        except (ValueError, FileNotFoundError):
            continue
        if lease.live(now, host):
            found.append(lease)
    return sorted(found, key=lambda lease: (lease.host, lease.pid))


def _drop_leases(tree: pathlib.Path) -> None:
    """Delete the lease files of a tree just pruned (all dead: it was pruned under the lock with none live)."""
    folder = _lease_dir(tree)
    with contextlib.suppress(OSError):
        for lease in folder.iterdir():
            lease.unlink(missing_ok=True)
        folder.rmdir()


class _Leases:
    """The leases this process holds, renewed by a daemon thread, removed at exit (see :meth:`forked`)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._held: dict[pathlib.Path, pathlib.Path] = {}
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def take(self, tree: pathlib.Path) -> pathlib.Path:
        """Lease a tree for the rest of this process's life (idempotent); the caller holds the tree's lock."""
        with self._lock:
            lease = self._held.get(tree)
            if lease is None or not lease.exists():
                lease = self._write(tree)
                self._held[tree] = lease
            else:
                os.utime(lease)
            if self._thread is None:
                self._thread = threading.Thread(target=self._renew, name='forml-s3-staging-leases', daemon=True)
                self._thread.start()
        return lease

    def held(self) -> list[pathlib.Path]:
        with self._lock:
            return list(self._held.values())

    @staticmethod
    def _write(tree: pathlib.Path) -> pathlib.Path:
        folder = _lease_dir(tree)
        folder.mkdir(parents=True, exist_ok=True)
        lease = folder / f'{_host()}.{os.getpid()}.{uuid.uuid4().hex[:8]}'
        lease.write_text(json.dumps({'tree': str(tree), 'pid': os.getpid(), 'taken': time.time()}))
        return lease

    def _renew(self) -> None:
        while True:
            time.sleep(LEASE_REFRESH)
            with self._lock:
                for tree, lease in list(self._held.items()):
                    try:
                        os.utime(lease)
                    except FileNotFoundError:  # deleted by hand: a prune may not see this process otherwise
                        with contextlib.suppress(OSError):
                            self._held[tree] = self._write(tree)

    def release(self) -> None:
        """Remove this process's lease files (at exit)."""
        if self._pid != os.getpid():  # a forked child that never leased: the parent's files are not ours
            return
        with self._lock:
            for lease in self._held.values():
                with contextlib.suppress(OSError):
                    lease.unlink()
            self._held.clear()

    def forked(self) -> None:
        """In a forked child: a fresh lock, no thread, no leases of its own (its parent's cover the trees it
        inherited while the parent lives; a mount in the child takes its own). Nothing else happens here: a
        child that is about to ``exec`` must not leave lease files behind."""
        self.__init__()


LEASES_HELD = _Leases()
atexit.register(LEASES_HELD.release)
os.register_at_fork(after_in_child=LEASES_HELD.forked)


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


def staged(staging: pathlib.Path, sizes: bool = False, now: float | None = None) -> list[dict[str, typing.Any]]:
    """The trees installed under a staging root: project, release, path, sha256, last use (mtime), the live
    leases on each (``in_use``, processes using it).

    Only trees carrying a readable stamp count (trees forml-s3 did not install are left alone); trees of the
    earlier layout (``<project>/<release>``, not keyed by content) are listed too. With ``sizes``, each entry
    also has the tree's ``size`` in bytes (walks every tree: slower on network mounts).
    """
    found = []
    for project in _dirs(staging):
        if project.name.startswith('.'):
            continue
        for tree in _dirs(project):
            if tree.name.startswith('.'):
                continue
            try:
                stamp = json.loads((tree / STAMP).read_text())
                used = (tree / STAMP).stat().st_mtime
            except (FileNotFoundError, ValueError):  # not ours, damaged, or pruned meanwhile
                continue
            keyed = _KEYED.match(tree.name)
            entry = {
                'project': project.name,
                'release': keyed['release'] if keyed else tree.name,
                'path': str(tree),
                'sha256': stamp.get('sha256') if isinstance(stamp, dict) else None,
                'used': used,
                'in_use': leases(tree, now),
            }
            if sizes:
                entry['size'] = tree_size(tree)
            found.append(entry)
    return found


def leftovers(staging: pathlib.Path) -> list[pathlib.Path]:
    """Trees a killed installer or prune left behind (``.<tree>.<random>.incomplete`` or ``.trash``)."""
    return [
        path
        for project in _dirs(staging)
        if not project.name.startswith('.')
        for path in _dirs(project)
        if _LEFTOVER.match(path.name)
    ]


@dataclasses.dataclass(frozen=True)
class Pruned:
    """What :func:`prune` did, or would do, with one staged tree or leftover tree."""

    PRUNED: typing.ClassVar[str] = 'pruned'
    WOULD_PRUNE: typing.ClassVar[str] = 'would prune'
    KEPT: typing.ClassVar[str] = 'kept'
    FAILED: typing.ClassVar[str] = 'failed'

    action: str
    """:attr:`PRUNED`, :attr:`WOULD_PRUNE` (dry run), :attr:`KEPT` (used while the prune waited for it, or in use
    by a live process: see ``holders``) or :attr:`FAILED` (could not be deleted, or not wholly: see ``error``)."""
    path: str
    project: str
    release: str
    used: float | None
    """Last use (epoch seconds); None for a leftover tree."""
    size: int
    """Bytes deleted (or that would be)."""
    leftover: bool = False
    """A killed installer's or prune's leftover rather than an installed tree."""
    holders: tuple[str, ...] = ()
    """The processes using a tree kept for that reason (``pid N on HOST``)."""
    error: str | None = None
    """Why a tree could not be deleted, and what is left of it."""


def prune(
    staging: pathlib.Path,
    older_than: float,
    *,
    dry_run: bool = False,
    now: float | None = None,
    grace: float = IN_USE_GRACE,
) -> list[Pruned]:
    """Delete the trees under ``staging`` not mounted for ``older_than`` seconds, and installers' leftovers.

    Safe against concurrent mounts of the same tree: each candidate is re-checked under its install lock
    (a mount that got there first has touched and leased it: kept), then renamed aside and only then deleted, so
    the target path always holds a complete tree or nothing. A tree used within ``grace`` seconds, or leased by a
    live process, is kept whatever ``older_than`` says. With ``dry_run`` nothing is locked, renamed or deleted.

    Args:
        staging: The staging root.
        older_than: Minimum seconds since the last mount.
        dry_run: Only report what would be pruned.
        now: The current time (epoch seconds; default: the clock).
        grace: Seconds after a mount during which its tree is never pruned.

    Returns:
        One entry per tree pruned (or that would be, or kept after the re-check, or that could not be deleted)
        and per leftover removed (or not).
    """
    now = time.time() if now is None else now
    cutoff = now - max(float(older_than), float(grace))
    done = []
    failed: set[pathlib.Path] = set()
    for entry in staged(staging, now=now):
        if entry['used'] >= cutoff:
            continue
        path = pathlib.Path(entry['path'])
        if dry_run:
            if entry['in_use']:
                done.append(_outcome(Pruned.KEPT, path, entry['used'], 0, holders=entry['in_use']))
            else:
                done.append(_outcome(Pruned.WOULD_PRUNE, path, entry['used'], tree_size(path)))
            continue
        with locked(path):
            used = last_use(path)  # again, now that no mount can be installing, touching or leasing it
            if used is None:  # removed or being replaced meanwhile: nothing of ours to prune
                continue
            if used >= cutoff:
                LOGGER.info('Keeping %s: mounted while the prune waited for it', path)
                done.append(_outcome(Pruned.KEPT, path, used, 0))
                continue
            if holders := leases(path, now=time.time()):
                LOGGER.info('Keeping %s: in use by %s', path, ', '.join(map(str, holders)))
                done.append(_outcome(Pruned.KEPT, path, used, 0, holders=holders))
                continue
            aside = _aside(path, TRASH)
            try:
                os.rename(path, aside)
            except FileNotFoundError:  # replaced by an installer that does not honour the lock: not ours
                continue
            except OSError as err:
                done.append(_outcome(Pruned.FAILED, path, used, 0, error=f'could not move it aside: {err}'))
                continue
            _drop_leases(path)
        size, error = _delete(aside)
        if error:
            failed.add(aside)
            done.append(_outcome(Pruned.FAILED, path, used, size, error=error))
        else:
            done.append(_outcome(Pruned.PRUNED, path, used, size))
    done.extend(_prune_leftovers(staging, min(cutoff, now - LEFTOVER_MIN_AGE), dry_run, skip=failed))
    return done


def _prune_leftovers(
    staging: pathlib.Path, cutoff: float, dry_run: bool, skip: set[pathlib.Path] = frozenset()
) -> list[Pruned]:
    """Remove ``.trash`` trees (always dead) and ``.incomplete`` ones untouched since ``cutoff`` with no
    installer holding their tree's lock (``skip``: trees this run already failed to delete)."""
    done = []
    for path in leftovers(staging):
        if path in skip:
            continue
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
                except OSError as err:
                    done.append(
                        _outcome(Pruned.FAILED, release, None, 0, leftover=path, error=f'could not move it: {err}')
                    )
                    continue
            elif not path.exists():  # another prune took it
                continue
        size, error = _delete(aside)
        action = Pruned.FAILED if error else Pruned.PRUNED
        done.append(_outcome(action, release, None, size, leftover=path, error=error))
    return done


def _delete(path: pathlib.Path) -> tuple[int, str | None]:
    """Delete a tree already renamed aside: the bytes deleted, and what went wrong if not all of it went (what is
    left keeps its hidden ``.trash`` name: the next prune tries again)."""
    size = tree_size(path)
    errors: list[str] = []
    shutil.rmtree(path, onerror=lambda _, name, info: errors.append(f'{name}: {info[1]}'))
    if not errors and not path.exists():
        return size, None
    left = tree_size(path)
    first = errors[0] if errors else 'still there'
    LOGGER.warning('Could not delete all of %s: %s', path, first)
    return size - left, f'could not delete all of it (first error: {first}); {left} bytes left in {path}'


def _outcome(
    action: str,
    path: pathlib.Path,
    used: float | None,
    size: int,
    leftover: pathlib.Path | None = None,
    holders: typing.Iterable[Lease] = (),
    error: str | None = None,
) -> Pruned:
    keyed = _KEYED.match(path.name)
    return Pruned(
        action=action,
        path=str(leftover or path),
        project=path.parent.name,
        release=keyed['release'] if keyed else path.name,
        used=used,
        size=size,
        leftover=leftover is not None,
        holders=tuple(str(h) for h in holders),
        error=error,
    )
