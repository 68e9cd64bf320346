"""The one place that knows the key layout of a registry.

Paths are relative to the registry root (the configured URL)::

    <project>.json                                  project marker (created with the first release)
    <project>/releases/<release>.json               release marker: manifest, package key, size, sha256
    <project>/<release>/package-<sha256[:16]>.4ml   the release package (stored before its marker)
    <project>/<release>/generations/<n>.json        generation marker: tag + each state's size, sha256
    <project>/<release>/retired/<n>.json            marker of a retired generation (hidden from listings)
    <project>/<release>/pinned/<n>.json             pin: the generation is never retired
    <project>/<release>/floor/<n>.json              retirement floor: no generation below n is committed any more
    <project>/<release>/states/<sid>.bin            states, written once, uncommitted until a marker names them
    <project>/<release>/states/<pack-id>.pack       small states of one commit side by side (forml_s3.runtime.packing)
    <project>/aliases/<name>.json                   alias: a named pointer to one generation, with its history
    .leases/<writer>.json                           a live process's uncommitted releases (see forml_s3.runtime.lease)

``<release>`` is the version's canonical key (:func:`forml_s3.model.names.canonical`: ``2``, ``2.0`` and ``2.0.0``
are all ``2.0``), so that equal versions contend for one exclusive create; a registry written before canonical keys
holds releases under the spelling pushed, and :meth:`Layout.stored_as` finds them.

Markers of one level sit side by side under a prefix that holds nothing else, so one delimiter LIST
returns the whole level (up to 1,000 entries a page) and shows only what is committed. The package key
carries the content hash, so two writers racing for one version never write the same object.

Retiring a generation moves its marker from ``generations/`` to ``retired/``, so the level lists only live
generations however long the history. No number is ever committed twice: retiring first raises the release's
*floor* (``floor/<n>.json``, the highest one counts), and a writer whose exclusive create of a number below the
floor succeeded (its marker was moved away) deletes its marker again and loses (see :mod:`forml_s3.retention`).
Registries retired by earlier versions hold an empty object, a *tombstone*, in place of each retired marker:
listings skip empty markers (the size comes with the LIST, so this costs no request), and the next retire of the
release moves them out (raising the floor above them first).
"""

import dataclasses
import enum
import re
import typing
import uuid

from forml.io import asset

from . import names

MARKER = '.json'
PACKAGE_PREFIX = 'package-'
PACKAGE_SUFFIX = '.4ml'
STATE_SUFFIX = '.bin'
PACK_SUFFIX = '.pack'
# folder names of the layout (see the module docstring)
RELEASES = 'releases'
GENERATIONS = 'generations'
RETIRED = 'retired'
PINNED = 'pinned'
FLOOR = 'floor'
STATES = 'states'
LEASES = '.leases'
ALIASES = 'aliases'
TOMBSTONE = b''
"""Content of the generation marker of a retired generation (see the module docstring)."""

PACKAGE_DIGEST = re.compile(r'[0-9a-f]{16}')
"""What a package key carries of its sha256: a name like ``package-backup.4ml`` is never one of ours."""
LEASE_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,200}')

UNCOMMITTED_TAG = ('forml-s3', 'uncommitted')
"""S3 object tag carried by states and packages until their marker commits them (lifecycle filter)."""
RETIRED_TAG = ('forml-s3', 'retired')
"""S3 object tag carried by the objects of retired generations (lifecycle filter)."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Key maker for one registry root (a path without protocol, e.g. ``bucket/forml``)."""

    root: str

    def __post_init__(self):
        object.__setattr__(self, 'root', self.root.rstrip('/'))

    def _join(self, *parts: str) -> str:
        return '/'.join((self.root, *parts)) if self.root else '/'.join(parts)

    # levels -----------------------------------------------------------------------------------
    def projects(self) -> str:
        """Prefix listing the project markers."""
        return self.root

    def releases(self, project: asset.Project.Key) -> str:
        """Prefix listing the release markers of a project."""
        return self._join(names.project(project), RELEASES)

    def generations(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """Prefix listing the generation markers of a release."""
        return self._join(names.project(project), str(names.release(release)), GENERATIONS)

    def retired(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """Prefix listing the markers of retired generations of a release."""
        return self._join(names.project(project), str(names.release(release)), RETIRED)

    def pinned(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """Prefix listing the pins of a release's generations."""
        return self._join(names.project(project), str(names.release(release)), PINNED)

    def floors(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """Prefix listing the retirement floors of a release (the highest counts; see the module docs)."""
        return self._join(names.project(project), str(names.release(release)), FLOOR)

    def states(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """Prefix holding the state objects of a release."""
        return self._join(names.project(project), str(names.release(release)), STATES)

    def release_dir(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        """Prefix of a release's own objects (its package) and of its level prefixes."""
        return self._join(names.project(project), str(names.release(release)))

    def leases(self) -> str:
        """Prefix listing the leases of live writers (starts with a dot: never a project)."""
        return self._join(LEASES)

    def lease(self, name: str) -> str:
        """A lease by its writer's name (host, pid and a random suffix)."""
        if not LEASE_NAME.fullmatch(name):
            raise asset.Level.Invalid(f'Invalid lease name {name!r}')
        return f'{self.leases()}/{name}{MARKER}'

    def aliases(self, project: asset.Project.Key) -> str:
        """Prefix listing the aliases of a project (``aliases`` is no PEP 440 version: no release collides)."""
        return self._join(names.project(project), ALIASES)

    # objects ----------------------------------------------------------------------------------
    def alias(self, project: asset.Project.Key, name: str) -> str:
        return f'{self.aliases(project)}/{names.alias(name)}{MARKER}'

    def project_marker(self, project: asset.Project.Key) -> str:
        return self._join(f'{names.project(project)}{MARKER}')

    def release_marker(self, project: asset.Project.Key, release: asset.Release.Key) -> str:
        return f'{self.releases(project)}/{names.release(release)}{MARKER}'

    def package(self, project: asset.Project.Key, release: asset.Release.Key, sha256: str) -> str:
        if not PACKAGE_DIGEST.fullmatch(sha256[:16]):
            raise asset.Level.Invalid(f'Invalid package digest {sha256!r}: expected a hex sha256')
        return self.release_object(project, release, f'{PACKAGE_PREFIX}{sha256[:16]}{PACKAGE_SUFFIX}')

    def release_object(self, project: asset.Project.Key, release: asset.Release.Key, name: str) -> str:
        """An object directly in a release's directory (the package, by the name its marker records)."""
        if '/' in name or name.startswith('.'):
            raise asset.Level.Invalid(f'Invalid object name {name!r} in release {project}-{release}')
        return self._join(names.project(project), str(names.release(release)), name)

    @staticmethod
    def object_name(key: str) -> str:
        """The name of a release's object (what its marker records; :meth:`release_object` makes the key back)."""
        return key.rsplit('/', 1)[-1]

    @staticmethod
    def pack_id(key: str) -> str:
        """The id of a pack by its key (what a generation marker's ``packs`` names; :meth:`pack` makes the key)."""
        return key.rsplit('/', 1)[-1].removesuffix(PACK_SUFFIX)

    def generation_marker(
        self, project: asset.Project.Key, release: asset.Release.Key, generation: asset.Generation.Key
    ) -> str:
        return f'{self.generations(project, release)}/{int(names.generation(generation))}{MARKER}'

    def retired_marker(
        self, project: asset.Project.Key, release: asset.Release.Key, generation: asset.Generation.Key
    ) -> str:
        return f'{self.retired(project, release)}/{int(names.generation(generation))}{MARKER}'

    def pin_marker(
        self, project: asset.Project.Key, release: asset.Release.Key, generation: asset.Generation.Key
    ) -> str:
        return f'{self.pinned(project, release)}/{int(names.generation(generation))}{MARKER}'

    def floor_marker(self, project: asset.Project.Key, release: asset.Release.Key, below: int) -> str:
        return f'{self.floors(project, release)}/{int(below)}{MARKER}'

    def state(self, project: asset.Project.Key, release: asset.Release.Key, sid: uuid.UUID) -> str:
        return f'{self.states(project, release)}/{names.state(sid)}{STATE_SUFFIX}'

    def pack(self, project: asset.Project.Key, release: asset.Release.Key, pack: uuid.UUID | str) -> str:
        return f'{self.states(project, release)}/{names.state(pack)}{PACK_SUFFIX}'

    def stored(
        self, project: asset.Project.Key, release: asset.Release.Key, marker: typing.Mapping[str, typing.Any]
    ) -> dict[str, tuple[int, str, str]]:
        """Objects a generation marker names, by key: (size, sha256, what) - each state stored on its own and
        each pack (whose states the marker locates by offset).

        Raises:
            asset.Level.Invalid: The marker's states or packs are malformed.
        """
        try:
            packs = marker.get('packs') or {}
            stored = {
                self.pack(project, release, pid): (int(info['size']), str(info['sha256']), f'pack {pid}')
                for pid, info in packs.items()
            }
            for sid, info in marker['states'].items():
                if 'pack' in info:
                    if str(info['pack']) not in packs:
                        raise ValueError(f'state {sid} is in pack {info["pack"]}, which the marker does not name')
                    continue
                stored[self.state(project, release, sid)] = (int(info['size']), str(info['sha256']), f'state {sid}')
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise asset.Level.Invalid(f'Malformed states in generation marker: {err}') from err
        return stored

    # parsing listings -------------------------------------------------------------------------
    @staticmethod
    def stored_as(listed: typing.Iterable[str], release: asset.Release.Key | str) -> str | None:
        """Which of the listed release names (marker names) stands for ``release``: PEP 440-equal, the canonical
        key preferred (a registry written before canonical keys may hold one version under two spellings), then
        the same spelling; None if no listed release equals it."""
        key = names.release(release)
        equal = []
        for name in listed:
            try:
                if names.release(name) == key:
                    equal.append(name)
            except asset.Level.Invalid:
                continue
        for preferred in (names.canonical(key), str(key)):
            if preferred in equal:
                return preferred
        return min(equal, default=None)

    @staticmethod
    def marker_names(sizes: typing.Mapping[str, int]) -> typing.Iterator[str]:
        """The level names of the live markers among listed objects (basename -> size); other objects and
        tombstones (empty markers) are skipped."""
        for base, size in sizes.items():
            if base.endswith(MARKER) and not base.startswith('.') and live(size):
                yield base[: -len(MARKER)]

    @staticmethod
    def tombstone_names(sizes: typing.Mapping[str, int]) -> typing.Iterator[str]:
        """The level names of the tombstones (a retired generation's number, kept taken) among listed objects."""
        for base, size in sizes.items():
            if base.endswith(MARKER) and not base.startswith('.') and not live(size):
                yield base[: -len(MARKER)]


def live(size: int) -> bool:
    """Whether a marker of ``size`` bytes is live: a tombstone is empty (see the module docstring)."""
    return size > len(TOMBSTONE)


class Kind(enum.Enum):
    """What a key of the registry is."""

    PROJECT_MARKER = 'project-marker'
    RELEASE_MARKER = 'release-marker'
    GENERATION_MARKER = 'generation-marker'
    RETIRED_MARKER = 'retired-marker'
    PIN_MARKER = 'pin-marker'
    FLOOR = 'floor'
    """A release's retirement floor (see :mod:`forml_s3.runtime.retention`)."""
    TOMBSTONE = 'tombstone'
    PACKAGE = 'package'
    STATE = 'state'
    PACK = 'pack'
    """Small states of one commit side by side."""
    OTHER = 'other'


STORED = (Kind.PACKAGE, Kind.STATE, Kind.PACK)
"""Kinds of the objects markers name (the rest are markers or foreign)."""


# parsing keys ---------------------------------------------------------------------------------------------
def classify(lay: Layout, path: str) -> tuple[Kind, str | None, str | None, str | None]:
    """What the key ``path`` is: (kind, project, release, name).

    Candidate components are taken from the path's segments and accepted only if :class:`Layout` makes
    exactly this key from them, so the layout stays the one authority (a key it would not make is ``OTHER``).
    """
    prefix = f'{lay.root}/' if lay.root else ''
    if not path.startswith(prefix):
        return Kind.OTHER, None, None, None
    parts = path[len(prefix) :].split('/')
    try:
        if len(parts) == 1 and parts[0].endswith(MARKER):
            project = parts[0][: -len(MARKER)]
            if lay.project_marker(project) == path:
                return Kind.PROJECT_MARKER, str(names.project(project)), None, None
        elif len(parts) == 3:
            project, middle, base = parts
            if base.endswith(MARKER) and lay.release_marker(project, base[: -len(MARKER)]) == path:
                return Kind.RELEASE_MARKER, project, str(names.release(base[: -len(MARKER)])), None
            if (
                base.startswith(PACKAGE_PREFIX)
                and base.endswith(PACKAGE_SUFFIX)
                and lay.package(project, middle, base[len(PACKAGE_PREFIX) : -len(PACKAGE_SUFFIX)]) == path
            ):
                return Kind.PACKAGE, str(names.project(project)), str(names.release(middle)), base
        elif len(parts) == 4:
            project, release, _, base = parts
            stem = base.rsplit('.', 1)[0]
            if base.endswith(MARKER) and stem.isdigit():
                if lay.generation_marker(project, release, int(stem)) == path:
                    return Kind.GENERATION_MARKER, project, str(names.release(release)), stem
                if lay.retired_marker(project, release, int(stem)) == path:
                    return Kind.RETIRED_MARKER, project, str(names.release(release)), stem
                if lay.pin_marker(project, release, int(stem)) == path:
                    return Kind.PIN_MARKER, project, str(names.release(release)), stem
                if lay.floor_marker(project, release, int(stem)) == path:
                    return Kind.FLOOR, project, str(names.release(release)), stem
            if base.endswith(STATE_SUFFIX) and lay.state(project, release, stem) == path:
                return Kind.STATE, project, str(names.release(release)), str(names.state(stem))
            if base.endswith(PACK_SUFFIX) and lay.pack(project, release, stem) == path:
                return Kind.PACK, project, str(names.release(release)), str(names.state(stem))
    except (asset.Level.Invalid, ValueError):
        pass
    return Kind.OTHER, None, None, None


DESCRIPTOR_SUFFIX = '.py'


@dataclasses.dataclass(frozen=True)
class InventoryLayout:
    """Key maker for an application inventory: ``<root>/<application>.py``, one object per descriptor."""

    root: str

    def __post_init__(self):
        object.__setattr__(self, 'root', self.root.rstrip('/'))

    def descriptor(self, application: str) -> str:
        name = f'{names.application(application)}{DESCRIPTOR_SUFFIX}'
        return f'{self.root}/{name}' if self.root else name

    @staticmethod
    def applications(basenames: typing.Iterable[str]) -> typing.Iterator[str]:
        """The application names among the given basenames (other objects are skipped)."""
        for base in basenames:
            if base.endswith(DESCRIPTOR_SUFFIX) and not base.startswith('.'):
                yield base[: -len(DESCRIPTOR_SUFFIX)]
