"""Local content-addressed cache of immutable objects (packages, committed states, packs, markers): every local copy
forml-s3 keeps of a registry's objects, under one size cap.

Blobs are named by their sha256 (``blobs/ab/abcd...<suffix>``), so the same content is stored once however
many keys name it, and a blob on disk is correct by construction. A blob is filled by downloading into an
``.incomplete`` file, verifying size and sha256 (hashed by the download as the bytes landed, where it can), then
renaming into place, all under a per-blob file lock:
many processes asking for the same object at once cause one download, the rest wait and reuse it.

Every file the cache serves is checked first: when a blob (or a cached marker) is stored, a *seal* beside it
(``seals/<its path>``) records its sha256 and its identity on disk (size, inode, mtime and ctime in
nanoseconds). Serving it compares one ``stat`` (an ``fstat`` of the open file for :meth:`BlobCache.read`) with the
seal: any write to the file, a replacement, even a reset mtime, changes the identity (ctime cannot be set back),
and the file is hashed again in full; content that no longer matches is deleted with a warning and reported
missing, so the caller fetches it again from the bucket. A blob without a seal (a cache written by an earlier
version) is hashed once and sealed. What the check cannot see is a change below the file system (a flipped bit on
the disk itself): that needs a full rehash, which ``get(..., rehash=True)`` forces.

The cache is capped (``max_bytes``) and the least recently used blobs are evicted. Knowing the cache's size takes
a stat of every blob, so a process does not scan after every insert (writing many blobs would be quadratic): after
a scan it may add :data:`RESCAN_FRACTION` of the cap before it scans again, and a scan that finds the cache over
its cap evicts down to :data:`EVICT_TO_FRACTION` of it. The cache can so exceed its cap by less than one rescan
step per process writing to it, between that process's scans. Copies of markers (:meth:`BlobCache.put_named`, under
``markers/``, named by registry, key and version) count towards the cap and are evicted like blobs. Eviction only
unlinks files, so the cache hands readers what eviction cannot pull away: bytes (:meth:`BlobCache.read`,
:meth:`BlobCache.load`) or a file opened before any other process could unlink it (:meth:`BlobCache.open`, which on a
miss opens the downloaded file before renaming it into place): an open file stays readable after it is unlinked
(POSIX), so no reader fetches the same blob twice. The last use of a blob is its seal's mtime (the blob itself is
never touched after it is sealed).

The cache is an optimisation: where it cannot be written (a full disk, a read-only or foreign directory, a file size
limit), the process warns once and goes on without it: what it fetches from then on is kept in a temporary directory
of its own (removed at exit) and fetched again by the next process. Only where that cannot be written either does a
fetch fail (:class:`Unwritable`, naming ``cache_dir``); storing a copy of what is already known (``put_named``, or a
package being pushed) never fails.
"""

import atexit
import contextlib
import fcntl
import hashlib
import io
import itertools
import json
import logging
import os
import pathlib
import shutil
import tempfile
import threading
import typing

import forml

from ..storage import digest
from ..storage.base import Corrupted, local_failure
from . import volatile

LOGGER = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 10 * 2**30
RESCAN_FRACTION = 0.05
"""A process scans the cache again once it has added this fraction of the cap since its last scan."""
EVICT_TO_FRACTION = 0.9
"""A scan that finds the cache over its cap evicts the least recently used blobs down to this fraction of it."""
SEALS = 'seals'
"""Directory under the cache root holding the seal of each cached file (same relative path)."""
NAMED = 'markers'
"""Directory under the cache root holding the copies stored by name (:meth:`BlobCache.put_named`: markers)."""
CHUNK = 4 * 2**20
"""Bytes read at a time when a file is hashed."""


def default_root() -> pathlib.Path:
    """``$XDG_CACHE_HOME/forml-s3`` (``~/.cache/forml-s3``)."""
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return pathlib.Path(base) / 'forml-s3'


def sha256_of(path: pathlib.Path) -> tuple[int, str]:
    """Size and sha256 of a local file (streamed)."""
    with path.open('rb') as file:
        return _hashed(file)


def _hashed(file: typing.BinaryIO) -> tuple[int, str]:
    """Size and sha256 of what is left to read from an open file (streamed)."""
    digest = hashlib.sha256()
    size = 0
    while chunk := file.read(CHUNK):
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


def _identity(stat: os.stat_result) -> dict[str, int]:
    """What changes whenever a file's content does: size, inode (replaced), mtime and ctime (written)."""
    return {
        'size': stat.st_size,
        'ino': stat.st_ino,
        'dev': stat.st_dev,
        'mtime_ns': stat.st_mtime_ns,
        'ctime_ns': stat.st_ctime_ns,
    }


class Unwritable(forml.FailedError):
    """Neither the cache nor a temporary directory can hold a fetched object (the local disks are full)."""


Download = typing.Callable[[pathlib.Path], str | None]
"""Writes an object's content to the given local path; may return the sha256 it hashed as it wrote it."""
Landing = typing.Callable[[pathlib.Path, digest.Sink], str | None]
"""A :data:`Download` that, where it returns the sha256, hashed the bytes as they landed in the buffer a reader
attached to the sink (from the sink's ``start`` on); None: it did not (the sink holds nothing)."""

_WARNED: set[str] = set()
"""Cache roots this process has warned about (once each)."""


def _read_into(file: typing.BinaryIO, view: memoryview) -> bool:
    """Fill ``view`` from the file's current position; False if the file ends first."""
    done = 0
    while done < len(view):
        count = file.readinto(view[done:])  # type: ignore[attr-defined]
        if not count:
            return False
        done += count
    return True


class _Buffer:
    """``size`` bytes filled in place (through :attr:`view`), then handed out as ``bytes`` without a copy.

    A ``BytesIO`` over zeroed bytes of its own (``bytes(size)``: pages the kernel zeroes only as they are first
    written) gives the writable view, and CPython's ``getvalue()`` returns that very bytes object once no view is
    left: the bytes a download hashed are the bytes handed out, and memory holds them once.
    """

    def __init__(self, size: int):
        self._file = io.BytesIO(bytes(size))
        self.view = self._file.getbuffer()

    def value(self) -> bytes:
        self.view.release()
        return self._file.getvalue()


class BlobCache(volatile.Volatile):
    """Blobs by sha256 under ``root`` with a size cap (see the module docs for when it is enforced).

    Thread-safe; pickles without its per-process state (the lock and the headroom), which starts afresh in the
    unpickled copy and in a forked child: their first insert scans.
    """

    def __init__(self, root: pathlib.Path | str | None = None, max_bytes: int = DEFAULT_MAX_BYTES):
        self.root: pathlib.Path = pathlib.Path(root) if root else default_root()
        self.max_bytes: int = int(max_bytes)
        self._init_volatile()

    VOLATILE = ('_pid', '_lock', '_headroom', 'scans', '_aside', '_why', '_sinks')

    def _init_volatile(self) -> None:
        self._pid: int = os.getpid()
        self._lock: threading.Lock = threading.Lock()
        self._headroom: int = 0
        """Bytes this process may still add before it scans again (0: scan at the next insert)."""
        self._sinks: dict[str, digest.Sink] = {}
        """The downloads running in this process that a reader may join (:meth:`load`), by sha256."""
        self.scans: int = 0
        """Scans (a stat of every blob) this process has made through this instance."""
        self._aside: pathlib.Path | None = None
        """Where this process keeps what it fetches once the cache cannot be written (``None``: the cache works)."""
        self._why: str = ''

    def __repr__(self):
        return f'BlobCache({self.root})'

    @property
    def rescan_step(self) -> int:
        """Bytes a process adds between two scans."""
        return max(1, int(self.max_bytes * RESCAN_FRACTION))

    def path(self, sha256: str, suffix: str = '') -> pathlib.Path:
        return self.root / 'blobs' / sha256[:2] / f'{sha256}{suffix}'

    def seal_path(self, path: pathlib.Path) -> pathlib.Path:
        """Where the seal of a cached file is kept (its mtime is the file's last use)."""
        return self.root / SEALS / pathlib.Path(path).relative_to(self.root)

    def seal(self, path: pathlib.Path, sha256: str, stat: os.stat_result | None = None) -> None:
        """Record that the file at ``path`` (as ``stat`` shows it; default: as it is now) holds content with this
        sha256, verified by the caller."""
        stat = stat if stat is not None else path.stat()
        seal = self.seal_path(path)
        try:
            seal.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(suffix='.incomplete', dir=seal.parent)
            try:
                with os.fdopen(fd, 'w') as file:
                    json.dump({'sha256': sha256, **_identity(stat)}, file)
                os.replace(temp, seal)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
        except OSError as err:  # an unsealed file is hashed in full at its next use: correct, only slower
            if not local_failure(err):
                raise
            self._unusable(err)

    def _sealed(self, path: pathlib.Path, stat: os.stat_result) -> str | None:
        """The sha256 the seal records for the file as ``stat`` shows it; None if unsealed or changed since."""
        try:
            record = json.loads(self.seal_path(path).read_text())
        except (FileNotFoundError, ValueError):
            return None
        if not isinstance(record, dict) or any(record.get(k) != v for k, v in _identity(stat).items()):
            return None
        return record.get('sha256')

    def _recorded(self, path: pathlib.Path) -> str | None:
        """The sha256 the seal of ``path`` records, whatever the file's identity now (None: no seal)."""
        try:
            record = json.loads(self.seal_path(path).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return record.get('sha256') if isinstance(record, dict) else None

    def _used(self, path: pathlib.Path) -> None:
        try:
            os.utime(self.seal_path(path))
        except OSError as err:  # gone meanwhile, or a cache that cannot be written (still read)
            if not (isinstance(err, FileNotFoundError) or local_failure(err)):
                raise

    def _discard(self, path: pathlib.Path, sha256: str, got: str) -> None:
        """Delete a cached file whose content no longer matches what it was stored as (warned: a disk or a person
        changed the cache)."""
        LOGGER.warning(
            'Cached %s no longer matches its sha256 %s (it now hashes to %s): deleted, fetching it again',
            path, sha256, got,
        )  # fmt: skip
        for stale in (path, self.seal_path(path)):
            try:
                stale.unlink()
            except OSError as err:  # gone, or a cache that cannot be written: never served either way (not sealed)
                if not (isinstance(err, FileNotFoundError) or local_failure(err)):
                    raise

    def _rehash(self, path: pathlib.Path, sha256: str) -> bool:
        """Hash a cached file in full: seal it if it holds ``sha256``, else discard it. Whether it holds it."""
        try:
            before = path.stat()
            _, got = sha256_of(path)
            after = path.stat()
        except FileNotFoundError:
            return False
        if got != sha256:
            self._discard(path, sha256, got)
            return False
        if _identity(before) == _identity(after):  # else it changed while hashed: checked again at its next use
            self.seal(path, sha256, after)
        return True

    def get(self, sha256: str, suffix: str = '', *, rehash: bool = False) -> pathlib.Path | None:
        """The blob's path if cached and unchanged since it was stored (marked as recently used), else None.

        A blob changed since (or never sealed) is hashed again: kept if it still holds ``sha256``, deleted with a
        warning if not. ``rehash`` hashes it whatever its seal says.
        """
        path = self.path(sha256, suffix)
        try:
            stat = path.stat()
        except FileNotFoundError:
            return self._kept_aside(sha256, suffix)
        if (rehash or self._sealed(path, stat) != sha256) and not self._rehash(path, sha256):
            return None
        self._used(path)
        return path

    def cached(self, sha256: str, suffix: str = '') -> bool:
        """Whether a blob is there (one stat; not checked: :meth:`get` and :meth:`read` check before serving)."""
        return self.path(sha256, suffix).exists() or self._kept_aside(sha256, suffix) is not None

    def read(self, sha256: str) -> bytes | None:
        """The blob's bytes if cached and still holding ``sha256``, else None (a changed blob is deleted)."""
        data = self._read(self.path(sha256), sha256)
        if data is None and (aside := self._kept_aside(sha256)) is not None:
            with contextlib.suppress(FileNotFoundError):
                return aside.read_bytes()
        return data

    def read_span(self, sha256: str, offset: int, size: int, span_sha256: str) -> bytes | None:
        """Bytes ``[offset, offset + size)`` of a cached blob if they hash to ``span_sha256``, else None (not
        cached, evicted meanwhile, or changed: the caller fetches the blob again, which checks it whole).

        The blob's seal is not consulted: the span's own sha256 checks what is served (a state cut from its pack
        costs one ``open`` and one ``pread``, and no file of its own)."""
        path = self.path(sha256)
        if not path.exists():
            path = self._kept_aside(sha256) or path
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size or hashlib.sha256(data).hexdigest() != span_sha256:
            return None
        self._used(path)
        return data

    def _kept_aside(self, sha256: str, suffix: str = '') -> pathlib.Path | None:
        """The file this process fetched since the cache could not be written (private to it, verified on fetch)."""
        if self._aside is None:
            return None
        path = self._aside / f'{sha256}{suffix}'
        return path if path.exists() else None

    def named(self, name: str) -> pathlib.Path:
        """Where a copy stored by name is kept."""
        return self.root / NAMED / name

    def read_named(self, name: str) -> bytes | None:
        """The bytes stored with :meth:`put_named`, if there and unchanged since; else None (deleted if changed)."""
        path = self.named(name)
        sha256 = self._recorded(path)
        if sha256 is None:
            return None
        return self._read(path, sha256)

    def _read(self, path: pathlib.Path, sha256: str) -> bytes | None:
        """The bytes of a cached file, checked: its identity matches its seal before and after the read (one
        ``fstat`` each), else the bytes read are hashed."""
        try:
            file = path.open('rb')
        except FileNotFoundError:  # evicted meanwhile
            return None
        with file:
            before = os.fstat(file.fileno())
            sealed = self._sealed(path, before) == sha256
            data = file.read()
            after = os.fstat(file.fileno())
        unchanged = _identity(before) == _identity(after)
        if not (sealed and unchanged):
            got = hashlib.sha256(data).hexdigest()
            if got != sha256:
                self._discard(path, sha256, got)
                return None
            if unchanged:
                self.seal(path, sha256, after)
        self._used(path)
        return data

    def put_named(self, name: str, data: bytes) -> None:
        """Keep a copy of bytes by a name of the caller's (a marker's registry, key and version), counted towards the
        cap like a blob; nothing (after a warning) where the cache cannot be written."""
        path = self.named(name)
        if self._write(path, data):
            self._added(len(data), keep=path)

    def _write(self, path: pathlib.Path, data: bytes) -> bool:
        """Store bytes at a path under the cache root (atomically), sealed with their sha256; whether it was stored
        (not where the cache cannot be written: warned once)."""
        if self._aside is not None:
            return False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temp = tempfile.mkstemp(suffix='.incomplete', dir=path.parent)
            try:
                with os.fdopen(fd, 'wb') as file:
                    digest.write_all(file, data)
                os.replace(temp, path)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)
            self.seal(path, hashlib.sha256(data).hexdigest())
        except OSError as err:
            if not local_failure(err):
                raise
            self._unusable(err)
            return False
        return self._aside is None  # (the seal may have found the cache unwritable)

    def _unusable(self, err: OSError) -> pathlib.Path:
        """Go on without the cache (it cannot be written): warn once, and keep fetched objects in a temporary
        directory of this process from now on (its path, removed at exit)."""
        with self._volatile():
            if self._aside is None:
                self._why = err.strerror or str(err)  # (a copy's error names its source file: not helpful)
                # made at its first use (by :meth:`_fetch_aside`, which names both disks if it cannot be)
                aside = pathlib.Path(tempfile.gettempdir()) / f'forml-s3-uncached-{os.getpid()}-{id(self):x}'
                atexit.register(shutil.rmtree, aside, ignore_errors=True)
                self._aside = aside
                if str(self.root) not in _WARNED:
                    _WARNED.add(str(self.root))
                    LOGGER.warning(
                        'The cache_dir %s cannot be written (%s): going on without it, objects are fetched again by '
                        'each process; free space there or set cache_dir to a writable directory', self.root, self._why,
                    )  # fmt: skip
            return self._aside

    def fetch(
        self,
        sha256: str,
        size: int,
        download: Download,
        *,
        name: str,
        suffix: str = '',
        landing: Landing | None = None,
    ) -> pathlib.Path:
        """The blob's path, downloading it first (once per machine) if not cached.

        The path names a file another process may evict at any time: a caller that reads the blob asks for
        :meth:`open` (or :meth:`load`) instead.

        Args:
            sha256: Expected content hash.
            size: Expected content size.
            download: Writes the content to the given local path; may return the sha256 of what it wrote, hashed as
                it wrote it (then the file is not read again to verify it; None: it is).
            name: What is downloaded (the key), for the error message on a mismatch.
            suffix: File name suffix of the blob (e.g. ``.4ml``).
            landing: Downloads in place of ``download`` so that a reader in this process may join it
                (:meth:`load`).

        Raises:
            Corrupted: The downloaded content does not match size and sha256.
        """
        if (cached := self.get(sha256, suffix)) is not None:
            return cached
        path, file = self._fill(sha256, size, download, name=name, suffix=suffix, landing=landing)
        file.close()
        return path

    def open(self, sha256: str, size: int, download: Download, *, name: str, suffix: str = '') -> typing.BinaryIO:
        """The blob opened for reading (the caller closes it), downloading it first (once per machine) if not cached;
        arguments as for :meth:`fetch`.

        It is opened before any eviction can unlink it (a cached blob is opened, then checked through the open file;
        a downloaded one is opened before it is renamed into place), so it reads whole however soon it is evicted.
        """
        if (file := self._open_cached(sha256, suffix)) is not None:
            return file
        return self._fill(sha256, size, download, name=name, suffix=suffix)[1]

    def load(self, sha256: str, size: int, download: Download, *, name: str, landing: Landing | None = None) -> bytes:
        """The blob's bytes (see :meth:`open`).

        With ``landing`` (then it downloads a missing blob in place of ``download``), the bytes are those the
        download hashed as they landed - this process's download or one already running in it (a prefetch), from
        the moment this call joined it - so the file is not read again (only what was hashed before it joined).
        """
        if landing is None:
            with self.open(sha256, size, download, name=name) as file:
                return file.read()
        if (cached := self._open_cached(sha256)) is not None:
            with cached:
                return cached.read()
        with self._volatile():
            running = self._sinks.get(sha256)
        joined = _Buffer(size) if running is not None else None
        if running is not None and not running.attach(joined.view):  # type: ignore[union-attr]
            running, joined = None, None  # it has another reader, or just ended
        # a buffer of its own, not the joined one: where the cache is bypassed, both downloads may run at once
        own, mine = digest.Sink(), _Buffer(size)  # (pages the kernel provides only as they are written)
        own.attach(mine.view)
        with self._fill(sha256, size, download, name=name, suffix='', landing=landing, sink=own)[1] as file:
            for sink, buffer in ((own, mine), (running, joined)):
                if sink is None or buffer is None or not sink.verified:
                    continue
                # these bytes are those whose sha256 was checked; what was hashed before the buffer was attached
                # is read from the (verified) file
                start = size if sink.start is None else sink.start
                with buffer.view[:start] as prefix:
                    whole = _read_into(file, prefix)
                if whole:  # (no view left on the buffer: its bytes are handed out, not copied)
                    return buffer.value()
                file.seek(0)
                break
            for sink in (own, running):  # before the file is read: the buffers go with their last reference
                if sink is not None:
                    sink.detach()  # (not released: where the cache is bypassed, a download may still copy into one)
            del mine, joined
            return file.read()  # cached by another process meanwhile, or the download did not land it in memory

    def _open_cached(self, sha256: str, suffix: str = '') -> typing.BinaryIO | None:
        """The cached blob opened and checked (see :meth:`_open`), else None."""
        if (file := self._open(self.path(sha256, suffix), sha256)) is not None:
            return file
        if (aside := self._kept_aside(sha256, suffix)) is not None:
            with contextlib.suppress(FileNotFoundError):
                return aside.open('rb')
        return None

    def _open(self, path: pathlib.Path, sha256: str) -> typing.BinaryIO | None:
        """The cached file opened for reading, checked against its seal by an ``fstat`` of the open file (hashed
        through it if changed or unsealed); None if missing, or no longer holding ``sha256`` (then deleted)."""
        try:
            file = path.open('rb')
        except FileNotFoundError:
            return None
        try:
            stat = os.fstat(file.fileno())
            if self._sealed(path, stat) != sha256:
                _, got = _hashed(file)
                if got != sha256:
                    self._discard(path, sha256, got)
                    file.close()
                    return None
                if _identity(stat) == _identity(os.fstat(file.fileno())):
                    self.seal(path, sha256, stat)
                file.seek(0)
            self._used(path)
        except BaseException:
            file.close()
            raise
        return file

    def _fill(
        self,
        sha256: str,
        size: int,
        download: Download,
        *,
        name: str,
        suffix: str,
        landing: Landing | None = None,
        sink: digest.Sink | None = None,
    ) -> tuple[pathlib.Path, typing.BinaryIO]:
        """Download a blob not cached (into the cache, else aside): its path and the file opened.

        With ``landing`` it downloads in place of ``download``, through ``sink`` (a new one if None), which a reader
        in this process may join meanwhile (:meth:`load`); the sink is ``verified`` if this call's download hashed
        the blob as it landed and its sha256 matched (set before the blob is renamed into place)."""
        if landing is None:
            return self._fill_by(sha256, size, download, name=name, suffix=suffix)
        joinable = sink if sink is not None else digest.Sink()
        with self._volatile():
            registered = self._sinks.setdefault(sha256, joinable)
        owner = registered is joinable
        if not owner and sink is None:  # wanting no bytes, it downloads through the reader's sink waiting for it
            joinable = registered

        def land(target: pathlib.Path) -> str | None:
            # under the file lock one download runs at a time; where the cache is bypassed (no lock), a sink borrowed
            # from a reader could see two at once: then one of its own
            through = joinable if owner or self._aside is None else digest.Sink()
            through.restart()  # (a download again through the same sink, aside: nothing of the first one counts)
            hashed = landing(target, through)
            # before the file lock is let go: a reader that waited for it finds the bytes it joined for verified
            through.verified = hashed == sha256
            return hashed

        try:
            return self._fill_by(sha256, size, land, name=name, suffix=suffix)
        finally:
            if owner:
                joinable.close()
                with self._volatile():
                    del self._sinks[sha256]

    def _fill_by(
        self, sha256: str, size: int, download: Download, *, name: str, suffix: str
    ) -> tuple[pathlib.Path, typing.BinaryIO]:
        """:meth:`_fill` by ``download``."""
        if self._aside is None:
            try:
                return self._fetch(sha256, size, download, name=name, suffix=suffix)
            except OSError as err:
                if not local_failure(err):
                    raise
                self._unusable(err)
        return self._fetch_aside(sha256, size, download, name=name, suffix=suffix)

    def _fetch_aside(
        self, sha256: str, size: int, download: Download, *, name: str, suffix: str
    ) -> tuple[pathlib.Path, typing.BinaryIO]:
        """:meth:`_fill` into this process's temporary directory (the cache cannot be written)."""
        assert self._aside is not None
        target = self._aside / f'{sha256}{suffix}'
        with contextlib.suppress(FileNotFoundError):
            return target, target.open('rb')  # private to this process, verified when fetched
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            return target, self._download(target, sha256, size, download, name)
        except OSError as err:
            if not local_failure(err):
                raise
            raise Unwritable(
                f'Cannot store {name} locally: the cache_dir {self.root} cannot be written ({self._why}), nor the '
                f'temporary directory {self._aside.parent} ({err.strerror}); free space or set cache_dir to a '
                'writable directory with room for it'
            ) from None

    def _download(
        self,
        target: pathlib.Path,
        sha256: str,
        size: int,
        download: Download,
        name: str,
    ) -> typing.BinaryIO:
        """Download into a temporary file beside ``target``, verify size and sha256, rename into place; the file,
        opened before the rename (so no eviction can take it from the caller)."""
        fd, temp = tempfile.mkstemp(suffix='.incomplete', dir=target.parent)
        os.close(fd)
        temp_path = pathlib.Path(temp)
        file = None
        try:
            hashed = download(temp_path)
            file = temp_path.open('rb')
            got_size = os.fstat(file.fileno()).st_size
            got_sha = hashed if isinstance(hashed, str) else sha256_of(temp_path)[1]
            if (got_size, got_sha) != (size, sha256):
                raise Corrupted.mismatch(name, size, sha256, got_size, got_sha)
            os.replace(temp_path, target)
        except BaseException:
            if file is not None:
                file.close()
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                temp_path.unlink()
        return file

    def _fetch(
        self, sha256: str, size: int, download: Download, *, name: str, suffix: str
    ) -> tuple[pathlib.Path, typing.BinaryIO]:
        """:meth:`_fill` into the cache (``OSError`` where the cache cannot be written)."""
        target = self.path(sha256, suffix)
        with file_lock(self.root / 'locks' / f'{sha256}.lock'):
            if (cached := self._open(target, sha256)) is not None:
                return target, cached  # another process downloaded it while we waited
            target.parent.mkdir(parents=True, exist_ok=True)
            file = self._download(target, sha256, size, download, name)
            try:
                self.seal(target, sha256, os.fstat(file.fileno()))
            except BaseException:
                file.close()
                raise
        self._added(size, keep=target)
        return target, file

    def put(self, data: bytes, sha256: str, suffix: str = '') -> pathlib.Path:
        """Store bytes already known (and verified by the caller) under their sha256."""
        if (cached := self.get(sha256, suffix)) is not None:
            return cached
        target = self.path(sha256, suffix)
        if not self._write(target, data):  # the cache cannot be written
            path, file = self._fetch_aside(
                sha256, len(data), lambda t: digest.write_file(t, data), name=str(target), suffix=suffix
            )
            file.close()
            return path
        self._added(len(data), keep=target)
        return target

    def blobs(self) -> list[tuple[pathlib.Path, os.stat_result]]:
        """All complete blobs and copies stored by name with their stat, least recently used (by their seal's mtime)
        first."""
        found = []
        for path in itertools.chain((self.root / 'blobs').glob('*/*'), (self.root / NAMED).glob('*')):
            if path.name.endswith('.incomplete'):
                continue
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                try:
                    used = self.seal_path(path).stat().st_mtime_ns
                except FileNotFoundError:  # unsealed (an earlier version's cache, or being sealed)
                    used = stat.st_mtime_ns
                found.append((used, path, stat))
        return [(path, stat) for _, path, stat in sorted(found, key=lambda item: item[0])]

    def _added(self, size: int, keep: pathlib.Path) -> int:
        """Account for a blob of ``size`` bytes this process just stored at ``keep``: scan (and evict) once the
        bytes added since the last scan reach the rescan step; returns the bytes freed."""
        with self._volatile():
            self._headroom -= size
            if self._headroom > 0:
                return 0
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
                with contextlib.suppress(FileNotFoundError):
                    self.seal_path(path).unlink()
        self._headroom = self.rescan_step
        return freed
