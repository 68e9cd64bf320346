"""Fetching what a registry stores for reading: committed states (alone or cut from a pack) and release packages.

Every object is fetched through the local cache (:mod:`forml_s3.runtime.cache`), once per machine, and verified
against the size and sha256 its marker records. A state is read as bytes - cached ones straight from the cache, a
missing one from the file the cache opened as it stored it - so no eviction by another process can take it from
under the reader, and nothing is fetched twice for one read. A packed state is cached as part of its pack only: it
is cut from the cached pack and checked against its own sha256 (a file per small state cost ~1 ms each, ten times
the read). Opening a generation starts fetching its states not cached yet in the background (a pack once for all
its states).
"""

import hashlib
import logging
import pathlib
import shutil
import typing

import forml
from forml.io import asset

from .. import storage
from ..model import layout
from ..storage import digest
from . import cache as cachemod
from . import transfers

LOGGER = logging.getLogger(__name__)


class Fetcher:
    """The states and packages of one registry, through the local cache (pickles with the registry)."""

    def __init__(self, st: storage.Store, lay: layout.Layout, blobs: cachemod.BlobCache):
        self._store: storage.Store = st
        self._layout: layout.Layout = lay
        self._cache: cachemod.BlobCache = blobs

    def prefetch(self, project: str, release: str, marker: dict[str, typing.Any]) -> None:
        """Start fetching the generation's states not cached yet, all at once, in the background (a pack once)."""
        packed: dict[str, list[str]] = {}
        for sid, info in marker['states'].items():
            if self._cache.cached(info['sha256']):  # read() checks the cached ones before serving them
                continue
            if 'pack' not in info:
                transfers.pool().submit(self._fetch_state, project, release, marker, sid, self._cache.fetch)
            else:
                pack = marker.get('packs', {}).get(str(info['pack']))
                if not (isinstance(pack, dict) and pack.get('sha256') and self._cache.cached(str(pack['sha256']))):
                    packed.setdefault(str(info['pack']), []).append(sid)  # (a bad entry: the fetch says what)
        for sids in packed.values():
            transfers.pool().submit(self._fetch_packed, project, release, marker, sids)

    def read(self, project: str, release: str, generation: int, sid: str, marker: dict[str, typing.Any]) -> bytes:
        """A state of a committed generation (``release``: the name it is stored under), from the cache or fetched
        into it; empty (with a warning) if the generation has no such state."""
        info = marker.get('states', {}).get(sid)
        if info is None:
            LOGGER.warning('No state %s in generation %s of %s-%s', sid, generation, project, release)
            return b''
        data = self._cache.read(str(info['sha256']))  # bytes: no eviction can take them away
        if data is None and 'pack' in info:
            data = self._cut(marker, info)
        if data is not None:
            return data
        try:
            return self._fetch_state(project, release, marker, sid, self._cache.load)
        except FileNotFoundError as err:
            where = f'pack {info["pack"]}' if 'pack' in info else 'its object'
            raise forml.MissingError(
                f'State {sid} of generation {generation} of {project}-{release} is missing from {self._store.url} '
                f'({where} does not exist): the committed generation is incomplete; run '
                f'`forml-s3 verify {self._store.url}` to see what else is missing'
            ) from err

    def _fetch_state(
        self,
        project: str,
        release: str,
        marker: dict[str, typing.Any],
        sid: str,
        how: typing.Callable[..., typing.Any],
    ) -> typing.Any:
        """Cache one state by ``how`` (:meth:`~forml_s3.runtime.cache.BlobCache.load` for its bytes,
        :meth:`~forml_s3.runtime.cache.BlobCache.fetch` only to cache it); a packed one's bytes, cut from its pack."""
        info = marker['states'][sid]
        if 'pack' in info:
            return self._fetch_packed(project, release, marker, [sid])[sid]
        key, size = self._layout.state(project, release, sid), int(info['size'])
        return how(
            str(info['sha256']),
            size,
            lambda target: self._store.download(key, target, size),
            name=self._store.url_of(key),
            # a read joining the download (a prefetch's, say) has the bytes it hashed: it need not read the file
            landing=lambda target, sink: self._store.download(key, target, size, sink),
        )

    def _cut(self, marker: dict[str, typing.Any], info: dict[str, typing.Any]) -> bytes | None:
        """A packed state cut from its pack if the pack is cached (and the cut holds the state), else None."""
        try:
            pack = marker['packs'][str(info['pack'])]
            return self._cache.read_span(
                str(pack['sha256']), int(info['offset']), int(info['size']), str(info['sha256'])
            )
        except (KeyError, TypeError, ValueError):  # a bad marker: the fetch says what is wrong with it
            return None

    def _fetch_packed(
        self, project: str, release: str, marker: dict[str, typing.Any], sids: list[str]
    ) -> dict[str, bytes]:
        """States of one pack: the pack is fetched (once, and cached), each state cut out and verified; their bytes
        by state id (read from the pack opened once: an eviction meanwhile cannot take it away)."""
        try:
            pid = str(marker['states'][sids[0]]['pack'])
            key = self._layout.pack(project, release, pid)
            size, sha256 = int(marker['packs'][pid]['size']), str(marker['packs'][pid]['sha256'])
            located = [(sid, marker['states'][sid]) for sid in sids]
            spans = [(sid, str(i['sha256']), int(i['offset']), int(i['size'])) for sid, i in located]
        except (KeyError, TypeError, ValueError, IndexError, asset.Level.Invalid) as err:
            raise asset.Level.Invalid(
                f'Corrupted generation marker of {project}-{release}: bad pack of states {sids}: {err!r}'
            ) from err
        found = {}
        with self._cache.open(
            sha256, size, lambda target: self._store.download(key, target, size), name=self._store.url_of(key)
        ) as pack:
            for sid, state_sha, offset, state_size in spans:
                pack.seek(offset)
                data = pack.read(state_size)
                got = hashlib.sha256(data).hexdigest()
                if len(data) != state_size or got != state_sha:
                    name = f'{self._store.url_of(key)} (state {sid} at {offset})'
                    raise cachemod.Corrupted.mismatch(name, state_size, state_sha, len(data), got)
                found[sid] = data
        return found

    @typing.overload
    def package(
        self, project: str, release: str, stem: str, marker: dict[str, typing.Any]
    ) -> tuple[pathlib.Path, str]: ...

    @typing.overload
    def package(
        self,
        project: str,
        release: str,
        stem: str,
        marker: dict[str, typing.Any],
        opened: typing.Literal[True],
        landed: typing.Callable[[int], None] | None = None,
    ) -> tuple[typing.BinaryIO, str]: ...

    def package(
        self,
        project: str,
        release: str,
        stem: str,
        marker: dict[str, typing.Any],
        opened: bool = False,
        landed: typing.Callable[[int], None] | None = None,
    ) -> tuple[typing.Any, str]:
        """The verified package a release marker names (``stem``: the name the release is stored under) in the local
        cache (downloaded once per machine) - its path, or ``opened`` the file opened (the caller closes it; no
        eviction can take it away) - and its sha256. ``landed`` is told when a download has landed every byte, before
        they are verified (see :meth:`forml_s3.storage.digest.Sink.all_landed`)."""
        try:
            info = marker['package']
            key = self._layout.release_object(project, stem, info['key'])
            size, sha256 = int(info['size']), str(info['sha256'])
        except (KeyError, TypeError, ValueError) as err:
            raise asset.Level.Invalid(
                f'Corrupted release marker of {project}-{release} in {self._store.url}: {err!r}'
            ) from err
        sink = digest.Sink(landed) if landed is not None else None
        found = (self._cache.open if opened else self._cache.fetch)(
            sha256,
            size,
            lambda target: self._store.download(key, target, size, sink),
            name=self._store.url_of(key),
            suffix=layout.PACKAGE_SUFFIX,
        )
        return found, sha256

    def keep_package(self, source: pathlib.Path, size: int, sha256: str) -> None:
        """Keep a copy of a package being pushed for later pulls (the push goes on without it where the cache and
        the temporary directory are full)."""
        try:
            self._cache.fetch(
                sha256, size, lambda target: _copy(source, target), name=str(source), suffix=layout.PACKAGE_SUFFIX
            )
        except cachemod.Unwritable:
            LOGGER.debug('No local copy of %s kept: no room for it', source)


def _copy(source: pathlib.Path, target: pathlib.Path) -> None:
    shutil.copyfile(source, target)
