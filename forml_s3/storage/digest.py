"""The sha256 of a file while it is being written at offsets, in order, overlapping the writes.

A ranged download writes its parts into the target file as they arrive, out of order. :class:`Follower` is told
which spans have landed; a thread hashes the contiguous prefix as it grows, reading it back from the page cache
(``pread`` into one reused buffer), so no part is held in memory for the hash's sake and the hash of the whole
object is ready a moment after its last byte lands: the cache never reads a fresh download again to verify it.
A reader in the same process that wants the object's bytes can attach a buffer of its size to the download's
:class:`Sink` while it runs: from then on the threads that land the bytes copy them into that buffer too (``pread``
from the page cache they were just written to), and the hashing thread hashes them there (what landed before is
read into it from the file), so the reader has the bytes the hash is of without reading the whole file again (only
the prefix hashed before it attached).
"""

import errno
import hashlib
import os
import threading
import typing

CHUNK = 4 * 2**20
"""How much of the file the hashing thread reads at a time (one buffer of this size, reused)."""
STAGGER = 16
"""The parts of a download's last window differ in size by ``part_size / STAGGER`` (see :func:`spans`)."""
WRITE_SLICE = 256 * 2**10
"""The most one call writes to a local file. Linux sizes the page-cache folios of a write by its length (ext4 has
large folios), so a write of a MiB or more takes high-order free blocks, and in a VM those are the blocks its free
page reporting hands back to the host: each page's first touch then faults on the host, unseen by the guest. On
the benchmarks' VM, once earlier runs had churned its memory, a 50 MiB package extracted in 1 MiB writes took
0.3-1.0 s (perf: 76% in the kernel's copy into the page cache) and 0.13-0.16 s in writes of this size, the size
s3transfer writes in (docs/benchmarks.md, "Small writes to the page cache")."""


def write_at(fd: int, data: typing.Any, offset: int) -> None:
    """Write all of ``data`` at ``offset``, at most :data:`WRITE_SLICE` at a time (``pwrite`` may write less: a
    full disk, a signal)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view[:WRITE_SLICE], offset)
        if written <= 0:
            raise OSError(errno.EIO, f'Nothing written at offset {offset}')
        view, offset = view[written:], offset + written


def read_at(fd: int, view: memoryview, offset: int) -> None:
    """Fill all of ``view`` from the file at ``offset``."""
    while view:
        count = os.preadv(fd, [view], offset)
        if count <= 0:
            raise EOFError(f'File shorter than reported: nothing at {offset}')
        view, offset = view[count:], offset + count


def write_all(file: typing.BinaryIO, data: typing.Any) -> None:
    """Write all of ``data`` to a binary file at its position, at most :data:`WRITE_SLICE` at a time."""
    view = memoryview(data)
    for start in range(0, len(view), WRITE_SLICE):
        file.write(view[start : start + WRITE_SLICE])


def write_file(path: os.PathLike, data: typing.Any) -> None:
    """``pathlib.Path.write_bytes``, at most :data:`WRITE_SLICE` at a time."""
    with open(path, 'wb') as file:
        write_all(file, data)


def spans(size: int, part_size: int, parallel: int) -> list[tuple[int, int]]:
    """The ranges ``[start, end)`` of a download of ``size`` bytes in parts of about ``part_size``, ``parallel`` in
    flight, in the order they are to be requested: as many as equal parts would make.

    The parts in flight share the bandwidth, so parts of one size started together land together, and the hash,
    which follows the landed prefix in order, would meet the last window's parts all landed at once and hash up to
    ``parallel - 1`` parts after the last byte (~70 ms for 112 MiB). So the last window's parts grow by
    ``part_size / STAGGER`` each: they end one after another, in order, and the hash follows the last one as it
    lands. Where each stream's rate is capped (the network, not the CPU, limits it), the last part runs alone for
    its last ``part_size / STAGGER`` bytes: about as long as the hash tail it saves at 90 MiB/s a stream.
    """
    if size <= 0:
        return []
    count = -(-size // part_size)
    window = min(count, parallel)
    steady = count - window
    ranges = [(index * part_size, (index + 1) * part_size) for index in range(steady)]
    first = steady * part_size
    mean = (size - first) / window
    step = min(part_size // STAGGER, mean / window)  # (keeps the first part of the window over half the mean)
    start = first
    for index in range(window):
        end = size if index == window - 1 else first + round((index + 1) * (mean + step * (index - window + 1) / 2))
        ranges.append((start, end))
        start = end
    return ranges


class Sink:
    """Where a download's bytes go as they are hashed, once a reader has attached a buffer (:meth:`attach`); and
    who is told when they have all landed (``landed``), before the hash of the last ones is done."""

    def __init__(self, landed: typing.Callable[[int], None] | None = None) -> None:
        self._landed = landed
        self._lock = threading.Lock()
        self._buffer: memoryview | None = None
        self._closed = False
        self.start: int | None = None
        """The first offset hashed in the buffer (before it: only in the file); None: nothing was."""
        self.verified = False
        """Set by the download's owner: the bytes hashed matched the expected sha256 (so do those in the buffer)."""

    def attach(self, buffer: memoryview) -> bool:
        """Have the rest hashed in ``buffer`` (of the object's size); False if another buffer is attached, or the
        download is over."""
        with self._lock:
            if self._buffer is not None or self._closed:
                return False
            self._buffer = buffer
            return True

    def fill(self, fd: int, start: int, end: int) -> bool:
        """Read the bytes ``[start, end)`` that landed in the file open at ``fd`` into the attached buffer (by the
        thread that landed them); False if none is attached.

        A ``pread`` rather than a copy of the landed chunk: the kernel's copy runs without the GIL, where a slice
        assignment would hold it while each fresh page of the buffer faults in (measured on SeaweedFS, a 256 MiB
        read's landing threads then queued for the GIL, and the hashing thread with them: docs/benchmarks.md,
        "How forml-s3 reads a large object")."""
        buffer = self._buffer  # (attached before, dropped only once the download is over)
        if buffer is None:
            return False
        read_at(fd, buffer[start:end], start)
        return True

    def restart(self) -> None:
        """A download (again) through this sink: not verified, nothing hashed in the buffer yet."""
        with self._lock:
            self.verified = False
            self.start = None

    def detach(self) -> None:
        """Let go of the attached buffer (not released: a landing thread may hold it a moment longer); what lands
        from now on is hashed from the file."""
        with self._lock:
            self._buffer = None

    def all_landed(self, fd: int) -> None:
        """Every byte is in the file open at ``fd`` (read it with ``pread``, or a duplicate of the descriptor), not
        verified yet: the ``landed`` callback runs now, in the downloading thread, while the hash finishes. The
        callback must not raise, and must use what it read only once the download's sha256 matched."""
        if self._landed is not None:
            self._landed(fd)

    def claim(self, offset: int, count: int) -> memoryview | None:
        """Where to read the ``count`` bytes at ``offset`` to hash them: the attached buffer's span, else None."""
        with self._lock:
            if self._buffer is None:
                return None
            if self.start is None:
                self.start = offset
            return self._buffer[offset : offset + count]

    def close(self) -> None:
        """No more bytes will be hashed: a buffer attached from now on holds nothing (and the sink lets go of it)."""
        with self._lock:
            self._closed = True
            self._buffer = None


class Follower:
    """Hashes ``size`` bytes of the file open at ``fd`` as :meth:`landed` reports them written.

    Use as a context manager: leaving the block stops the thread (whether or not every byte landed).
    """

    def __init__(self, fd: int, size: int, sink: Sink | None = None):
        self._fd = fd
        self._size = size
        self._sink = sink
        """Where the bytes are read to be hashed once a reader attached a buffer (else into one reused buffer)."""
        self._spans: dict[int, int] = {}
        """Landed spans beyond the contiguous prefix: start -> end."""
        self._uncopied: list[tuple[int, int]] = []
        """Landed spans not copied into the sink's buffer as they landed (before a reader attached it)."""
        self._frontier = 0
        """Every byte before this offset has landed."""
        self._stopped = False
        """No more bytes will land: hash what has, then end."""
        self._abandoned = False
        """The result is not wanted (the block was left): end now."""
        self._changed = threading.Condition()
        self._digest = hashlib.sha256()
        self.hashed = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name='forml-s3-digest', daemon=True)

    def __enter__(self) -> 'Follower':
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        with self._changed:
            self._stopped = self._abandoned = True
            self._changed.notify_all()
        self._thread.join()

    def landed(self, start: int, end: int) -> None:
        """Bytes ``[start, end)`` are written to the file: the calling thread copies them into the buffer a reader
        attached, if any (the hashing thread then hashes them there without reading them)."""
        if end <= start:
            return
        copied = self._sink is not None and self._sink.fill(self._fd, start, end)
        with self._changed:
            if not copied and self._sink is not None:  # (without a sink every span is read from the file anyway)
                self._uncopied.append((start, end))
            if start == self._frontier:
                frontier = end
                while frontier in self._spans:  # later spans that waited for this one
                    frontier = self._spans.pop(frontier)
                self._frontier = frontier
                self._changed.notify_all()
            else:
                self._spans[start] = end

    def _run(self) -> None:
        view: memoryview | None = None  # made when first needed: a reader's buffer mostly leaves it unneeded
        try:
            while self.hashed < self._size:
                with self._changed:
                    self._changed.wait_for(lambda: self._frontier > self.hashed or self._stopped)
                    if self._abandoned or self._frontier <= self.hashed:
                        return  # abandoned, or stopped before the rest landed
                    limit = self._frontier
                while self.hashed < limit and not self._abandoned:
                    step = min(CHUNK, limit - self.hashed)
                    into = self._sink.claim(self.hashed, step) if self._sink is not None else None
                    if into is None or not self._copied(self.hashed, self.hashed + step):  # (else copied there)
                        if into is None:
                            view = view if view is not None else memoryview(bytearray(CHUNK))
                            into = view[:step]
                        read_at(self._fd, into, self.hashed)
                    self._digest.update(into)  # releases the GIL: overlaps the download
                    self.hashed += step
        except BaseException as err:  # handed to the caller by hexdigest()
            self._error = err

    def _copied(self, start: int, end: int) -> bool:
        """Whether every landed byte of ``[start, end)`` was copied into the attached buffer as it landed."""
        with self._changed:
            self._uncopied = [(begin, until) for begin, until in self._uncopied if until > start]  # (hashed: done)
            return not any(begin < end and start < until for begin, until in self._uncopied)

    def hexdigest(self) -> str:
        """The sha256 of the ``size`` bytes, once all have landed (waits for the thread to hash the rest)."""
        with self._changed:
            self._stopped = True
            self._changed.notify_all()
        self._thread.join()
        if self._error is not None:
            raise self._error
        if self.hashed != self._size:
            raise EOFError(f'Only {self.hashed} of {self._size} bytes landed')
        return self._digest.hexdigest()
