"""Local content-addressed cache of immutable objects (packages, committed states, markers).

Blobs are named by their sha256 (``blobs/ab/abcd...<suffix>``), so the same content is stored once however
many keys name it, and a blob on disk is correct by construction. A blob is filled by downloading into an
``.incomplete`` file, verifying size and sha256, then renaming into place, all under a per-blob file lock:
many processes asking for the same object at once cause one download, the rest wait and reuse it.

The cache is capped (``max_bytes``) and the least recently used blobs are evicted. Knowing the cache's size takes
a stat of every blob, so a process does not scan after every insert (writing many blobs would be quadratic): after
a scan it may add :data:`RESCAN_FRACTION` of the cap before it scans again, and a scan that finds the cache over
its cap evicts down to :data:`EVICT_TO_FRACTION` of it. The cache can so exceed its cap by less than one rescan
step per process writing to it, between that process's scans. Eviction only unlinks files: a reader that already
opened a blob keeps reading it (POSIX semantics), and a reader that finds it gone simply fetches it again.
"""

import contextlib
import fcntl
import hashlib
import logging
import os
import pathlib
import tempfile
import threading
import typing

import forml

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**30
RESCAN_FRACTION = 0.05
"""A process scans the cache again once it has added this fraction of the cap since its last scan."""
EVICT_TO_FRACTION = 0.9
"""A scan that finds the cache over its cap evicts the least recently used blobs down to this fraction of it."""


def default_root() -> pathlib.Path:
    """``$XDG_CACHE_HOME/forml-s3`` (``~/.cache/forml-s3``)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return pathlib.Path(base) / 'forml-s3'


def sha256_of(path: pathlib.Path) -> tuple[int, str]:
    """Size and sha256 of a local file (streamed)."""
    digest = hashlib.sha256()
    size = 0
    with path.open('rb') as file:
        while chunk := file.read(4 * 2**20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


@contextlib.contextmanager
def file_lock(path: pathlib.Path) -> typing.Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), held for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a+b') as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


class Corrupted(forml.InvalidError):
    """Downloaded content does not match the size/sha256 recorded in its marker."""


class BlobCache:
    """Blobs by sha256 under ``root`` with a size cap (see the module docs for when it is enforced).

    Thread-safe; pickles without its per-process state (the lock and the headroom), which starts afresh in the
    unpickled copy and in a forked child: their first insert scans.
    """

    def __init__(self, root: pathlib.Path | str | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root: pathlib.Path = pathlib.Path(root) if root else default_root()
        self.max_bytes: int = int(max_bytes)
        self._init_volatile()

    def _init_volatile(self) -> None:
        self._pid: int = os.getpid()
        self._lock: threading.Lock = threading.Lock()
        self._headroom: int = 0
        """Bytes this process may still add before it scans again (0: scan at the next insert)."""
        self.scans: int = 0
        """Scans (a stat of every blob) this process has made through this instance."""

    def __getstate__(self):
        state = self.__dict__.copy()
        for volatile in ('_pid', '_lock', '_headroom', 'scans'):
            state.pop(volatile, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_volatile()

    def __repr__(self):
        return f'BlobCache({self.root})'

    @property
    def rescan_step(self) -> int:
        """Bytes a process adds between two scans."""
        return max(1, int(self.max_bytes * RESCAN_FRACTION))

    def path(self, sha256: str, suffix: str = '') -> pathlib.Path:
        return self.root / 'blobs' / sha256[:2] / f'{sha256}{suffix}'

    def get(self, sha256: str, suffix: str = '') -> pathlib.Path | None:
        """The blob's path if cached (marked as recently used), else None."""
        path = self.path(sha256, suffix)
        try:
            os.utime(path)
        except FileNotFoundError:
            return None
        return path

    def read(self, sha256: str) -> bytes | None:
        """The blob's bytes if cached, else None."""
        path = self.get(sha256)
        if path is None:
            return None
        try:
            return path.read_bytes()
        except FileNotFoundError:  # evicted meanwhile
            return None

    def fetch(
        self,
        sha256: str,
        size: int,
        download: typing.Callable[[pathlib.Path], None],
        *,
        name: str,
        suffix: str = '',
    ) -> pathlib.Path:
        """The blob's path, downloading it first (once per machine) if not cached.

        Args:
            sha256: Expected content hash.
            size: Expected content size.
            download: Writes the content to the given local path.
            name: What is downloaded (the key), for the error message on a mismatch.
            suffix: File name suffix of the blob (e.g. ``.4ml``).

        Raises:
            Corrupted: The downloaded content does not match size and sha256.
        """
        if (cached := self.get(sha256, suffix)) is not None:
            return cached
        target = self.path(sha256, suffix)
        with file_lock(self.root / 'locks' / f'{sha256}.lock'):
            if (cached := self.get(sha256, suffix)) is not None:
                return cached  # another process downloaded it while we waited
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(suffix='.incomplete', dir=target.parent)
            os.close(fd)
            temp_path = pathlib.Path(temp)
            try:
                download(temp_path)
                got_size, got_sha = sha256_of(temp_path)
                if (got_size, got_sha) != (size, sha256):
                    raise Corrupted(
                        f'Object {name} is corrupted: expected {size} bytes with sha256 {sha256}, '
                        f'got {got_size} bytes with sha256 {got_sha}; restore it or retrain (`forml-s3 verify`)'
                    )
                os.replace(temp_path, target)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    temp_path.unlink()
        self._added(size, keep=target)
        return target

    def put(self, data: bytes, sha256: str, suffix: str = '') -> pathlib.Path:
        """Store bytes already known (and verified by the caller) under their sha256."""
        target = self.path(sha256, suffix)
        if target.exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(suffix='.incomplete', dir=target.parent)
        with os.fdopen(fd, 'wb') as file:
            file.write(data)
        os.replace(temp, target)
        self._added(len(data), keep=target)
        return target

    def blobs(self) -> list[tuple[pathlib.Path, os.stat_result]]:
        """All complete blobs with their stat, least recently used first."""
        found = []
        for path in (self.root / 'blobs').glob('*/*'):
            if path.name.endswith('.incomplete'):
                continue
            with contextlib.suppress(FileNotFoundError):
                found.append((path, path.stat()))
        return sorted(found, key=lambda item: item[1].st_mtime_ns)

    def size(self) -> int:
        return sum(stat.st_size for _, stat in self.blobs())

    def _added(self, size: int, keep: pathlib.Path) -> int:
        """Account for a blob of ``size`` bytes this process just stored at ``keep``: scan (and evict) once the
        bytes added since the last scan reach the rescan step; returns the bytes freed."""
        with self._volatile():
            self._headroom -= size
            if self._headroom > 0:
                return 0
            return self._scan(keep)

    def evict(self, keep: pathlib.Path | None = None) -> int:
        """Scan now: if the cache is over ``max_bytes``, unlink the least recently used blobs (never ``keep``) down to
        :data:`EVICT_TO_FRACTION` of it; returns the bytes freed."""
        with self._volatile():
            return self._scan(keep)

    @contextlib.contextmanager
    def _volatile(self) -> typing.Iterator[None]:
        """This process's lock over the headroom (made anew in a forked child, where the parent's may be held)."""
        if self._pid != os.getpid():
            self._init_volatile()
        with self._lock:
            yield

    def _scan(self, keep: pathlib.Path | None) -> int:
        """Stat every blob, evict if over the cap, and start a new rescan step (the caller holds the lock)."""
        self.scans += 1
        blobs = self.blobs()
        total = sum(stat.st_size for _, stat in blobs)
        freed = 0
        if total > self.max_bytes:
            target = int(self.max_bytes * EVICT_TO_FRACTION)
            for path, stat in blobs:
                if total - freed <= target:
                    break
                if keep is not None and path == keep:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    freed += stat.st_size
                    LOGGER.debug('Evicted %s (%d bytes)', path.name, stat.st_size)
        self._headroom = self.rescan_step
        return freed
