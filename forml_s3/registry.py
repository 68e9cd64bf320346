"""ForML model registry provider over object storage: ``forml.io.asset.Registry`` on any fsspec URL.

Thin over :mod:`forml_s3.model.layout` (where keys are made) and :mod:`forml_s3.storage` (where bytes move). What it
adds is the commit protocol: a release or generation becomes visible only when its marker is created,
exclusively, after everything the marker names is stored - so listings show whole releases and generations
or nothing, and of two writers racing for the same one exactly one wins.
"""

import contextlib
import dataclasses
import hashlib
import logging
import pathlib
import re
import shutil
import tempfile
import threading
import time
import typing
import uuid
import zipfile

import forml
from forml import project as prj
from forml import setup
from forml.io import asset

from . import settings, storage
from .model import codec, layout, names
from .runtime import aliases as aliasmod
from .runtime import cache as cachemod
from .runtime import lease, packing, retention, staging, transfers

LOGGER = logging.getLogger(__name__)

UNCOMMITTED = dict([layout.UNCOMMITTED_TAG])
_SHA256 = re.compile(r'[0-9a-f]{64}')


class Conflict(asset.Level.Invalid):
    """Another writer committed the same release or generation first."""


class Incomplete(asset.Level.Invalid):
    """A commit refused: objects its marker would name are not stored (deleted meanwhile, or lost)."""


class Registry(asset.Registry, alias='s3', metaclass=settings.Checked):
    """Model registry in a bucket (or at any fsspec URL: ``s3://``, ``file://``, ``memory://``, ...).

    Args:
        url: Registry root, e.g. ``s3://my-bucket/forml``.
        staging: File system location reachable from all runner nodes, where releases are installed
                 (defaults to ``<cache_dir>/staging``: fine on one machine, set a shared path for clusters).
        storage_options: fsspec/s3fs options (``endpoint_url``, ``key``/``secret``, ``profile``, ``region``,
                         ``retries``, ``sse``, ...); see :mod:`forml_s3.storage.options`. Credentials default to the
                         standard AWS chain and are never logged.
        cache_dir: Local cache of immutable objects (default ``~/.cache/forml-s3``).
        cache_size: Cache size cap in bytes (default 10 GiB).
        listing_ttl: Seconds a listing is reused within a process (own writes invalidate it at once).
        commit_timeout: Seconds ``close`` waits for states written by another process to appear.
        tag_uncommitted: Tag objects ``forml-s3=uncommitted`` until committed, for lifecycle expiry (S3 only).
        pack_states: Store the small states a commit in the writing process finds still held (written less
                     than a second before) side by side in one object (see :mod:`forml_s3.runtime.packing`).
        keep_generations: After each commit, retire all but the newest N generations of the release (pinned
                          ones excepted; see :mod:`forml_s3.runtime.retention`). Default: keep everything.
        lease_after: Seconds this process holds uncommitted uploads before it takes a lease that keeps
                     ``forml-s3 gc`` away from their releases (see :mod:`forml_s3.runtime.lease`).
        single_writer: Accept a URL protocol without a verified exclusive create (and an S3 endpoint that ignores
                       ``If-None-Match``): gives NO protection against concurrent writers, two of which can both
                       commit the same release or generation, the later overwriting the earlier.

    The provider can be enabled using the following :ref:`platform configuration <platform-config>`:

    .. code-block:: toml
       :caption: config.toml

        [REGISTRY]
        default = "s3"
        path = ["forml_s3.registry"]    # lets the alias "s3" resolve

        [REGISTRY.s3]
        provider = "s3"                 # or "forml_s3.registry:Registry" (then no path needed)
        url = "s3://my-bucket/forml"
        staging = "/mnt/shared/forml-staging"
        storage_options = { endpoint_url = "http://127.0.0.1:9000" }
    """

    def __init__(
        self,
        url: str,
        staging: str | pathlib.Path | None = None,
        storage_options: typing.Mapping[str, typing.Any] | None = None,
        cache_dir: str | pathlib.Path | None = None,
        cache_size: int = cachemod.DEFAULT_MAX_BYTES,
        listing_ttl: float = 3.0,
        commit_timeout: float = 300.0,
        tag_uncommitted: bool = True,
        pack_states: bool = True,
        keep_generations: int | None = None,
        lease_after: float = lease.AFTER,
        single_writer: bool = False,
    ):
        self._store: storage.Store = storage.open_store(url, storage_options, single_writer=bool(single_writer))
        self._layout: layout.Layout = layout.Layout(self._store.root)
        self._cache: cachemod.BlobCache = cachemod.BlobCache(cache_dir, cache_size)
        super().__init__(staging or self._cache.root / 'staging')
        self._listing_ttl: float = float(listing_ttl)
        self._commit_timeout: float = float(commit_timeout)
        self._tag_uncommitted: bool = bool(tag_uncommitted)
        self._pack_states: bool = bool(pack_states)
        if keep_generations is not None and int(keep_generations) < 1:
            raise forml.InvalidError(f'keep_generations must be at least 1, not {keep_generations}')
        self._keep_generations: int | None = None if keep_generations is None else int(keep_generations)
        if not 0 <= float(lease_after) <= lease.TTL / 4:
            raise forml.InvalidError(f'lease_after must be between 0 and {lease.TTL / 4:g} seconds, not {lease_after}')
        self._lease_after: float = float(lease_after)
        self._stems: dict[tuple[str, str], str] = {}
        """Where each release is stored (see :meth:`_stem`): immutable once found, so kept and pickled."""
        self._init_volatile()

    def _init_volatile(self) -> None:
        """Per-process state: listing cache and marker memo (never pickled)."""
        self._lock = threading.Lock()
        self._listings: dict[str, tuple[float, dict[str, storage.Entry]]] = {}
        self._markers: dict[tuple[str, str], dict[str, typing.Any]] = {}
        self._committed: dict[str, dict[str, typing.Any]] = {}
        """Generation markers by key, read once (see :meth:`_generation_marker`)."""

    def __getstate__(self):
        state = self.__dict__.copy()
        for volatile in ('_lock', '_listings', '_markers', '_committed'):
            state.pop(volatile, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._init_volatile()

    def __repr__(self):
        return f'S3-registry({self._store.url})'

    def __hash__(self):
        return hash(self.__class__) ^ hash(self._store.url) ^ hash(self._staging)

    def __eq__(self, other):
        return (
            isinstance(other, self.__class__)
            and other._store.url == self._store.url
            and other._staging == self._staging
        )

    @property
    def url(self) -> str:
        return self._store.url

    @property
    def aliases(self) -> 'aliasmod.Aliases':
        """The registry's model aliases (:mod:`forml_s3.runtime.aliases`): ``registry.aliases.set(project, ...)``."""
        return aliasmod.Aliases(self._store, self._layout)

    # listings -------------------------------------------------------------------------------------------
    def _list(self, prefix: str, fresh: bool = False) -> dict[str, storage.Entry]:
        """Markers under ``prefix`` by level name: one LIST per page, reused for ``listing_ttl`` seconds."""
        cached = None if fresh else self._cached(prefix)
        if cached is not None:
            return cached
        entries = {e.name: e for e in self._store.listdir(prefix)}
        sizes = {name: entry.size for name, entry in entries.items()}
        found = {name: entries[name + layout.MARKER] for name in layout.Layout.marker_names(sizes)}
        with self._lock:  # aged from when the listing finished: one of many pages may outlast listing_ttl
            self._listings[prefix] = (time.monotonic(), found)
        return found

    def _cached(self, prefix: str) -> dict[str, storage.Entry] | None:
        """The listing of ``prefix`` if one younger than ``listing_ttl`` is at hand (no request), else None."""
        with self._lock:
            cached = self._listings.get(prefix)
        if cached and time.monotonic() - cached[0] < self._listing_ttl:
            return cached[1]
        return None

    def _stem(self, project: asset.Project.Key, release: asset.Release.Key | str) -> str:
        """The name a release is stored under: its marker's name as listed - the canonical key of its version
        (:func:`forml_s3.model.names.canonical`), or the spelling an earlier forml-s3 stored it under - so that any
        PEP 440-equal spelling (``2``, ``2.0``, ``2.0.0``) reaches the same release. A release not pushed yet is
        stored under its canonical key. Found once per process (and pickled with the registry)."""
        project, key = str(names.project(project)), names.release(release)
        canonical = names.canonical(key)
        if (stem := self._stems.get((project, canonical))) is not None:
            return stem
        for fresh in (False, True):
            if (
                stem := layout.Layout.stored_as(self._list(self._layout.releases(project), fresh=fresh), key)
            ) is not None:
                self._stems[(project, canonical)] = stem
                return stem
        return canonical

    def _invalidate(self, *prefixes: str) -> None:
        with self._lock:
            for prefix in prefixes:
                self._listings.pop(prefix, None)

    @staticmethod
    def _keys(found: typing.Iterable[str], constructor: typing.Callable[[str], typing.Any]) -> list:
        keys = []
        for name in found:
            try:
                keys.append(constructor(name))
            except asset.Level.Invalid:
                LOGGER.debug('Ignoring foreign marker %s', name)
        return keys

    def projects(self) -> typing.Iterable[asset.Project.Key]:
        return self._keys(self._list(self._layout.projects()), names.project)

    def releases(self, project: asset.Project.Key) -> typing.Iterable[asset.Release.Key]:
        return self._keys(self._list(self._layout.releases(project)), names.release)

    def generations(
        self, project: asset.Project.Key, release: asset.Release.Key
    ) -> typing.Iterable[asset.Generation.Key]:
        return self._keys(self._generations_of(project, release)[1], names.generation)

    def _generations_of(
        self, project: asset.Project.Key, release: asset.Release.Key | str, fresh: bool = False
    ) -> tuple[str, dict[str, storage.Entry]]:
        """The name a release is stored under and its generation markers. A release not resolved in this process
        yet is tried under its canonical name first: found there, that costs no listing of the releases."""
        project, canonical = names.project(project), names.canonical(release)
        stem = self._stems.get((str(project), canonical))
        if stem is None:
            found = self._list(self._layout.generations(project, canonical), fresh=fresh)
            if found:  # generations are committed only into a committed release: it is stored there
                self._stems[(str(project), canonical)] = canonical
                return canonical, found
            stem = self._stem(project, release)
            if stem == canonical:
                return stem, found
        return stem, self._list(self._layout.generations(project, stem), fresh=fresh)

    # markers --------------------------------------------------------------------------------------------
    def _marker(self, key: str, entry: storage.Entry) -> dict[str, typing.Any]:
        """A marker by key and version: from memory, else the local cache, else one GET (then cached)."""
        with self._lock:
            memo = self._markers.get((key, entry.version)) or self._committed.get(key)
        if memo is not None:
            return memo
        local = self._cache.root / 'markers' / hashlib.sha256(f'{self.url}|{key}|{entry.version}'.encode()).hexdigest()
        raw = self._cache.read_file(local)  # checked against the sha256 sealed when it was cached
        if raw is None:
            raw = self._store.read(key)
            marker = codec.loads(raw, self._store.uri(key))  # validate before caching
            self._cache.put_file(local, raw)
        else:
            marker = codec.loads(raw, self._store.uri(key))
        with self._lock:
            self._markers[(key, entry.version)] = marker
        return marker

    def _entry(self, prefix: str, name: str) -> storage.Entry | None:
        """The listing entry of one marker: from the cached listing, else a fresh one (it may be new)."""
        return self._list(prefix).get(name) or self._list(prefix, fresh=True).get(name)

    def _release_marker(self, project: asset.Project.Key, release: asset.Release.Key) -> dict[str, typing.Any]:
        stem = self._stem(project, release)
        entry = self._entry(self._layout.releases(project), stem)
        if entry is None:
            raise forml.MissingError(f'No release {project}-{release} in {self.url}')
        return self._marker(self._layout.release_marker(project, stem), entry)

    def _generation_marker(
        self, project: asset.Project.Key, release: asset.Release.Key, generation: asset.Generation.Key
    ) -> dict[str, typing.Any] | None:
        """A committed generation's marker (None if it has none: never committed, or retired) without listing the
        release's generations: from memory, else by its entry in a listing at hand, else one GET of its key.

        A generation number is never committed twice (the exclusive create, and the retirement floor of
        :mod:`forml_s3.retention`), so a marker read once stays true for the life of the process."""
        project, canonical = names.project(project), names.canonical(release)
        known = self._stems.get((str(project), canonical))
        for stem in (known,) if known is not None else (canonical, None):
            stem = stem or self._stem(project, release)  # not under its canonical name: an older spelling
            key = self._layout.generation_marker(project, stem, generation)
            with self._lock:
                memo = self._committed.get(key)
            if memo is not None:
                return memo
            entry = (self._cached(self._layout.generations(project, stem)) or {}).get(str(int(generation)))
            marker = self._marker(key, entry) if entry is not None else self._read_marker(key)
            if marker is not None:
                with self._lock:
                    self._stems.setdefault((str(project), canonical), stem)  # generations only in a committed release
                    self._committed[key] = marker
                return marker
            if known is None and self._stem(project, release) == canonical:
                break  # stored under its canonical name after all: no generation of that number
        return None

    def _read_marker(self, key: str) -> dict[str, typing.Any] | None:
        """A marker by one GET of its key; None if there is none (or only a tombstone of an older retirement)."""
        try:
            raw = self._store.read(key)
        except FileNotFoundError:
            return None
        return codec.loads(raw, self._store.uri(key)) if len(raw) > len(layout.TOMBSTONE) else None

    # releases -------------------------------------------------------------------------------------------
    def push(self, package: 'prj.Package') -> None:
        project = names.project(package.manifest.name)
        release = names.release(package.manifest.version)
        stem = names.canonical(release)  # equal versions (2.0, 2.0.0) contend for one marker key
        self._store.verify_exclusive_create()  # once per endpoint and process: before anything is written
        existing = self._keys(self._list(self._layout.releases(project), fresh=True), names.release)
        if release in existing:  # PEP 440 equality: 2.0 == 2.0.0
            raise Conflict(
                f'Release {project}-{release} already exists in {self.url}{self._spelled(project, release)}: '
                'releases are immutable, bump the version in pyproject.toml and release again'
            )
        if existing and release < max(existing):
            raise asset.Level.Invalid(
                f'{project}-{release} is not an increment from existing {max(existing)} in {self.url}'
            )
        with tempfile.TemporaryDirectory(prefix='forml-s3-push-') as temp:
            source = _package_file(package.path, pathlib.Path(temp))
            size, sha256 = cachemod.sha256_of(source)
            key = self._layout.package(project, stem, sha256)
            self._track(project, stem, key)
            LOGGER.info('Uploading %s-%s package (%d bytes) to %s', project, release, size, self._store.uri(key))
            self._store.write(key, source, tags=self._uncommitted(), metadata={'sha256': sha256})
            with contextlib.suppress(cachemod.Unwritable):  # a copy for later pulls: the push goes on without it
                self._cache.fetch(
                    sha256, size, lambda t: _copy(source, t), name=str(source), suffix=layout.PACKAGE_SUFFIX
                )
        try:
            self._commit_stored(
                self._layout.release_dir(project, stem),
                {key: size},
                f'Cannot commit release {project}-{release}',
                lambda _: f'package {key.rsplit("/", 1)[-1]}',
            )
        except Incomplete:
            lease.settle(self._store, [key])
            raise
        marker = {
            'project': str(project),
            'release': str(release),
            'manifest': {
                'name': str(package.manifest.name),
                'version': str(package.manifest.version),
                'package': package.manifest.package,
                'modules': dict(package.manifest.modules),
            },
            'package': {'key': key.rsplit('/', 1)[-1], 'size': size, 'sha256': sha256},
            'created': codec.now(),
            'writer': codec.writer(),
        }
        body = codec.dumps(marker)
        try:
            self._create_marker(self._layout.release_marker(project, stem), body)
        except FileExistsError:
            self._invalidate(self._layout.releases(project))
            winner = self._release_marker(project, release)
            if winner.get('package', {}).get('sha256') != sha256:
                self._uncommit_tags([key])
            raise Conflict(
                f'Release {project}-{release} was pushed to {self.url} by another writer meanwhile '
                f'(as {winner.get("release", stem)}, by {winner.get("writer")}): releases are immutable, '
                'bump the version and release again'
            ) from None
        finally:
            self._invalidate(self._layout.releases(project))
            lease.settle(self._store, [key])
        self._ensure_project(project)

    def _spelled(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """`` (pushed as 2.0)`` when the existing release equal to ``release`` was pushed under another spelling."""
        try:
            pushed = str(self._release_marker(project, release).get('release'))
        except (forml.AnyError, OSError):  # only decorates an error message
            return ''
        return f' (pushed as {pushed})' if pushed != str(release) else ''

    def _create_marker(self, key: str, body: bytes) -> None:
        """Create a commit marker exclusively; ``FileExistsError`` if another writer's marker is there.

        A create whose answer was lost (a reset connection, a 5xx after the server stored it) is retried by the
        client and then meets the marker it has just created: that is this writer's commit, not a conflict. The
        marker (writer, time, content checksums) is unique to this commit, so an identical one is ours.
        """
        try:
            self._store.create(key, body)
        except FileExistsError:
            try:
                found = self._store.read(key)
            except FileNotFoundError:
                found = None
            if found != body:
                raise
            LOGGER.info('Marker %s was created by this writer (its first answer was lost)', self._store.uri(key))

    def _ensure_project(self, project: asset.Project.Key) -> None:
        """Create the project marker if missing (after the first release marker, so it never lists empty)."""
        if str(project) in self._list(self._layout.projects()):
            return
        with contextlib.suppress(FileExistsError):
            self._store.create(
                self._layout.project_marker(project),
                codec.dumps({'project': str(project), 'created': codec.now(), 'writer': codec.writer()}),
            )
        self._invalidate(self._layout.projects())

    def pull(self, project: asset.Project.Key, release: asset.Release.Key) -> 'prj.Package':
        return prj.Package(self._package_blob(project, release)[0])

    def _package_blob(self, project: asset.Project.Key, release: asset.Release.Key) -> tuple[pathlib.Path, str]:
        """The verified package in the local cache (downloaded once per machine) and its sha256."""
        marker, stem = self._release_marker(project, release), self._stem(project, release)
        try:
            info = marker['package']
            key = self._layout.release_object(project, stem, info['key'])
            size, sha256 = int(info['size']), str(info['sha256'])
        except (KeyError, TypeError, ValueError) as err:
            raise asset.Level.Invalid(
                f'Corrupted release marker of {project}-{release} in {self.url}: {err!r}'
            ) from err
        path = self._cache.fetch(
            sha256,
            size,
            lambda target: self._store.download(key, target, size),
            name=self._store.uri(key),
            suffix=layout.PACKAGE_SUFFIX,
        )
        return path, sha256

    def mount(self, project: asset.Project.Key, release: asset.Release.Key) -> 'prj.Artifact':
        project, release = names.project(project), self._stem(project, release)
        sha256 = str((self._release_marker(project, release).get('package') or {}).get('sha256'))
        if not _SHA256.fullmatch(sha256):  # it names the staged tree: never let a marker pick another path
            raise asset.Level.Invalid(f'Corrupted release marker of {project}-{release} in {self.url}: bad sha256')
        try:
            target = staging.ensure(
                staging.target(self._staging, str(project), release, sha256),
                sha256,
                lambda: self._package_blob(project, release),
            )
        except OSError as err:
            if not storage.local_failure(err):
                raise
            raise forml.FailedError(
                f'Cannot install {project}-{release} into the staging path {self._staging}: {err.strerror}'
                f'{f" ({err.filename})" if err.filename else ""}; free space there or make it writable, or set '
                'staging (in the registry section of config.toml; default <cache_dir>/staging) to a writable directory '
                'that every runner shares'
            ) from None
        manifest = prj.Manifest.read(target)
        setup.search(target)
        return prj.Artifact(target, manifest.package, **manifest.modules)

    # states and generations ---------------------------------------------------------------------------
    def write(self, project: asset.Project.Key, release: asset.Release.Key, sid: uuid.UUID, state: bytes) -> None:
        stem = self._stem(project, release)
        key = self._layout.state(project, stem, sid)
        self._store.verify_exclusive_create()
        sha256 = hashlib.sha256(state).hexdigest()
        uri = self._store.uri(key)
        if transfers.remember(uri, sha256) is not None:  # one id, two contents: refused, see transfers.remember
            raise forml.InvalidError(
                f'State {sid} of {project}-{release} was already written by this process with other content '
                f'({uri}); a state id is written once: write the new state under a new id (ForML uses a fresh one '
                'for every state it dumps)'
            )

        def upload() -> None:
            try:
                self._store.write(key, state, tags=self._uncommitted(), metadata={'sha256': sha256})
            except BaseException:
                transfers.unremember(uri, sha256)
                raise

        self._track(names.project(project), stem, key)
        if self._pack_states and len(state) <= packing.MAX_STATE:
            LOGGER.debug('Holding state %s (%d bytes) for packing', sid, len(state))
            packing.hold(uri, state, sha256, upload)
        else:
            LOGGER.debug('Uploading state %s (%d bytes) in the background', sid, len(state))
            transfers.submit_upload(uri, len(state), sha256, upload)

    def close(
        self,
        project: asset.Project.Key,
        release: asset.Release.Key,
        generation: asset.Generation.Key,
        tag: asset.Tag,
    ) -> None:
        project, generation = names.project(project), names.generation(generation)
        release = self._stem(project, release)
        if self._entry(self._layout.releases(project), release) is None:
            raise asset.Level.Invalid(f'No release {project}-{release} in {self.url} to commit generation into')
        self._store.verify_exclusive_create()
        prefix = self._layout.generations(project, release)
        with self._lock:  # early exit on a known conflict; the exclusive marker below is the real guard
            known = self._listings.get(prefix, (0, {}))[1]
        if str(int(generation)) in known:
            raise self._conflict(project, release, generation)
        sids = list(dict.fromkeys(str(s) for s in tag.states))
        keys = {sid: self._layout.state(project, release, sid) for sid in sids}
        alone, pack = self._claim_pack(project, release, keys)
        try:
            checksums = self._stored_checksums(alone, pack)
            stored = list(alone.values()) + ([pack.key] if pack else [])
            sizes = {alone[sid]: size for sid, (size, _) in checksums.items()}
            if pack:
                sizes[pack.key] = len(pack.body)
            what = {key: f'state {sid}' for sid, key in alone.items()}
            if pack:
                what[pack.key] = f'pack {pack.name} of states {", ".join(sid for sid, _ in pack.held)}'
            self._commit_stored(
                self._layout.states(project, release),
                sizes,
                f'Cannot commit generation {generation} of {project}-{release}',
                what.get,
            )
            states = {sid: {'size': size, 'sha256': sha} for sid, (size, sha) in checksums.items()}
            if pack:
                states.update(pack.states())
            marker = codec.generation_marker(
                str(project),
                str(release),
                int(generation),
                tag,
                {sid: states[sid] for sid in sids},
                codec.writer(),
                packs={pack.name: {'size': len(pack.body), 'sha256': pack.sha256}} if pack else None,
            )
            key = self._layout.generation_marker(project, release, generation)
            try:
                self._create_marker(key, codec.dumps(marker))
                floor = retention.floor(self._store, self._layout, str(project), release)
                if int(generation) < floor:  # a retired number whose marker was moved away: never committed twice
                    self._store.delete(key)
                    self._uncommit_tags(stored)
                    raise Conflict(
                        f'Generation {generation} of {project}-{release} was committed and retired meanwhile '
                        f'({self.url}: no generation below {floor} is committed any more); your states were not '
                        'committed. Train again to build on the newest generation.'
                    )
            except FileExistsError:
                self._uncommit_tags(stored)
                raise self._conflict(project, release, generation) from None
            finally:
                self._invalidate(prefix)
        except Conflict as conflict:
            if pack:  # ForML trains again rather than committing these states under another number
                pack.fail(conflict)
            lease.settle(self._store, [*keys.values(), *([pack.key] if pack else [])])
            raise
        except Incomplete as incomplete:  # abandoned like a lost race: ForML trains again
            if pack:
                pack.fail(incomplete)
            lease.settle(self._store, [*keys.values(), *([pack.key] if pack else [])])
            raise
        except BaseException:
            if pack:  # the pack (if stored) is an orphan; its states stay committable, as stored ones do
                packing.restore(held for _, held in pack.held)
            raise
        if pack:
            pack.done()
        lease.settle(self._store, [*keys.values(), *([pack.key] if pack else [])])
        for key in keys.values():
            transfers.forget(self._store.uri(key))
        LOGGER.info(
            'Committed generation %s of %s-%s (%d states%s)',
            generation, project, release, len(keys), f', {len(pack.held)} of them in one pack' if pack else '',
        )  # fmt: skip
        if self._keep_generations:
            self._retire(project, release)

    def _retire(self, project: str, release: str) -> None:
        """Apply ``keep_generations`` after a commit; a failure here never undoes the commit."""
        try:
            retired = retention.retire(
                self._store, self._layout, project, release, self._keep_generations, read=self._marker
            )
        except Exception as err:
            LOGGER.warning('Could not retire old generations of %s-%s: %s', project, release, err)
            return
        finally:
            self._invalidate(self._layout.generations(project, release))
        if retired:
            with self._lock:  # own retirement: hidden from this process at once, as from listings
                for generation in retired:
                    self._committed.pop(self._layout.generation_marker(project, release, generation), None)
            LOGGER.info('Retired generations %s of %s-%s', retired, project, release)

    def _conflict(self, project: str, release: str, generation: int) -> Conflict:
        return Conflict(
            f'Generation {generation} of {project}-{release} was committed by another writer meanwhile '
            f'({self.url}); your states were not committed. Train again to build generation '
            f'{int(generation) + 1} on top of it.'
        )

    def _claim_pack(self, project: str, release: str, keys: dict[str, str]) -> tuple[dict[str, str], '_Pack | None']:
        """The states (by id: key) held in this process, claimed as one pack; and the others, stored on their own."""
        if not self._pack_states:
            return keys, None
        held = packing.claim(self._store.uri(k) for k in keys.values())
        try:
            if len(held) == 1:  # nothing to pack it with: stored on its own
                packing.send(*held.values())
                held = {}
            alone = {sid: key for sid, key in keys.items() if self._store.uri(key) not in held}
            packed = [(sid, held[self._store.uri(key)]) for sid, key in keys.items() if sid not in alone]
            if not packed:
                return alone, None
            pack = _Pack.of(self._layout.pack(project, release, uuid.uuid4()), packed)
            self._track(project, release, pack.key)
            return alone, pack
        except BaseException:  # interrupted: nothing claimed may be left neither held nor sent
            packing.restore(held.values())
            raise

    def _stored_checksums(self, alone: dict[str, str], pack: '_Pack | None') -> dict[str, tuple[int, str]]:
        """Size and sha256 of each state stored on its own (by id), once stored; and the pack stored, if any.

        This process's own uploads are waited for here, in the calling thread, never in a pool worker: an upload
        queued behind such a waiting worker (the packing sender queues them any time) could never start once
        every worker waits. Pool workers only upload the pack and poll for states written by other processes.
        """
        uploads = {sid: transfers.pending(self._store.uri(key)) for sid, key in alone.items()}
        pool = transfers.pool()
        stored_pack = pool.submit(self._store_pack, pack) if pack else None
        polls = {sid: pool.submit(self._polled_checksum, alone[sid]) for sid, up in uploads.items() if up is None}
        try:
            checksums = {
                sid: self._uploaded_checksum(alone[sid], up) if up is not None else polls[sid].result()
                for sid, up in uploads.items()
            }
            if stored_pack:
                stored_pack.result()
        finally:
            for poll in polls.values():
                poll.cancel()
        return checksums

    def _store_pack(self, pack: '_Pack') -> tuple[int, str]:
        uri = self._store.uri(pack.key)
        LOGGER.debug('Uploading %d states in one pack %s (%d bytes)', len(pack.held), uri, len(pack.body))
        try:
            self._store.write(pack.key, pack.body, tags=self._uncommitted(), metadata={'sha256': pack.sha256})
        except Exception as err:
            raise asset.Level.Invalid(f'Upload of state pack {uri} failed: {err}') from err
        return len(pack.body), pack.sha256

    def _uploaded_checksum(self, key: str, pending: transfers.Pending) -> tuple[int, str]:
        """Size and sha256 of a state written in this process, once its upload (or its pack's) has finished."""
        uri = self._store.uri(key)
        try:
            pending.future.result()
        except Exception as err:
            transfers.forget(uri)
            raise asset.Level.Invalid(f'Upload of state {uri} failed: {err}') from err
        return pending.size, pending.sha256

    def _polled_checksum(self, key: str) -> tuple[int, str]:
        """Size and sha256 of a state written by another process (a Dask worker): wait for it to appear, up to
        ``commit_timeout``, then take the checksum from its S3 metadata (or hash its content where the store keeps
        no metadata)."""
        uri = self._store.uri(key)
        deadline = time.monotonic() + self._commit_timeout
        delay = 0.05
        while True:
            try:
                size, metadata = self._store.head(key)
                break
            except FileNotFoundError:
                if time.monotonic() > deadline:
                    raise asset.Level.Invalid(
                        f'State {uri} was not stored within {self._commit_timeout:.0f}s: its writer failed or '
                        'died; nothing was committed, train again'
                    ) from None
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
        if 'sha256' in metadata:
            return size, metadata['sha256']
        data = self._store.read(key)
        return len(data), hashlib.sha256(data).hexdigest()

    def open(
        self, project: asset.Project.Key, release: asset.Release.Key, generation: asset.Generation.Key
    ) -> asset.Tag:
        marker = self._generation_marker(project, release, generation)
        if marker is None:
            raise asset.Level.Listing.Empty(f'No generation {generation} of {project}-{release} in {self.url}')
        release = self._stem(project, release)  # known by now: no request
        key = self._layout.generation_marker(project, release, generation)
        tag = codec.tag_of(marker, self._store.uri(key))
        self._layout.stored(project, release, marker)  # validates the states' locations before fetching any
        self._prefetch(project, release, marker)
        return tag

    def _prefetch(self, project: str, release: str, marker: dict[str, typing.Any]) -> None:
        """Start fetching the generation's states not cached yet, all at once, in the background (a pack once)."""
        packed: dict[str, list[str]] = {}
        for sid, info in marker['states'].items():
            if not self._cache.cached(info['sha256']):  # read() checks the cached ones before serving them
                if 'pack' in info:
                    packed.setdefault(str(info['pack']), []).append(sid)
                else:
                    transfers.pool().submit(self._fetch_state, project, release, marker, sid)
        for sids in packed.values():
            transfers.pool().submit(self._fetch_packed, project, release, marker, sids)

    def _fetch_state(self, project: str, release: str, marker: dict[str, typing.Any], sid: str) -> None:
        info = marker['states'][sid]
        if 'pack' in info:
            self._fetch_packed(project, release, marker, [sid])
            return
        key = self._layout.state(project, release, sid)
        self._cache.fetch(
            str(info['sha256']),
            int(info['size']),
            lambda target: self._store.download(key, target, int(info['size'])),
            name=self._store.uri(key),
        )

    def _fetch_packed(self, project: str, release: str, marker: dict[str, typing.Any], sids: list[str]) -> None:
        """Cache states of one pack: the pack is fetched (once, and cached), each state cut out and verified."""
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
        for attempt in range(3):  # the pack may be evicted between its fetch and its reading
            path = self._cache.fetch(
                sha256, size, lambda target: self._store.download(key, target, size), name=self._store.uri(key)
            )
            try:
                with path.open('rb') as pack:
                    for sid, state_sha, offset, state_size in spans:
                        pack.seek(offset)
                        data = pack.read(state_size)
                        self._cache.fetch(
                            state_sha,
                            state_size,
                            lambda target, data=data: target.write_bytes(data),
                            name=f'{self._store.uri(key)} (state {sid} at {offset})',
                        )
                return
            except FileNotFoundError:
                if attempt == 2:
                    raise

    def read(
        self,
        project: asset.Project.Key,
        release: asset.Release.Key,
        generation: asset.Generation.Key,
        sid: uuid.UUID,
    ) -> bytes:
        sid = names.state(sid)
        marker = self._generation_marker(project, release, generation)
        if marker is None:
            raise asset.Level.Invalid(f'Invalid registry component {project}/{release}/{generation}')
        release = self._stem(project, release)  # known by now: no request
        info = marker.get('states', {}).get(str(sid))
        if info is None:
            LOGGER.warning('No state %s in generation %s of %s-%s', sid, generation, project, release)
            return b''
        for _ in range(3):  # a blob evicted between fetch and read is fetched again
            data = self._cache.read(str(info['sha256']))
            if data is not None:
                return data
            try:
                self._fetch_state(names.project(project), release, marker, str(sid))
            except FileNotFoundError as err:
                where = f'pack {info["pack"]}' if 'pack' in info else 'its object'
                raise forml.MissingError(
                    f'State {sid} of generation {generation} of {project}-{release} is missing from {self.url} '
                    f'({where} does not exist): the committed generation is incomplete; run '
                    f'`forml-s3 verify {self.url}` to see what else is missing'
                ) from err
        raise forml.UnexpectedError(f'State {sid} keeps disappearing from the cache at {self._cache.root}')

    # commit safety ---------------------------------------------------------------------------------------
    def _track(self, project: str, release: str, key: str) -> None:
        """An upload this process has to commit: leased against ``gc`` if it stays uncommitted for long."""
        lease.track(self._store, self._layout, str(project), str(names.release(release)), key, self._lease_after)

    def _commit_stored(
        self, prefix: str, sizes: dict[str, int], refusal: str, what: typing.Callable[[str], str | None]
    ) -> None:
        """Clear the uncommitted tags of the objects about to be committed (by key: their recorded size) and
        refuse the commit unless every one is stored under ``prefix`` with that size.

        The check is one LIST page per 1,000 objects under ``prefix`` (not a request per object), the last word
        before the marker, so a state ``gc`` or a lifecycle rule removed while the training ran is never committed.
        A tag clear failing on a missing object (moto answers 500, S3 404) is reported as that missing object.
        """
        try:
            self._commit_tags(list(sizes))
        except Exception:
            self._confirm_stored(prefix, sizes, refusal, what)  # names what is missing, if that is the cause
            raise
        self._confirm_stored(prefix, sizes, refusal, what)

    def _confirm_stored(
        self, prefix: str, sizes: dict[str, int], refusal: str, what: typing.Callable[[str], str | None]
    ) -> None:
        """Raise :class:`Incomplete` unless every object of ``sizes`` is listed under ``prefix`` with its size."""
        if not sizes:
            return
        found = {f'{prefix}/{e.name}': e.size for e in self._store.listdir(prefix)}
        wrong = {key: found.get(key) for key, size in sizes.items() if found.get(key) != size}
        if wrong:
            missing = [
                f'{what(key) or key} ({"missing" if got is None else f"{got} bytes, not {sizes[key]}"})'
                for key, got in sorted(wrong.items())
            ]
            raise Incomplete(
                f'{refusal}: {", ".join(missing)} in {self._store.uri(prefix)} - deleted while the upload waited for '
                'its commit (by `forml-s3 gc` or a lifecycle rule) or lost; nothing was committed, run it again'
            )

    # tags -----------------------------------------------------------------------------------------------
    def _uncommitted(self) -> dict[str, str] | None:
        return UNCOMMITTED if self._tag_uncommitted and self._store.object_tags else None

    def _commit_tags(self, keys: list[str]) -> None:
        """Clear the uncommitted tag of objects about to be committed (in parallel)."""
        if self._uncommitted():
            transfers.run_all(lambda k: self._store.set_tags(k, {}), keys)

    def _uncommit_tags(self, keys: list[str]) -> None:
        """Put the uncommitted tag back on objects whose commit was lost (best effort)."""
        if self._uncommitted():
            try:
                transfers.run_all(lambda k: self._store.set_tags(k, UNCOMMITTED), keys)
            except Exception as err:  # the conflict is the error to report; this only affects expiry
                LOGGER.warning('Could not re-tag %d uncommitted objects: %s', len(keys), err)


def _copy(source: pathlib.Path, target: pathlib.Path) -> None:
    shutil.copyfile(source, target)


@dataclasses.dataclass(frozen=True)
class _Pack:
    """Held states of one commit, side by side in one object (see :mod:`forml_s3.runtime.packing`)."""

    key: str
    held: list[tuple[str, packing.Held]]
    """State ids and their held states, in the order they are stored."""
    body: bytes
    sha256: str

    @classmethod
    def of(cls, key: str, held: list[tuple[str, packing.Held]]) -> '_Pack':
        body = b''.join(h.data for _, h in held)
        return cls(key, held, body, hashlib.sha256(body).hexdigest())

    @property
    def name(self) -> str:
        return self.key.rsplit('/', 1)[-1][: -len(layout.PACK_SUFFIX)]

    def states(self) -> dict[str, dict[str, typing.Any]]:
        """Marker entries of the packed states, by state id: size, sha256, pack and offset."""
        entries, offset = {}, 0
        for sid, held in self.held:
            entries[sid] = {'size': len(held.data), 'sha256': held.sha256, 'pack': self.name, 'offset': offset}
            offset += len(held.data)
        return entries

    def done(self) -> None:
        for _, held in self.held:
            held.future.set_result(None)

    def fail(self, err: BaseException) -> None:
        for _, held in self.held:
            held.future.set_exception(err)


def _package_file(path: pathlib.Path, temp: pathlib.Path) -> pathlib.Path:
    """The package as one zip file (ForML also has directory-based packages: zip those)."""
    path = pathlib.Path(path)
    if path.is_file():
        return path
    archive = temp / f'{path.name}{layout.PACKAGE_SUFFIX}'
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as zipped:
        for file in sorted(path.rglob('*')):
            if file.is_file() and '__pycache__' not in file.parts:
                zipped.write(file, file.relative_to(path))
    return archive
