"""ForML model registry provider over object storage: ``forml.io.asset.Registry`` on any fsspec URL.

An adapter from ForML's calls to the runtime: keys from :mod:`forml_s3.model.layout`, bytes through
:mod:`forml_s3.storage`, listings and markers through :mod:`forml_s3.runtime.markers`, states and packages read
through the local cache by :mod:`forml_s3.runtime.fetch`, and the commit protocol of :mod:`forml_s3.runtime.commit`
(a release or generation becomes visible only when its marker is created, exclusively, after everything the marker
names is stored - so listings show whole releases and generations or nothing, and of two writers racing for the
same one exactly one wins).
"""

import logging
import pathlib
import re
import tempfile
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
from .runtime import commit, fetch, lease, markers, staging
from .runtime.commit import Conflict, Incomplete

LOGGER = logging.getLogger(__name__)

_SHA256 = re.compile(r'[0-9a-f]{64}')

__all__ = ['Conflict', 'Incomplete', 'Registry']


class Registry(commit.Protocol, asset.Registry, alias='s3', metaclass=settings.Checked):
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
        self._reader: markers.Markers = markers.Markers(self._store, self._cache, listing_ttl)
        self._fetcher: fetch.Fetcher = fetch.Fetcher(self._store, self._layout, self._cache)
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
        """Markers under ``prefix`` by level name (see :meth:`forml_s3.runtime.markers.Markers.listing`)."""
        return self._reader.listing(prefix, fresh)

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
        self._reader.invalidate(*prefixes)

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
        return self._reader.marker(key, entry)

    def _entry(self, prefix: str, name: str) -> storage.Entry | None:
        return self._reader.entry(prefix, name)

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
        :mod:`forml_s3.runtime.retention`), so a marker read once stays true for the life of the process."""
        project, canonical = names.project(project), names.canonical(release)
        known = self._stems.get((str(project), canonical))
        for stem in (known,) if known is not None else (canonical, None):
            stem = stem or self._stem(project, release)  # not under its canonical name: an older spelling
            key = self._layout.generation_marker(project, stem, generation)
            memo = self._reader.committed(key)
            if memo is not None:
                return memo
            entry = (self._reader.cached(self._layout.generations(project, stem)) or {}).get(str(int(generation)))
            marker = self._marker(key, entry) if entry is not None else self._reader.optional(key)
            if marker is not None:
                self._stems.setdefault((str(project), canonical), stem)  # generations only in a committed release
                self._reader.remember(key, marker)
                return marker
            if known is None and self._stem(project, release) == canonical:
                break  # stored under its canonical name after all: no generation of that number
        return None

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
            LOGGER.info('Uploading %s-%s package (%d bytes) to %s', project, release, size, self._store.url_of(key))
            self._store.write(key, source, tags=self._uncommitted(), metadata={'sha256': sha256})
            self._fetcher.keep_package(source, size, sha256)  # a copy for later pulls
        manifest = {
            'name': str(package.manifest.name),
            'version': str(package.manifest.version),
            'package': package.manifest.package,
            'modules': dict(package.manifest.modules),
        }
        self._commit_release(project, release, stem, key, size, sha256, manifest)

    def _spelled(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """`` (pushed as 2.0)`` when the existing release equal to ``release`` was pushed under another spelling."""
        try:
            pushed = str(self._release_marker(project, release).get('release'))
        except (forml.AnyError, OSError):  # only decorates an error message
            return ''
        return f' (pushed as {pushed})' if pushed != str(release) else ''

    def pull(self, project: asset.Project.Key, release: asset.Release.Key) -> 'prj.Package':
        marker, stem = self._release_marker(project, release), self._stem(project, release)
        return prj.Package(self._fetcher.package(str(project), str(release), stem, marker)[0])

    def _package_file(
        self, project: asset.Project.Key, release: asset.Release.Key, landed: typing.Callable[[int], None]
    ) -> tuple[typing.BinaryIO, str]:
        """The verified package opened from the local cache (downloaded once per machine) and its sha256; ``landed``
        as for :meth:`~forml_s3.runtime.fetch.Fetcher.package`."""
        marker, stem = self._release_marker(project, release), self._stem(project, release)
        return self._fetcher.package(str(project), str(release), stem, marker, opened=True, landed=landed)

    def mount(self, project: asset.Project.Key, release: asset.Release.Key) -> 'prj.Artifact':
        project, release = names.project(project), self._stem(project, release)
        sha256 = str((self._release_marker(project, release).get('package') or {}).get('sha256'))
        if not _SHA256.fullmatch(sha256):  # it names the staged tree: never let a marker pick another path
            raise asset.Level.Invalid(f'Corrupted release marker of {project}-{release} in {self.url}: bad sha256')
        try:
            target = staging.ensure(
                staging.target(self._staging, str(project), release, sha256),
                sha256,
                # opened: no eviction takes it from the install
                lambda landed: self._package_file(project, release, landed),
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
        self._write_state(project, release, self._stem(project, release), sid, state)

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
        self._commit_generation(project, release, generation, tag)

    def open(
        self, project: asset.Project.Key, release: asset.Release.Key, generation: asset.Generation.Key
    ) -> asset.Tag:
        marker = self._generation_marker(project, release, generation)
        if marker is None:
            raise asset.Level.Listing.Empty(f'No generation {generation} of {project}-{release} in {self.url}')
        release = self._stem(project, release)  # known by now: no request
        key = self._layout.generation_marker(project, release, generation)
        tag = codec.tag_of(marker, self._store.url_of(key))
        self._layout.stored(project, release, marker)  # validates the states' locations before fetching any
        self._fetcher.prefetch(project, release, marker)
        return tag

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
        return self._fetcher.read(str(names.project(project)), release, generation, str(sid), marker)


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
