"""Retiring old generations and pinning the ones to keep (``forml-s3 retire`` / ``pin``, ``keep_generations``).

Retiring hides a generation from listings at once and leaves the deleting to an S3 lifecycle rule (see
:mod:`forml_s3.ops.lifecycle`), which filters by the object tag ``forml-s3=retired``. A run over one release:

1. raises the release's floor (``floor/<n>.json``) above the highest number it retires: no number below the
   floor is ever committed again (see below);
2. copies each retired generation's marker to ``retired/<n>.json`` (tagged), so ``forml-s3 ls`` and ``verify``
   still know it - one GET and one PUT a generation, in parallel;
3. deletes their markers from ``generations/`` (one batch request per 1,000 on S3): the level lists only live
   generations, one page per 1,000 of them however long the history;
4. lists the pins and the aliases again: a generation pinned or aliased meanwhile gets its marker back and
   loses the copy of step 2 (it stays live);
5. tags the states of the others ``forml-s3=retired`` (except any state a kept generation names too).

That is at most 3 requests per retired generation whose states are in one object (a pack, or a single state).

No number is committed twice. A writer commits a generation by creating its marker exclusively and then reads
the floor (:func:`floor`, one LIST). A stale writer, one that picked its number before a retire moved that
number's marker away (step 3), can win the create only after step 3 - so after step 1 - and then finds the
number below the floor: it deletes its marker again and reports a conflict. Until it does, its marker is listed
as a generation older than the live ones it was meant to supersede (ForML always picks the newest).

Pin and retire cannot interleave into a pinned and retired generation. A pin stores ``pinned/<n>.json`` and then
checks that the generation is live; a retire moves the marker and then checks the pins (step 4). Each writes
before it reads what the other writes, and the store is strongly consistent, so whichever comes second sees the
first: the pin fails ("retired meanwhile", its pin deleted) or the retire backs off (step 4), or both. The same
holds for an alias set (:mod:`forml_s3.runtime.aliases` stores the alias, then checks that its generation is live).

A run that dies between 3 and 4 can leave a generation pinned meanwhile hidden (its states untagged, so never
expired; putting its ``retired/<n>.json`` back as ``generations/<n>.json`` restores it). A run that dies between
3 and 5 leaves states untagged: they are never expired (a leak, never a loss of a live generation's data);
running ``retire`` again does not revisit them, ``forml-s3 lifecycle preview`` shows what the rule will expire.
Off S3 (``file://``, ``memory://``) there are no tags: retiring only hides.

Registries retired by earlier versions keep an empty *tombstone* in ``generations/`` for each retired number;
the next retire of the release (``forml-s3 retire``, or a commit with ``keep_generations``) raises the floor above
them and deletes them, so their level lists one page per 1,000 live generations from then on.

The newest ``keep`` generations of a release, every pinned one (``pinned/<n>.json``) and every one an alias points
to (:mod:`forml_s3.runtime.aliases`) are never retired.
"""

import dataclasses
import logging
import threading
import typing

import forml
from forml.io import asset

from .. import storage
from ..model import codec, layout, names
from . import aliases, transfers
from . import markers as markermod

LOGGER = logging.getLogger(__name__)

RETIRED_TAGS = dict([layout.RETIRED_TAG])
"""The object tags of a retired generation's objects (lifecycle expires them; not the `retired/` folder)."""
PACKED = layout.PACK_SUFFIX

MarkerReader = typing.Callable[[str, storage.Entry], dict[str, typing.Any]]
"""Reads the marker at a key given its listing entry (lets a registry serve it from its cache)."""


Progress = typing.Callable[[int], None]
"""Told how many more generations a step has finished (drives the CLI's progress bar)."""


@dataclasses.dataclass(frozen=True)
class Plan:
    """What retiring would do to one release."""

    project: str
    release: str
    kept: list[int]
    pinned: list[int]
    retired: list[int]
    aliased: list[int] = dataclasses.field(default_factory=list)
    """Generations kept because an alias points to them (see :mod:`forml_s3.runtime.aliases`)."""
    tombstones: list[int] = dataclasses.field(default_factory=list)
    """Numbers retired by an earlier version, still holding a tombstone in the level (moved out by the next run)."""
    entries: dict[int, storage.Entry] = dataclasses.field(default_factory=dict, repr=False, compare=False)
    """The listing entries of the live generation markers the plan was made from."""


def _numbers(st: storage.Store, prefix: str) -> dict[int, storage.Entry]:
    """Live markers under ``prefix`` by generation number (one LIST a page; tombstones skipped)."""
    return _listed(st, prefix)[0]


def _listed(st: storage.Store, prefix: str) -> tuple[dict[int, storage.Entry], list[int]]:
    """Live markers under ``prefix`` by generation number, and the numbers holding a tombstone (one LIST a page)."""
    entries = {e.name: e for e in st.listdir(prefix)}
    found = {}
    for name in layout.Layout.marker_names({n: e.size for n, e in entries.items()}):
        if name.isdigit() and int(name) > 0:
            found[int(name)] = entries[name + layout.MARKER]
    numbered = {e.name[: -len(layout.MARKER)]: e for e in entries.values() if e.name.endswith(layout.MARKER)}
    tombstones = [int(n) for n, e in numbered.items() if n.isdigit() and e.size <= len(layout.TOMBSTONE)]
    return found, sorted(tombstones)


def plan(st: storage.Store, lay: layout.Layout, project: str, release: str, keep: int) -> Plan:
    """Which generations of a release retiring all but the newest ``keep`` would retire (LISTs only)."""
    if keep < 1:
        raise forml.InvalidError(f'keep must be at least 1, not {keep}: the newest generation is always kept')
    entries, tombstones = _listed(st, lay.generations(project, release))
    live = sorted(entries, reverse=True)
    pinned = sorted(_numbers(st, lay.pinned(project, release)))
    aliased = sorted(aliases.Aliases(st, lay).aliased(project, release))
    retired = sorted(g for g in live[keep:] if g not in pinned and g not in aliased)
    kept = sorted(set(live) - set(retired))
    protected = {'pinned': [g for g in pinned if g in live], 'aliased': [g for g in aliased if g in live]}
    return Plan(str(project), str(release), kept, retired=retired, tombstones=tombstones, entries=entries, **protected)


def retired(st: storage.Store, lay: layout.Layout, project: str, release: str) -> set[int]:
    """The numbers of a release's retired generations whose ``retired/`` markers remain (one LIST a page)."""
    return set(_numbers(st, lay.retired(project, release)))


def tombstones(st: storage.Store, lay: layout.Layout, project: str, release: str) -> list[int]:
    """The numbers an earlier version's retire left a tombstone of in the level (one LIST a page)."""
    return _listed(st, lay.generations(project, release))[1]


def floor(st: storage.Store, lay: layout.Layout, project: str, release: str) -> int:
    """The lowest generation number the release may still commit (0 if nothing was retired): one LIST."""
    return max(_numbers(st, lay.floors(project, release)), default=0)


def _raise_floor(st: storage.Store, lay: layout.Layout, project: str, release: str, below: int) -> None:
    """Make ``below`` the release's floor unless it is higher already (floors only rise: the highest counts, so
    racing runs need no coordination; lower ones are deleted as they are found)."""
    found = _numbers(st, lay.floors(project, release))
    if max(found, default=0) < below:
        body = {'project': project, 'release': release, 'below': below, 'raised': codec.now(), 'by': codec.writer()}
        st.write(lay.floor_marker(project, release, below), codec.dumps(body))
    top = max([*found, below])
    if stale := [lay.floor_marker(project, release, n) for n in found if n < top]:
        st.delete_many(stale)


def retire(
    st: storage.Store,
    lay: layout.Layout,
    project: str,
    release: str,
    keep: int,
    *,
    read: MarkerReader | None = None,
    dry_run: bool = False,
    planned: Plan | None = None,
    progress: Progress | None = None,
) -> list[int]:
    """Retire all but the newest ``keep`` generations of a release (pinned ones are kept too).

    Returns the numbers retired (or, with ``dry_run``, that would be). ``read`` reads a marker given its key
    and listing entry (default: one GET); ``planned`` is a :func:`plan` just made for the same ``keep`` (spares
    listing again); ``progress`` is told of each generation put aside and then of each one tagged (so it counts
    to twice the number retired).
    """
    project, release = str(names.project(project)), str(names.release(release))
    todo = planned or plan(st, lay, project, release, keep)
    entries = todo.entries
    if dry_run or not (todo.retired or todo.tombstones):
        return todo.retired
    told = threading.Lock()  # told from the pool's threads

    def tell(finished: int) -> None:
        if progress:
            with told:
                progress(finished)

    _raise_floor(st, lay, project, release, max(todo.retired + todo.tombstones) + 1)
    if todo.tombstones:  # retired by an earlier version: the floor keeps their numbers taken from now on
        st.delete_many(lay.generation_marker(project, release, g) for g in todo.tombstones)
        LOGGER.info('Moved %d tombstones out of %s-%s', len(todo.tombstones), project, release)
    if not todo.retired:
        return []
    read = read or (lambda key, _: markermod.read(st, key))
    tags = RETIRED_TAGS if st.object_tags else None

    def put_aside(generation: int) -> dict[str, typing.Any]:
        marker = read(lay.generation_marker(project, release, generation), entries[generation])
        retired = {**marker, 'retired': codec.now(), 'retired_by': codec.writer()}
        st.write(lay.retired_marker(project, release, generation), codec.dumps(retired), tags=tags)
        tell(1)
        return marker

    markers = dict(zip(todo.retired, transfers.run_all(put_aside, todo.retired), strict=True))
    shared: set[str] = set()
    alone = [k for g in todo.retired for k in _stored(lay, project, release, markers[g]) if not k.endswith(PACKED)]
    if alone:
        # a state on its own may be named by a kept generation too; a pack never is (each commit makes its own)
        kept = transfers.run_all(lambda g: read(lay.generation_marker(project, release, g), entries[g]), todo.kept)
        shared = {key for marker in kept for key in _stored(lay, project, release, marker)}
    st.delete_many(lay.generation_marker(project, release, g) for g in todo.retired)
    # after the markers are gone (see the module docs): pinned or aliased meanwhile?
    protected = set(_numbers(st, lay.pinned(project, release))) | set(
        aliases.Aliases(st, lay).aliased(project, release)
    )
    done = []
    for generation in todo.retired:
        if generation in protected:
            st.write(lay.generation_marker(project, release, generation), codec.dumps(markers[generation]))
            st.delete(lay.retired_marker(project, release, generation))
            LOGGER.warning('Kept generation %d of %s-%s: pinned or aliased meanwhile', generation, project, release)
            tell(1)
            continue
        done.append(generation)
    if tags:

        def tag(generation: int) -> None:
            stored = [k for k in _stored(lay, project, release, markers[generation]) if k not in shared]
            for key in stored:
                st.set_tags(key, RETIRED_TAGS)
            tell(1)

        transfers.run_all(tag, done)
    else:
        tell(len(done))
    LOGGER.info('Retired generations %s of %s-%s', done, project, release)
    return done


def _stored(lay: layout.Layout, project: str, release: str, marker: typing.Mapping[str, typing.Any]) -> list[str]:
    """Keys of the objects holding a generation's states (none if its marker is malformed)."""
    try:
        return list(lay.stored(project, release, marker))
    except asset.Level.Invalid:
        return []


# pins -------------------------------------------------------------------------------------------------------
def pins(st: storage.Store, lay: layout.Layout, project: str, release: str) -> list[int]:
    """The pinned generation numbers of a release (two LISTs: the releases, then its pins)."""
    return sorted(_numbers(st, lay.pinned(project, stem(st, lay, project, release))))


def stem(st: storage.Store, lay: layout.Layout, project: str, release: str) -> str:
    """The name a release is stored under, for a release named by a user in any PEP 440 spelling (one LIST)."""
    listed = layout.Layout.marker_names({e.name: e.size for e in st.listdir(lay.releases(project))})
    return layout.Layout.stored_as(listed, release) or names.canonical(release)


def pin(st: storage.Store, lay: layout.Layout, project: str, release: str, generation: int, note: str = '') -> None:
    """Pin a live generation so it is never retired (idempotent).

    Raises ``forml.MissingError`` if the generation is not live: retired already, or never committed. The check
    is repeated after the pin is stored, so a retire racing with the pin is seen by one of them (see the module
    docs): a pin that finds its generation retired deletes itself and fails saying so.
    """
    project, release = str(names.project(project)), stem(st, lay, project, release)
    generation = int(names.generation(generation))
    _require_live(st, lay, project, release, generation)
    marker = codec.pin_marker(project, release, generation, note)
    st.write(lay.pin_marker(project, release, generation), codec.dumps(marker))
    try:
        _require_live(st, lay, project, release, generation, meanwhile=True)
    except forml.MissingError:
        st.delete(lay.pin_marker(project, release, generation))  # a pin of a retired generation would mislead
        raise


def unpin(st: storage.Store, lay: layout.Layout, project: str, release: str, generation: int) -> bool:
    """Remove a pin; returns whether there was one."""
    project, release = str(names.project(project)), stem(st, lay, project, release)
    generation = int(names.generation(generation))
    key = lay.pin_marker(project, release, generation)
    if generation not in pins(st, lay, project, release):
        return False
    st.delete(key)
    return True


def _require_live(
    st: storage.Store, lay: layout.Layout, project: str, release: str, generation: int, meanwhile: bool = False
) -> None:
    if generation in _numbers(st, lay.generations(project, release)):
        return
    retired = generation in _numbers(st, lay.retired(project, release))
    what = 'was retired meanwhile' if meanwhile else ('is retired' if retired else 'does not exist')
    raise forml.MissingError(
        f'Generation {generation} of {project}-{release} {what} in {st.url}: only live generations can be pinned '
        '(`forml-s3 ls` shows them)'
    )


def releases(
    st: storage.Store, lay: layout.Layout, project: str | None = None, release: str | None = None
) -> list[tuple[str, str]]:
    """The (project, release) pairs a retire run covers: all, one project's, or one release (LISTs only)."""
    if release is not None and project is None:
        raise forml.InvalidError('A release needs its project (--project)')
    if project is not None:
        projects = [names.project(project)]
    else:
        projects = sorted(_valid(st.listdir(lay.projects()), names.project))
    found = []
    for name in projects:
        versions = (
            [stem(st, lay, name, release)]
            if release is not None
            else _valid(st.listdir(lay.releases(name)), names.release)
        )
        found.extend((str(name), str(version)) for version in sorted(versions))
    return found


def _valid(entries: typing.Iterable[storage.Entry], key: typing.Callable[[str], typing.Any]) -> list[typing.Any]:
    """The level keys of live markers among listed entries (foreign names are skipped, as the registry does)."""
    found = []
    for name in layout.Layout.marker_names({e.name: e.size for e in entries}):
        try:
            found.append(key(name))
        except asset.Level.Invalid:
            LOGGER.debug('Ignoring foreign marker %s', name)
    return found
