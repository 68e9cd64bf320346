"""Small states held briefly in memory, so that a commit in the same process stores them as one pack object.

A training dumps its states one after another and commits them right after. Stored one object each, every
small state costs two requests - its PUT, then the tag clear that commits it (DESIGN requirement 4: uncommitted
objects carry a tag a lifecycle rule expires) - and the request count, not the bytes, is what small states
cost. ``write`` therefore holds a state of at most :data:`MAX_STATE` bytes here for up to :data:`LINGER`
seconds; a ``close`` in this process within that time claims it, with its siblings, into one pack (one PUT and
one tag clear for all of them). A state nobody claims in time - written by a Dask worker whose driver commits
in another process, or by a long training that commits much later - is uploaded on its own under its own key,
exactly as it would have been without holding, so any process finds it. At most :data:`HELD_BYTES` are held;
beyond that ``write`` sends the oldest on their own itself, so a writer faster than the uploads blocks on the
transfer pool's byte budget as it would without holding. What is held when the interpreter exits is sent, and
waited for, before the transfer pool shuts down.

The table is per process (keyed by the state's full URL), like :mod:`forml_s3.runtime.transfers`, whose pending table
records a held state too: its future completes once the state is stored, in a pack or on its own.
"""

import collections
import concurrent.futures
import dataclasses
import logging
import os
import threading
import time
import typing

from . import transfers

LOGGER = logging.getLogger(__name__)

MAX_STATE = 2**20
"""States up to this size are held for packing; larger ones go straight to the transfer pool."""
HELD_BYTES = 64 * 2**20
"""Bytes held at most; beyond that the oldest held states are sent on their own."""
LINGER = 1.0
"""Seconds a state waits for a commit in this process before it is sent on its own."""


@dataclasses.dataclass
class Held:
    """A state waiting to be packed: its bytes and how to send it on its own."""

    url: str
    data: bytes
    sha256: str
    upload: typing.Callable[[], None]
    """Uploads the state under its own key (blocking)."""
    future: concurrent.futures.Future
    """Completes once the state is stored (its pack or its own upload); what ``close`` waits for."""
    deadline: float


_lock = threading.Condition()
_held: 'collections.OrderedDict[str, Held]' = collections.OrderedDict()
_held_bytes = 0
_pid: int | None = None


def hold(url: str, data: bytes, sha256: str, upload: typing.Callable[[], None]) -> transfers.Pending:
    """Hold a small state for a commit to claim; returns its pending record (also in the transfers table)."""
    global _held_bytes  # one table per process by design
    _started()
    held = Held(url, data, sha256, upload, concurrent.futures.Future(), time.monotonic() + LINGER)
    pending = transfers.record(url, transfers.Pending(held.future, len(data), sha256))
    with _lock:
        if (previous := _held.pop(url, None)) is not None:  # the same state id written again: last one wins
            _held_bytes -= len(previous.data)
            previous.future.cancel()
        _held[url] = held
        _held_bytes += len(data)
        _lock.notify_all()
    for overflow in _take(overflow_only=True):  # in the writer's thread: it waits for the pool (backpressure)
        try:
            send(overflow)
        except Exception as err:  # its future failed: the commit naming it reports that, not this write
            LOGGER.warning('Could not send held state %s: %s', overflow.url, err)
    return pending


def claim(urls: typing.Iterable[str]) -> dict[str, Held]:
    """Take the held states of ``urls`` (those still held: not sent on their own yet) for packing.

    The caller owns them from now on: it must complete (or fail) each one's future.
    """
    global _held_bytes
    claimed = {}
    with _lock:
        if _pid != os.getpid():
            return claimed
        for url in urls:
            if (held := _held.pop(url, None)) is not None:
                _held_bytes -= len(held.data)
                claimed[url] = held
    return claimed


def restore(states: typing.Iterable[Held]) -> None:
    """Hold claimed states again (their commit failed): a re-run of the commit claims them anew, or they are sent
    on their own when their new linger runs out - either way they stay committable, as an uploaded state does."""
    global _held_bytes
    with _lock:
        for held in states:
            if held.url in _held or held.future.done():
                continue
            held.deadline = time.monotonic() + LINGER
            _held[held.url] = held
            _held_bytes += len(held.data)
        _lock.notify_all()


def send(held: Held) -> None:
    """Upload one held state on its own, in the background (blocks while the pool's budget is spent). If the pool
    refuses it (shutting down, interrupted), the state's future fails, so no commit or exit waits for it forever."""

    def upload() -> None:
        try:
            held.upload()
        except BaseException as err:
            held.future.set_exception(err)
            raise
        held.future.set_result(None)

    try:
        transfers.submit(len(held.data), upload)
    except BaseException as err:
        held.future.set_exception(err)
        raise


def flush() -> None:
    """Send every held state on its own now and wait until it (and every other pending upload) is stored.

    Runs at interpreter exit before the transfer pool stops: later, the pool refuses work and asyncio (s3fs)
    cannot start the threads it resolves host names in, so an upload started then would hang.
    """
    if _pid != os.getpid():
        return  # a forked child: what it inherited held is its parent's to send
    for held in _take(everything=True):
        try:
            send(held)
        except Exception as err:  # its future has failed; send the others
            LOGGER.warning('Could not send held state %s at exit: %s', held.url, err)
    transfers.wait_all()


def _take(everything: bool = False, overflow_only: bool = False, limit: int | None = None) -> list[Held]:
    """Remove and return the oldest states due to be sent on their own: lingered too long, or over the byte cap
    (only those with ``overflow_only``; all of them with ``everything``), at most ``limit`` of them."""
    global _held_bytes
    now = time.monotonic()
    due = []
    with _lock:
        while _held and (limit is None or len(due) < limit):
            oldest = next(iter(_held.values()))
            lingered = not overflow_only and oldest.deadline <= now
            if not (everything or lingered or _held_bytes > HELD_BYTES):
                break
            del _held[oldest.url]
            _held_bytes -= len(oldest.data)
            due.append(oldest)
    return due


def _sender() -> None:
    """The process's sender thread: sends states whose linger ran out (or that overflow the cap)."""
    while True:
        with _lock:
            _lock.wait_for(lambda: bool(_held))
            oldest = next(iter(_held.values()))
            if _held_bytes <= HELD_BYTES:
                _lock.wait(max(0.0, oldest.deadline - time.monotonic()))
        while due := _take(limit=1):  # one at a time: while the pool is busy, the rest stay claimable
            try:
                send(due[0])
            except Exception as err:  # the pool refused it (shutting down): its future failed, the commit reports it
                LOGGER.warning('Could not send held state %s: %s', due[0].url, err)


def _started() -> None:
    """Start this process's sender thread and exit hook (anew after a fork: threads do not survive it)."""
    global _pid
    with _lock:
        if _pid == os.getpid():
            return
        transfers.pool()  # registers the pool's own exit hook first, so that ours runs before it (LIFO)
        threading._register_atexit(flush)  # runs before the pool stops taking work
        threading.Thread(target=_sender, name='forml-s3-packing', daemon=True).start()
        _pid = os.getpid()


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's held states (the parent sends them) and a lock a parent's thread may
    have held at the fork; the child's first ``hold`` starts its own sender."""
    global _lock, _held_bytes, _pid
    _lock = threading.Condition()
    _held.clear()
    _held_bytes = 0
    _pid = None


os.register_at_fork(after_in_child=_forget_after_fork)
