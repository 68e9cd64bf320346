"""Process-wide background transfers: a bounded, fork-safe thread pool and the table of pending uploads.

ForML writes states one at a time and commits them later with one ``close``; uploading each inside
``write`` would pay a round trip per state. ``write`` hands the bytes to this pool and returns; ``close``
waits for the futures of its states. The table is per process (keyed by the full object URL), so any
provider instance in the process - ForML copies them freely - finds the uploads another one started.
"""

import collections
import concurrent.futures
import dataclasses
import os
import threading
import typing

DEFAULT_WORKERS = 16
QUEUED_BYTES = 256 * 2**20
"""Bytes of states held by queued and running uploads at most (one larger state is let through alone)."""

_lock = threading.Lock()
_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_pid: int | None = None
_inflight: threading.BoundedSemaphore | None = None


class _Budget:
    """Bounds the bytes held by pending uploads: ``write`` blocks while the budget is spent (backpressure on
    ForML's serial dump loop). A state larger than the whole budget waits until nothing else is held."""

    def __init__(self, limit: int):
        self.limit = limit
        self.used = 0
        self._changed = threading.Condition()

    def acquire(self, size: int) -> None:
        with self._changed:
            self._changed.wait_for(lambda: self.used == 0 or self.used + size <= self.limit)
            self.used += size

    def release(self, size: int) -> None:
        with self._changed:
            self.used -= size
            self._changed.notify_all()


_budget: _Budget | None = None


@dataclasses.dataclass(frozen=True)
class Pending:
    """An upload started by ``write``: its future and what the marker must record."""

    future: concurrent.futures.Future
    size: int
    sha256: str


_pending: dict[str, Pending] = {}

REMEMBERED = 100_000
"""How many state URLs (the most recently written) this process remembers the content of."""
_written: 'collections.OrderedDict[str, str]' = collections.OrderedDict()


def pool(workers: int = DEFAULT_WORKERS) -> concurrent.futures.ThreadPoolExecutor:
    """The process's transfer pool (created anew after a fork: threads do not survive it)."""
    global _pool, _pool_pid, _inflight, _budget  # one pool per process by design
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix='forml-s3')
            _inflight = threading.BoundedSemaphore(workers * 2)
            _budget = _Budget(QUEUED_BYTES)
            _pool_pid = os.getpid()
            _pending.clear()
            _written.clear()
        return _pool


def submit_upload(url: str, size: int, sha256: str, upload: typing.Callable[[], None]) -> Pending:
    """Start an upload in the background and record it as pending under ``url``."""
    return record(url, Pending(submit(size, upload), size, sha256))


def submit(size: int, task: typing.Callable[[], None]) -> concurrent.futures.Future:
    """Run ``task``, an upload of ``size`` bytes, on the pool.

    At most twice the pool size of uploads, holding at most :data:`QUEUED_BYTES`, are pending at once; beyond
    that the caller blocks, which bounds the memory held by bytes waiting to be sent.
    """
    executor = pool()
    inflight, budget = _inflight, _budget
    assert inflight is not None and budget is not None
    inflight.acquire()
    budget.acquire(size)

    def release() -> None:
        budget.release(size)
        inflight.release()

    def run() -> None:
        try:
            task()
        finally:
            release()

    try:
        return executor.submit(run)
    except BaseException:
        release()
        raise


def record(url: str, pending: Pending) -> Pending:
    """Record ``pending`` as the upload of ``url`` (what ``close`` waits for)."""
    with _lock:
        _pending[url] = pending
    return pending


def pending(url: str) -> Pending | None:
    """The pending upload of ``url`` started in this process, if any (none in a forked child: the parent's
    uploads are not the child's to wait for)."""
    with _lock:
        return _pending.get(url) if _pool_pid == os.getpid() else None


def remember(url: str, sha256: str) -> str | None:
    """Record that this process writes the content ``sha256`` to ``url``.

    Returns the checksum of the other content this process wrote to ``url`` before (still uploading, held, or
    stored and maybe committed), in which case nothing is recorded and the caller refuses the write: replacing
    it could leave a marker naming one content over the other's bytes. Writing the same content again is fine
    (a retry). A failed upload is forgotten (:func:`unremember`), so a retry may bring other content.
    """
    pool()  # a forked child starts with an empty record: what its parent wrote is not the child's
    with _lock:
        previous = _written.get(url)
        if previous is not None and previous != sha256:
            return previous
        _written[url] = sha256
        _written.move_to_end(url)
        while len(_written) > REMEMBERED:
            _written.popitem(last=False)
    return None


def unremember(url: str, sha256: str) -> None:
    """Forget that this process wrote ``sha256`` to ``url`` (its upload failed: nothing of it is stored)."""
    with _lock:
        if _written.get(url) == sha256:
            del _written[url]


def wait_all() -> None:
    """Wait for every pending upload of this process to finish (successfully or not)."""
    with _lock:
        futures = [p.future for p in _pending.values()] if _pool_pid == os.getpid() else []
    concurrent.futures.wait(futures)


def forget(url: str) -> None:
    """Drop a pending upload record (after its commit)."""
    with _lock:
        _pending.pop(url, None)


def run_all(func: typing.Callable[[typing.Any], typing.Any], items: typing.Iterable[typing.Any]) -> list[typing.Any]:
    """``func`` over ``items`` concurrently on the pool; results in order; the first failure is raised."""
    items = list(items)
    if len(items) <= 1:
        return [func(i) for i in items]
    futures = [pool().submit(func, i) for i in items]
    return [f.result() for f in futures]
