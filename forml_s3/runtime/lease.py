"""Leases: how a live process holding uncommitted uploads keeps ``forml-s3 gc`` away from them.

A process that has stored states (or a package) and not committed them yet announces itself once it has held
them for ``after`` seconds: it stores one small object, ``<root>/.leases/<host>-<pid>-<random>.json``, naming
the releases it writes into, renews it every quarter of its ``ttl`` while it holds any, and deletes it once this
process has committed them all (or at exit). ``gc`` lists the leases after listing what it means to delete and
leaves every release a live lease names alone (:func:`live`).

The lease stays off the hot path: a training that commits within ``after`` seconds of its first upload (the
usual case: ForML dumps its states and closes right away) never stores one. A longer one pays one PUT to take
it, one PUT per renewal and one DELETE, all from this module's own thread, never in ``write`` or ``close``.
States this process wrote that another process commits (Dask workers; their driver closes) stay leased until
this process exits: the release is spared by ``gc`` that long.

A process stalled longer than ``ttl`` (suspended, partitioned) loses its protection; ``close`` then still
refuses to commit a state ``gc`` deleted (it lists the states before creating the marker), so a committed
generation never names a missing state - the training fails and must run again.
"""

import dataclasses
import logging
import os
import threading
import time
import typing
import uuid

from .. import storage
from ..model import codec, layout
from . import markers as markermod

LOGGER = logging.getLogger(__name__)

AFTER = 60.0
"""Seconds a process holds uncommitted uploads before it takes a lease (default of ``lease_after``)."""
TTL = 600.0
"""Seconds a lease protects after its last renewal; renewed every quarter of that."""


@dataclasses.dataclass
class _Lessee:
    """This process's uncommitted uploads to one registry and its lease there."""

    store: storage.Store
    layout: layout.Layout
    after: float
    ttl: float
    outstanding: dict[str, tuple[str, float]] = dataclasses.field(default_factory=dict)
    """Uncommitted keys: (release as ``project/release``, when tracked, monotonic)."""
    key: str | None = None
    """The lease object, once stored."""
    written: frozenset[str] = frozenset()
    """The releases the stored lease names."""
    renewed: float = 0.0
    retry: float = 0.0
    """After a failed update: not before this (monotonic)."""

    def releases(self) -> frozenset[str]:
        return frozenset(release for release, _ in self.outstanding.values())

    def due(self, now: float) -> float | None:
        """When this lessee needs the thread next (monotonic), ``None`` if never."""
        if self.key is None:
            due = min((t + self.after for _, t in self.outstanding.values()), default=None)
        elif not self.outstanding or self.releases() != self.written:
            due = now
        else:
            due = self.renewed + self.ttl / 4
        return None if due is None else max(due, self.retry)


_lock = threading.Condition()
_lessees: dict[str, _Lessee] = {}
_pid: int | None = None


def track(
    st: storage.Store, lay: layout.Layout, project: str, release: str, key: str, after: float = AFTER, ttl: float = TTL
) -> None:
    """Record an upload this process has not committed yet (cheap: in memory; the lease comes later if ever)."""
    _started()
    with _lock:
        lessee = _lessees.get(st.url)
        if lessee is None:
            lessee = _lessees[st.url] = _Lessee(st, lay, float(after), float(ttl))
        lessee.outstanding.setdefault(key, (f'{project}/{release}', time.monotonic()))
        _lock.notify_all()


def settle(st: storage.Store, keys: typing.Iterable[str]) -> None:
    """These uploads are committed (or abandoned by their commit): the lease no longer needs to cover them."""
    with _lock:
        lessee = _lessees.get(st.url)
        if lessee is None:
            return
        for key in keys:
            lessee.outstanding.pop(key, None)
        _lock.notify_all()


def held(st: storage.Store) -> str | None:
    """The key of this process's stored lease at the store, if any (tests and diagnostics)."""
    with _lock:
        lessee = _lessees.get(st.url)
        return lessee.key if lessee else None


def _body(lessee: _Lessee, releases: frozenset[str]) -> bytes:
    return codec.dumps(codec.lease(releases, lessee.ttl))


def _serve(lessee: _Lessee) -> None:
    """Take, renew, rewrite or drop one lessee's lease as due (I/O outside the lock; errors retried later)."""
    now = time.monotonic()
    with _lock:
        releases, key = lessee.releases(), lessee.key
        if now < lessee.retry:
            return
        if key is None and not any(now - t >= lessee.after for _, t in lessee.outstanding.values()):
            return
        if key is not None and releases == lessee.written and releases and now < lessee.renewed + lessee.ttl / 4:
            return
    try:
        if not releases:
            lessee.store.delete(key)
            LOGGER.debug('Dropped lease %s', lessee.store.url_of(key))
            with _lock:
                if lessee.key == key:
                    lessee.key, lessee.written = None, frozenset()
            return
        key = key or lessee.layout.lease(f'{codec.writer().replace(":", "-")}-{uuid.uuid4().hex[:8]}')
        lessee.store.write(key, _body(lessee, releases))
        LOGGER.debug('Lease %s renewed for %s', lessee.store.url_of(key), sorted(releases))
        with _lock:
            lessee.key, lessee.written, lessee.renewed = key, releases, time.monotonic()
    except Exception as err:  # the next tick tries again; gc may meanwhile judge these releases unleased
        LOGGER.warning('Could not update the lease of %s at %s: %s', sorted(releases), lessee.store.url, err)
        with _lock:
            lessee.retry = time.monotonic() + min(5.0, lessee.ttl / 8)


def _run() -> None:
    """The process's lease thread."""
    while True:
        with _lock:
            now = time.monotonic()
            dues = [d for d in (lessee.due(now) for lessee in _lessees.values()) if d is not None]
            wait = None if not dues else max(0.0, min(dues) - now)
            if wait is None or wait > 0:
                _lock.wait(wait)
            lessees = list(_lessees.values())
        for lessee in lessees:
            _serve(lessee)


def _release_all() -> None:
    """At exit: drop this process's leases (a killed process's lease expires after its ttl instead)."""
    if _pid != os.getpid():
        return
    with _lock:
        stored = [(lessee.store, lessee.key) for lessee in _lessees.values() if lessee.key]
    for st, key in stored:
        try:
            st.delete(key)
        except Exception as err:  # it expires on its own
            LOGGER.debug('Could not drop lease %s at exit: %s', key, err)


def _started() -> None:
    """Start this process's lease thread and exit hook (anew after a fork)."""
    global _pid  # one table per process by design
    with _lock:
        if _pid == os.getpid():
            return
        threading._register_atexit(_release_all)  # before s3fs's loop can no longer start threads
        threading.Thread(target=_run, name='forml-s3-lease', daemon=True).start()
        _pid = os.getpid()


def _forget_after_fork() -> None:
    """In a forked child: the parent's uploads and leases are the parent's."""
    global _lock, _pid
    _lock = threading.Condition()
    _lessees.clear()
    _pid = None


os.register_at_fork(after_in_child=_forget_after_fork)


# the gc side ------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Lease:
    """A lease as ``gc`` finds it."""

    path: str
    version: str
    """ETag (S3): what a conditional delete of an expired lease names."""
    writer: str
    releases: frozenset[str] | None
    """``project/release`` names it protects (``None``: unreadable, protects the whole registry while fresh)."""
    expires: float | None
    """POSIX seconds (``None``: the store reports no modification time; taken as live)."""

    def live(self, now: float) -> bool:
        return self.expires is None or self.expires > now

    def covers(self, project: str | None, release: str | None) -> bool:
        return self.releases is None or f'{project}/{release}' in self.releases


def leases(st: storage.Store) -> list[Lease]:
    """Every lease of the registry (one LIST, one GET per lease: there are as many as processes writing)."""
    lay = layout.Layout(st.root)
    found = []
    for entry in st.listdir(lay.leases()):
        if not entry.name.endswith(layout.MARKER):
            continue
        path = f'{lay.leases()}/{entry.name}'
        try:
            body = markermod.read(st, path)
            releases, ttl, writer = frozenset(map(str, body['releases'])), float(body['ttl']), str(body['writer'])
        except FileNotFoundError:
            continue  # dropped meanwhile
        except Exception as err:  # an unreadable lease protects everything while it is fresh
            LOGGER.warning('Unreadable lease %s (%s): sparing the whole registry while it is fresh', path, err)
            releases, ttl, writer = None, TTL, '?'
        expires = None if entry.modified is None else entry.modified + ttl
        found.append(Lease(path, entry.version, writer, releases, expires))
    return found


def forget() -> None:
    """Stop tracking this process's uploads, without touching any store (tests: one test's uncommitted writes
    never take a lease, nor renew one, while another test counts requests)."""
    with _lock:
        _lessees.clear()
