"""The one reader of a registry's markers.

:class:`Markers` keeps what a process has seen: the live markers of each level (one LIST per page, reused for
``listing_ttl`` seconds) and each marker's content by key and version (in memory, and as a local copy in the
blob cache, so another process of the machine reads it without a GET). :func:`read` is the one-off read of a
marker (one GET, validated) for the operator tools that take a snapshot of their own.
"""

import hashlib
import threading
import time
import typing

from .. import storage
from ..model import codec, layout
from . import cache as cachemod
from . import volatile


def read(st: storage.Store, key: str) -> dict[str, typing.Any]:
    """A marker's content, read now (one GET) and validated (``asset.Level.Invalid`` for a corrupted one)."""
    return codec.loads(st.read(key), st.url_of(key))


class Markers(volatile.Volatile):
    """Listings and marker contents of one registry, cached for this process (pickles without them)."""

    VOLATILE = ('_lock', '_listings', '_memo', '_committed')

    def __init__(self, st: storage.Store, blobs: cachemod.BlobCache, listing_ttl: float):
        self._store: storage.Store = st
        self._cache: cachemod.BlobCache = blobs
        self._listing_ttl: float = float(listing_ttl)
        self._init_volatile()

    def _init_volatile(self) -> None:
        self._lock = threading.Lock()
        self._listings: dict[str, tuple[float, dict[str, storage.Entry]]] = {}
        self._memo: dict[tuple[str, str], dict[str, typing.Any]] = {}
        self._committed: dict[str, dict[str, typing.Any]] = {}
        """Generation markers by key, read once: a generation number is never committed twice (the exclusive
        create, and the retirement floor of :mod:`forml_s3.runtime.retention`), so one stays true for the process."""

    def listing(self, prefix: str, fresh: bool = False) -> dict[str, storage.Entry]:
        """Markers under ``prefix`` by level name: one LIST per page, reused for ``listing_ttl`` seconds."""
        cached = None if fresh else self.cached(prefix)
        if cached is not None:
            return cached
        entries = {e.name: e for e in self._store.listdir(prefix)}
        sizes = {name: entry.size for name, entry in entries.items()}
        found = {name: entries[name + layout.MARKER] for name in layout.Layout.marker_names(sizes)}
        with self._lock:  # aged from when the listing finished: one of many pages may outlast listing_ttl
            self._listings[prefix] = (time.monotonic(), found)
        return found

    def cached(self, prefix: str) -> dict[str, storage.Entry] | None:
        """The listing of ``prefix`` if one younger than ``listing_ttl`` is at hand (no request), else None."""
        with self._lock:
            cached = self._listings.get(prefix)
        if cached and time.monotonic() - cached[0] < self._listing_ttl:
            return cached[1]
        return None

    def known(self, prefix: str) -> dict[str, storage.Entry]:
        """The markers under ``prefix`` as last listed by this process, however old (empty if never listed)."""
        with self._lock:
            return self._listings.get(prefix, (0, {}))[1]

    def invalidate(self, *prefixes: str) -> None:
        """Forget the listings of ``prefixes`` (this process changed them): the next :meth:`listing` lists."""
        with self._lock:
            for prefix in prefixes:
                self._listings.pop(prefix, None)

    def entry(self, prefix: str, name: str) -> storage.Entry | None:
        """The listing entry of one marker: from the cached listing, else a fresh one (it may be new)."""
        return self.listing(prefix).get(name) or self.listing(prefix, fresh=True).get(name)

    def marker(self, key: str, entry: storage.Entry) -> dict[str, typing.Any]:
        """A marker by key and version: from memory, else the local cache, else one GET (then cached)."""
        with self._lock:
            memo = self._memo.get((key, entry.version)) or self._committed.get(key)
        if memo is not None:
            return memo
        name = hashlib.sha256(f'{self._store.url}|{key}|{entry.version}'.encode()).hexdigest()
        raw = self._cache.read_named(name)  # checked against the sha256 sealed when it was cached
        if raw is None:
            raw = self._store.read(key)
            marker = codec.loads(raw, self._store.url_of(key))  # validate before caching
            self._cache.put_named(name, raw)
        else:
            marker = codec.loads(raw, self._store.url_of(key))
        with self._lock:
            self._memo[(key, entry.version)] = marker
        return marker

    def committed(self, key: str) -> dict[str, typing.Any] | None:
        """The generation marker at ``key`` if this process has read it as committed (no request), else None."""
        with self._lock:
            return self._committed.get(key)

    def remember(self, key: str, marker: dict[str, typing.Any]) -> None:
        """Keep a committed generation's marker for the life of the process (see ``_committed``)."""
        with self._lock:
            self._committed[key] = marker

    def forget(self, *keys: str) -> None:
        """Drop generation markers this process retired itself: hidden from it at once, as from listings."""
        with self._lock:
            for key in keys:
                self._committed.pop(key, None)

    def optional(self, key: str) -> dict[str, typing.Any] | None:
        """A marker by one GET of its key; None if there is none (or only a tombstone of an older retirement)."""
        try:
            raw = self._store.read(key)
        except FileNotFoundError:
            return None
        return codec.loads(raw, self._store.url_of(key)) if len(raw) > len(layout.TOMBSTONE) else None
