"""Retiring old generations and pinning the ones to keep (``forml-s3 retire`` / ``pin``, ``keep_generations``).

Retiring hides a generation from listings at once and leaves the deleting to an S3 lifecycle rule (see
:mod:`forml_s3.ops.lifecycle`), which filters by the object tag ``forml-s3=retired``. For each retired generation,
in this order:

1. its marker is copied to ``retired/<n>.json`` (tagged), so ``forml-s3 ls`` and ``verify`` still know it;
2. its marker in ``generations/`` is replaced by an empty tombstone: listings skip it from now on, and the key
   stays taken, so a writer still trying to commit that number gets a conflict (see :mod:`forml_s3.model.layout`);
3. once every generation of the run has its tombstone, the pins and the aliases are listed again: a generation
   pinned or aliased meanwhile gets its marker back and loses the copy of step 1 (it stays live);
4. its states are tagged ``forml-s3=retired`` (except any state a kept generation names too).

Pin and retire cannot interleave into a pinned and retired generation. A pin stores ``pinned/<n>.json`` and then
checks that the generation is live; a retire stores the tombstone and then checks the pins (step 3). Each writes
before it reads what the other writes, and the store is strongly consistent, so whichever comes second sees the
first: the pin fails ("retired meanwhile", its pin deleted) or the retire backs off (step 3), or both. The same
holds for an alias set (:mod:`forml_s3.runtime.aliases` stores the alias, then checks that its generation is live).

A run that dies between 2 and 3 can leave a generation pinned meanwhile hidden (its states untagged, so never
expired; putting its ``retired/<n>.json`` back as ``generations/<n>.json`` restores it). A run that dies between
2 and 4 leaves states untagged: they are never expired (a leak, never a loss of a
live generation's data); running ``retire`` again does not revisit them, ``forml-s3 lifecycle preview`` shows
what the rule will expire. Off S3 (``file://``, ``memory://``) there are no tags: retiring only hides.

The newest ``keep`` generations of a release, every pinned one (``pinned/<n>.json``) and every one an alias points
to (:mod:`forml_s3.runtime.aliases`) are never retired.
"""

import dataclasses
import logging
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

MarkerReader = typing.Callable[[str, storage.Entry], dict[str, typing.Any]]
"""Reads the marker at a key given its listing entry (lets a registry serve it from its cache)."""


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


def _numbers(st: storage.Store, prefix: str) -> dict[int, storage.Entry]:
    """Live markers under ``prefix`` by generation number (one LIST a page; tombstones skipped)."""
    entries = {e.name: e for e in st.listdir(prefix)}
    found = {}
    for name in layout.Layout.marker_names({n: e.size for n, e in entries.items()}):
        if name.isdigit() and int(name) > 0:
            found[int(name)] = entries[name + layout.MARKER]
    return found


def plan(st: storage.Store, lay: layout.Layout, project: str, release: str, keep: int) -> Plan:
    """Which generations of a release retiring all but the newest ``keep`` would retire (two LISTs)."""
    return _plan(st, lay, project, release, keep)[0]


def _plan(
    st: storage.Store, lay: layout.Layout, project: str, release: str, keep: int
) -> tuple[Plan, dict[int, storage.Entry]]:
    """The plan and the listing entries of the live generation markers it was made from."""
    if keep < 1:
        raise forml.InvalidError(f'keep must be at least 1, not {keep}: the newest generation is always kept')
    entries = _numbers(st, lay.generations(project, release))
    live = sorted(entries, reverse=True)
    pinned = sorted(_numbers(st, lay.pinned(project, release)))
    aliased = sorted(aliases.Aliases(st, lay).aliased(project, release))
    retired = sorted(g for g in live[keep:] if g not in pinned and g not in aliased)
    kept = sorted(set(live) - set(retired))
    protected = {'pinned': [g for g in pinned if g in live], 'aliased': [g for g in aliased if g in live]}
    return Plan(str(project), str(release), kept, retired=retired, **protected), entries


def retire(
    st: storage.Store,
    lay: layout.Layout,
    project: str,
    release: str,
    keep: int,
    *,
    read: MarkerReader | None = None,
    dry_run: bool = False,
) -> list[int]:
    """Retire all but the newest ``keep`` generations of a release (pinned ones are kept too).

    Returns the numbers retired (or, with ``dry_run``, that would be). ``read`` reads a marker given its key
    and listing entry (default: one GET).
    """
    project, release = str(names.project(project)), str(names.release(release))
    todo, entries = _plan(st, lay, project, release, keep)
    if dry_run or not todo.retired:
        return todo.retired
    done = []
    read = read or (lambda key, _: markermod.read(st, key))
    markers = dict(
        zip(
            todo.kept + todo.retired,
            transfers.run_all(
                lambda g: read(lay.generation_marker(project, release, g), entries[g]), todo.kept + todo.retired
            ),
            strict=True,
        )
    )
    shared = {key for g in todo.kept for key in _stored(lay, project, release, markers[g])}
    tags = RETIRED_TAGS if st.object_tags else None
    keys = {g: (lay.retired_marker(project, release, g), lay.generation_marker(project, release, g)) for g in markers}
    for generation in todo.retired:
        copy, key = keys[generation]
        retired = {**markers[generation], 'retired': codec.now(), 'retired_by': codec.writer()}
        st.write(copy, codec.dumps(retired), tags=tags)
        st.write(key, layout.TOMBSTONE)
    # after the tombstones (see the module docs): pinned or aliased meanwhile?
    protected = set(_numbers(st, lay.pinned(project, release))) | set(
        aliases.Aliases(st, lay).aliased(project, release)
    )
    for generation in todo.retired:
        copy, key = keys[generation]
        if generation in protected:
            st.write(key, codec.dumps(markers[generation]))
            st.delete(copy)
            LOGGER.warning('Kept generation %d of %s-%s: pinned or aliased meanwhile', generation, project, release)
            continue
        if tags:
            stored = [k for k in _stored(lay, project, release, markers[generation]) if k not in shared]
            transfers.run_all(lambda k: st.set_tags(k, RETIRED_TAGS), stored)
        done.append(generation)
        LOGGER.info('Retired generation %d of %s-%s', generation, project, release)
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
