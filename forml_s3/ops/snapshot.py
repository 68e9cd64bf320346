"""Inspection of a registry for operators: the tree (``forml-s3 ls``), integrity (``verify``) and garbage (``gc``).

Everything starts from one :func:`snapshot`: a recursive listing of the registry root (one LIST request per
1,000 objects) plus one GET per release, generation and retired marker. Each listed object is classified by
asking :mod:`forml_s3.model.layout` which key it is (see :func:`classify`), so this module makes no key of its own.

* :func:`verify` checks every committed object a marker names - exists, same size, same sha256 - and reports
  uncommitted objects no marker names (orphans), and, given a staging path, stale or half-installed trees there.
* :mod:`forml_s3.ops.gc` deletes old orphans (``gc``) from the same snapshots.
"""

import concurrent.futures
import contextlib
import dataclasses
import datetime
import hashlib
import logging
import os
import pathlib
import tempfile
import time
import typing

from forml.io import asset

from .. import storage
from ..model import codec, layout, names
from ..model.layout import STORED, Kind, classify  # what a key is: the layout says
from ..runtime import cache as cachemod
from ..runtime import markers as markermod
from ..runtime import staging
from ..storage import probe as storage_probe

LOGGER = logging.getLogger(__name__)

HASH_IN_MEMORY = 16 * 2**20
"""Objects up to this size are hashed in memory (one GET); larger ones are downloaded to a temp file first."""
WORKERS = 32
"""Concurrent marker reads and checksum downloads (a marker is a small GET: latency, not bandwidth, bounds them)."""


@dataclasses.dataclass(frozen=True)
class Object:
    """One stored object of the registry."""

    path: str
    size: int
    modified: float | None
    """Last modification (POSIX seconds), where the store reports it."""
    kind: Kind = Kind.OTHER
    project: str | None = None
    release: str | None = None
    name: str | None = None
    """Generation number, state id or package file name (by kind)."""
    version: str = ''
    """The listing's identity of this version (S3 ETag): what a conditional delete names."""


@dataclasses.dataclass
class Generation:
    number: int
    marker: str
    retired: bool = False
    pinned: bool = False
    created: str | None = None
    tag: asset.Tag | None = None
    states: dict[str, dict[str, typing.Any]] = dataclasses.field(default_factory=dict)
    packs: dict[str, dict[str, typing.Any]] = dataclasses.field(default_factory=dict)
    """Packs holding some of the states (by pack id: size, sha256)."""
    error: str | None = None

    @property
    def size(self) -> int:
        return sum(int(s.get('size', 0)) for s in self.states.values())

    def stored(self, lay: layout.Layout, project: str, release: str) -> dict[str, tuple[int, str, str]]:
        """The objects holding the generation's states, by key: (size, sha256, what)."""
        return lay.stored(project, release, {'states': self.states, 'packs': self.packs})


@dataclasses.dataclass
class Release:
    name: str
    marker: str | None
    created: str | None = None
    package: dict[str, typing.Any] | None = None
    generations: list[Generation] = dataclasses.field(default_factory=list)
    error: str | None = None


@dataclasses.dataclass
class Project:
    name: str
    listed: bool
    """Whether the project marker exists (ForML lists the project)."""
    releases: list[Release] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class Snapshot:
    """A registry as listed at one moment."""

    url: str
    root: str
    """The store root the paths are under."""
    objects: dict[str, Object]
    projects: list[Project]

    def named(self) -> set[str]:
        """Paths of every package and state some marker (release, generation or retired) names."""
        lay = layout.Layout(self.root)
        named: set[str] = set()

        def add(make: typing.Callable[..., str], *args: typing.Any) -> None:
            with contextlib.suppress(asset.Level.Invalid):  # a corrupted marker names nothing
                named.add(make(*args))

        for project in self.projects:
            for release in project.releases:
                if release.package and isinstance(release.package.get('key'), str):
                    add(lay.release_object, project.name, release.name, release.package['key'])
                for generation in release.generations:
                    with contextlib.suppress(asset.Level.Invalid):
                        named.update(generation.stored(lay, project.name, release.name))
        return named

    def holds_registry(self) -> bool:
        """Whether anything under the root is a registry's: a key the layout makes, or the probe a registry's first
        write leaves (so an empty listing, or one of foreign objects only, is no registry: a mistyped URL)."""
        probe = f'{self.root.rstrip("/")}/{storage_probe.REGISTRY_PROBE}'
        return any(o.kind is not Kind.OTHER or o.path == probe for o in self.objects.values())

    def orphans(self) -> list[Object]:
        """Packages and states that no marker names (uncommitted: in progress or abandoned)."""
        named = self.named()
        return sorted(
            (o for o in self.objects.values() if o.kind in STORED and o.path not in named),
            key=lambda o: o.path,
        )


def listing(st: storage.Store) -> list[tuple[str, int, float | None, str]]:
    """Every object under the store root: (path, size, last modified, version); one LIST a page of 1,000 on S3."""
    return [(path, entry.size, entry.modified, entry.version) for path, entry in st.walk(st.root)]


# snapshot ---------------------------------------------------------------------------------------------------
def _read_marker(st: storage.Store, path: str) -> tuple[dict[str, typing.Any] | None, str | None]:
    try:
        return markermod.read(st, path), None
    except FileNotFoundError:
        return None, f'marker {st.url_of(path)} disappeared while listing'
    except asset.Level.Invalid as err:
        return None, str(err)


Releases = typing.Callable[[typing.Iterable['Object']], typing.Collection[tuple[str | None, str | None]]]
"""Given every listed object, the (project, release) pairs whose generation and retired markers to read."""


def snapshot(st: storage.Store, releases: Releases | None = None) -> Snapshot:
    """List the registry at ``st`` and read its release markers and the generation and retired markers of every
    release (or of those ``releases`` picks from the listing: the others' generations are left out)."""
    lay = layout.Layout(st.root)
    objects: dict[str, Object] = {}
    for path, size, modified, version in listing(st):
        kind, project, release, name = classify(lay, path)
        if kind is Kind.GENERATION_MARKER and not layout.live(size):
            kind = Kind.TOMBSTONE  # a retired generation's number, kept taken; its retired marker describes it
        objects[path] = Object(path, size, modified, kind, project, release, name, version)
    picked = None if releases is None else set(releases(objects.values()))
    markers = [
        o
        for o in objects.values()
        if o.kind is Kind.RELEASE_MARKER
        or (
            o.kind in (Kind.GENERATION_MARKER, Kind.RETIRED_MARKER)
            and (picked is None or (o.project, o.release) in picked)
        )
    ]
    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        read = dict(zip([o.path for o in markers], pool.map(lambda o: _read_marker(st, o.path), markers), strict=True))

    listed = {o.project for o in objects.values() if o.kind is Kind.PROJECT_MARKER}
    releases: dict[tuple[str, str], Release] = {}
    for obj in (o for o in markers if o.kind is Kind.RELEASE_MARKER):
        marker, error = read[obj.path]
        entry = Release(obj.release, obj.path, error=error)
        if marker is not None:
            entry.created = marker.get('created')
            package = marker.get('package')
            if isinstance(package, dict) and {'key', 'size', 'sha256'} <= set(package):
                entry.package = package
            else:
                entry.error = f'Corrupted release marker {st.url_of(obj.path)}: no package key, size and sha256'
        releases[(obj.project, obj.release)] = entry
    for obj in (o for o in markers if o.kind in (Kind.GENERATION_MARKER, Kind.RETIRED_MARKER)):
        marker, error = read[obj.path]
        generation = Generation(int(obj.name), obj.path, retired=obj.kind is Kind.RETIRED_MARKER, error=error)
        if marker is not None:
            generation.created = marker.get('created')
            try:
                generation.tag = codec.tag_of(marker, st.url_of(obj.path))
                generation.states = {str(k): dict(v) for k, v in marker['states'].items()}
                generation.packs = {str(k): dict(v) for k, v in (marker.get('packs') or {}).items()}
                lay.stored(obj.project, obj.release, marker)  # a state in no pack the marker names: corrupted
            except (asset.Level.Invalid, TypeError, ValueError, AttributeError) as err:
                generation.error = str(err)
        release = releases.setdefault((obj.project, obj.release), Release(obj.release, None))
        release.generations.append(generation)
    pins = {(o.project, o.release, int(o.name)) for o in objects.values() if o.kind is Kind.PIN_MARKER}
    for (project, name), release in releases.items():
        for generation in release.generations:
            generation.pinned = (project, name, generation.number) in pins and not generation.retired

    projects: dict[str, Project] = {name: Project(name, True) for name in listed}
    for (project, _), release in releases.items():
        projects.setdefault(project, Project(project, project in listed)).releases.append(release)
    for project in projects.values():
        project.releases.sort(key=lambda r: names.release(r.name))
        for release in project.releases:
            release.generations.sort(key=lambda g: (g.retired, g.number))
    return Snapshot(st.url, st.root, objects, sorted(projects.values(), key=lambda p: p.name))


# ls ---------------------------------------------------------------------------------------------------------
def summary(st: storage.Store) -> dict[str, typing.Any]:
    """Per release: live, newest, retired and pinned generations, stored objects and bytes - from the listing
    alone (``forml-s3 ls --summary``: one LIST per 1,000 objects, no marker read)."""
    lay = layout.Layout(st.root)
    releases: dict[tuple[str, str], dict[str, typing.Any]] = {}
    for path, size, _, _ in listing(st):
        kind, project, release, name = classify(lay, path)
        if project is None or release is None:
            continue
        entry = releases.setdefault(
            (project, release),
            {'release': release, 'committed': False, 'live': [], 'retired': 0, 'pinned': 0, 'objects': 0, 'bytes': 0},
        )
        if kind is Kind.RELEASE_MARKER:
            entry['committed'] = True
        elif kind is Kind.GENERATION_MARKER and size > len(layout.TOMBSTONE):
            entry['live'].append(int(name))
        elif kind in (Kind.RETIRED_MARKER, Kind.PIN_MARKER):
            entry['retired' if kind is Kind.RETIRED_MARKER else 'pinned'] += 1
        elif kind in STORED:
            entry['objects'] += 1
            entry['bytes'] += size
    projects: dict[str, list[dict[str, typing.Any]]] = {}
    for (project, _), entry in sorted(releases.items(), key=lambda i: (i[0][0], names.release(i[0][1]))):
        live = entry.pop('live')
        projects.setdefault(project, []).append({**entry, 'generations': len(live), 'newest': max(live, default=None)})
    return {'url': st.url, 'projects': [{'project': p, 'releases': r} for p, r in projects.items()]}


def render_summary(data: dict[str, typing.Any]) -> list[str]:
    """The summary of :func:`summary` as text lines."""
    lines = [data['url']]
    for project in data['projects']:
        lines.append(f'  {project["project"]}')
        for r in project['releases']:
            newest = f', newest {r["newest"]}' if r['newest'] is not None else ''
            lines.append(
                f'    {r["release"]}{"" if r["committed"] else " (uncommitted)"}: {r["generations"]} live{newest}, '
                f'{r["retired"]} retired, {r["pinned"]} pinned; {r["objects"]} objects, {human(r["bytes"])}'
            )
    return lines


def tree(snap: Snapshot) -> dict[str, typing.Any]:
    """The JSON-ready tree of a snapshot (``forml-s3 ls --json``)."""

    def generation(g: Generation) -> dict[str, typing.Any]:
        tag = g.tag
        return {
            'generation': g.number,
            'retired': g.retired,
            'pinned': g.pinned,
            'created': g.created,
            'states': len(g.states),
            'size': g.size,
            'training': None
            if tag is None
            else {'timestamp': codec.encode_value(tag.training.timestamp), 'ordinal': tag.training.ordinal},
            'tuning': None
            if tag is None
            else {'timestamp': codec.encode_value(tag.tuning.timestamp), 'score': codec.encode_value(tag.tuning.score)},
            'error': g.error,
        }

    return {
        'url': snap.url,
        'projects': [
            {
                'project': p.name,
                'listed': p.listed,
                'releases': [
                    {
                        'release': r.name,
                        'created': r.created,
                        'package': None if r.package is None else dict(r.package),
                        'committed': r.marker is not None,
                        'generations': [generation(g) for g in r.generations],
                        'error': r.error,
                    }
                    for r in p.releases
                ],
            }
            for p in snap.projects
        ],
        'orphans': {'count': len(orphans := snap.orphans()), 'size': sum(o.size for o in orphans)},
    }


def human(size: int) -> str:
    """A byte count for people (``14.2 KiB``)."""
    value = float(size)
    for unit in ('B', 'KiB', 'MiB', 'GiB', 'TiB'):
        if value < 1024 or unit == 'TiB':
            return f'{int(value)} {unit}' if unit == 'B' else f'{value:.1f} {unit}'
        value /= 1024
    raise AssertionError('unreachable')


def _when(iso: str | None) -> str:
    if not iso:
        return '-'
    try:
        return datetime.datetime.fromisoformat(iso).strftime('%Y-%m-%d %H:%M:%S')
    except ValueError:
        return iso


def render(data: dict[str, typing.Any]) -> list[str]:
    """The tree of :func:`tree` as text lines."""
    lines = [data['url']]
    for project in data['projects']:
        lines.append(f'  {project["project"]}' + ('' if project['listed'] else '  (unlisted: no project marker)'))
        for release in project['releases']:
            package = release['package']
            size = human(package['size']) if package else '-'
            note = '' if release['committed'] else '  (no release marker)'
            if release['error']:
                note += f'  ERROR: {release["error"]}'
            lines.append(f'    {release["release"]:<12} package {size:>10}  {_when(release["created"])}{note}')
            for generation in release['generations']:
                label = f'{generation["generation"]}' + (' (retired)' if generation['retired'] else '')
                label += ' (pinned)' if generation.get('pinned') else ''
                note = f'  ERROR: {generation["error"]}' if generation['error'] else ''
                lines.append(
                    f'      generation {label:<10} {generation["states"]:>3} states {human(generation["size"]):>10}'
                    f'  {_when(generation["created"])}{note}'
                )
    orphans = data['orphans']
    if orphans['count']:
        lines.append(f'  {orphans["count"]} uncommitted objects ({human(orphans["size"])}): see `forml-s3 verify`')
    return lines


# verify -----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Problem:
    kind: str
    """``missing``, ``size-mismatch``, ``checksum-mismatch``, ``orphan``, ``corrupted-marker``,
    ``unlisted-project``, ``staging-orphan``, ``staging-stale``."""
    path: str
    message: str


def _sha256(st: storage.Store, path: str, size: int) -> str:
    if size <= HASH_IN_MEMORY:
        return hashlib.sha256(st.read(path)).hexdigest()
    with tempfile.TemporaryDirectory(prefix='forml-s3-verify-') as temp:
        target = pathlib.Path(temp) / 'object'
        st.download(path, target, size)
        return cachemod.sha256_of(target)[1]


def expected(st: storage.Store, snap: Snapshot) -> list[tuple[str, int, str, str]]:
    """(path, size, sha256, what) of every object a live marker names (retired generations may be expiring)."""
    lay = layout.Layout(st.root)
    expected = []
    for project in snap.projects:
        for release in project.releases:
            if release.package:
                path = lay.release_object(project.name, release.name, release.package['key'])
                what = f'package of {project.name}-{release.name}'
                expected.append((path, int(release.package['size']), str(release.package['sha256']), what))
            for generation in release.generations:
                if generation.retired:
                    continue
                with contextlib.suppress(asset.Level.Invalid):  # reported as a corrupted marker
                    for path, (size, sha256, what) in generation.stored(lay, project.name, release.name).items():
                        what = f'{what} of generation {generation.number} of {project.name}-{release.name}'
                        expected.append((path, size, sha256, what))
    return expected


def verify(
    st: storage.Store,
    *,
    checksums: bool = True,
    orphans: bool = True,
    staging_path: pathlib.Path | None = None,
    progress: typing.Callable[[int], None] | None = None,
    snap: Snapshot | None = None,
) -> tuple[Snapshot, list[Problem]]:
    """Check the registry at ``st``; returns the snapshot and the problems found (none: healthy).

    Args:
        st: The registry's store.
        checksums: Download every committed object and compare its sha256 (else sizes only, from the listing).
        orphans: Report uncommitted objects that no marker names.
        staging_path: Also check the releases installed in this staging path against the registry.
        progress: Called with the byte count of each object checked.
        snap: A snapshot just taken (default: take one).
    """
    snap = snap or snapshot(st)
    problems: list[Problem] = []
    for project in snap.projects:
        if not project.listed:
            problems.append(
                Problem(
                    'unlisted-project',
                    project.name,
                    f'Project {project.name} has releases but no project marker: ForML does not list it '
                    '(a push by an older forml-s3, which wrote it after the release marker, died between the two; '
                    'push any new release of the project to repair)',
                )
            )
        for release in project.releases:
            if release.error:
                problems.append(Problem('corrupted-marker', release.marker or '', release.error))
            for generation in release.generations:
                if generation.error:
                    problems.append(Problem('corrupted-marker', generation.marker, generation.error))
    check = []
    for path, size, sha256, what in expected(st, snap):
        found = snap.objects.get(path)
        if found is None:
            problems.append(Problem('missing', path, f'Missing {what}: {st.url_of(path)} does not exist'))
        elif found.size != size:
            problems.append(
                Problem(
                    'size-mismatch',
                    path,
                    f'Size mismatch of {what}: {st.url_of(path)} has {found.size} bytes, its marker records {size}',
                )
            )
        elif checksums:
            check.append((path, size, sha256, what))
        elif progress:
            progress(size)

    def hashed(item: tuple[str, int, str, str]) -> Problem | None:
        path, size, sha256, what = item
        try:
            got = _sha256(st, path, size)
        except FileNotFoundError:
            return Problem('missing', path, f'Missing {what}: {st.url_of(path)} disappeared while verifying')
        finally:
            if progress:
                progress(size)
        if got != sha256:
            return Problem(
                'checksum-mismatch',
                path,
                f'Checksum mismatch of {what}: {st.url_of(path)} has sha256 {got}, its marker records {sha256}',
            )
        return None

    with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
        problems.extend(p for p in pool.map(hashed, check) if p is not None)
    if orphans:
        for obj in snap.orphans():
            what = obj.kind.value
            problems.append(
                Problem(
                    'orphan',
                    obj.path,
                    f'Orphan {what} {st.url_of(obj.path)} ({human(obj.size)}, {_age(obj)}): no marker names it '
                    '(a training or push in progress, or abandoned: `forml-s3 gc` deletes old ones)',
                )
            )
    if staging_path is not None:
        problems.extend(verify_staging(snap, pathlib.Path(staging_path)))
    return snap, problems


def _age(obj: Object, now: float | None = None) -> str:
    if obj.modified is None:
        return 'age unknown'
    days = ((now or time.time()) - obj.modified) / 86400
    return f'{days:.1f} days old' if days >= 1 else f'{days * 24:.1f} hours old'


def verify_staging(snap: Snapshot, path: pathlib.Path) -> list[Problem]:
    """Releases installed under a staging path that the registry does not hold (or holds with another package),
    and trees left half-installed there (a killed installer's temporary or trash directories)."""
    problems: list[Problem] = []
    packages = {(p.name, r.name): (r.package or {}).get('sha256') for p in snap.projects for r in p.releases}
    for installed in staging.staged(path):
        key = (installed['project'], installed['release'])
        if key not in packages:
            problems.append(
                Problem(
                    'staging-orphan',
                    installed['path'],
                    f'Staging orphan {installed["path"]}: {key[0]}-{key[1]} is not in {snap.url} '
                    '(`forml-s3 staging` lists and prunes installed releases)',
                )
            )
        elif packages[key] != installed['sha256']:
            problems.append(
                Problem(
                    'staging-stale',
                    installed['path'],
                    f'Stale staging tree {installed["path"]}: installed from package sha256 {installed["sha256"]}, '
                    f'the registry holds {packages[key]} (the next mount replaces it)',
                )
            )
    if path.is_dir():
        interrupted = set(staging.leftovers(path))  # the rule `forml-s3 staging prune` deletes by
        for project in sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith('.')):
            for leftover in sorted(project.iterdir()):
                if leftover in interrupted:
                    problems.append(
                        Problem(
                            'staging-orphan',
                            str(leftover),
                            f'Staging orphan {leftover}: left over by an interrupted install (safe to delete)',
                        )
                    )
                elif (
                    leftover.is_dir() and not leftover.name.startswith('.') and not (leftover / staging.STAMP).exists()
                ):
                    problems.append(
                        Problem(
                            'staging-orphan',
                            str(leftover),
                            f'Staging orphan {leftover}: a tree without the {staging.STAMP} stamp forml-s3 writes '
                            '(not installed by forml-s3, or damaged)',
                        )
                    )
    return problems


def store_for(url: str, storage_options: typing.Mapping[str, typing.Any] | None = None) -> storage.Store:
    """The store of a registry URL (on the command line, an absolute or ``./``-relative path is a local directory;
    any other name without a scheme is refused, as ``bucket/prefix`` most likely meant a bucket)."""
    url = os.fspath(url)
    if '://' not in url and (os.path.isabs(url) or url.startswith(('.', '~'))):
        url = pathlib.Path(url).expanduser().resolve().as_uri()
    return storage.open_store(url, storage_options)
