"""Retiring old generations and pinning the ones to keep (``forml-s3 retire`` / ``pin``, ``keep_generations``).

Retiring hides a generation from listings at once and leaves the deleting to an S3 lifecycle rule (see
:mod:`forml_s3.lifecycle`), which filters by the object tag ``forml-s3=retired``. For each retired generation,
in this order:

1. its marker is copied to ``retired/<n>.json`` (tagged), so ``forml-s3 ls`` and ``verify`` still know it;
2. its marker in ``generations/`` is replaced by an empty tombstone: listings skip it from now on, and the key
   stays taken, so a writer still trying to commit that number gets a conflict (see :mod:`forml_s3.layout`);
3. its states are tagged ``forml-s3=retired`` (except any state a kept generation names too).

A run that dies between 2 and 3 leaves states untagged: they are never expired (a leak, never a loss of a
live generation's data); running ``retire`` again does not revisit them, ``forml-s3 lifecycle preview`` shows
what the rule will expire. Off S3 (``file://``, ``memory://``) there are no tags: retiring only hides.

The newest ``keep`` generations of a release, every pinned one (``pinned/<n>.json``) and every one an alias points
to (:mod:`forml_s3.aliases`) are never retired.
"""

import dataclasses
import logging
import typing

import forml
from forml.io import asset

from . import aliases, codec, layout, names, storage, transfers

LOGGER = logging.getLogger(__name__)

RETIRED = dict([layout.RETIRED_TAG])

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
    """Generations kept because an alias points to them (see :mod:`forml_s3.aliases`)."""


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
    read = read or (lambda key, _: codec.loads(st.read(key), st.uri(key)))
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
    tags = RETIRED if st.object_tags else None
    for generation in todo.retired:
        marker = markers[generation]
        retired = {**marker, 'retired': codec.now(), 'retired_by': codec.writer()}
        st.write(lay.retired_marker(project, release, generation), codec.dumps(retired), tags=tags)
        st.write(lay.generation_marker(project, release, generation), layout.TOMBSTONE)
        if tags:
            keys = [key for key in _stored(lay, project, release, marker) if key not in shared]
            transfers.run_all(lambda k: st.set_tags(k, RETIRED), keys)
        LOGGER.info('Retired generation %d of %s-%s', generation, project, release)
    return todo.retired


def _stored(lay: layout.Layout, project: str, release: str, marker: typing.Mapping[str, typing.Any]) -> list[str]:
    """Keys of the objects holding a generation's states (none if its marker is malformed)."""
    try:
        return list(lay.stored(project, release, marker))
    except asset.Level.Invalid:
        return []


# pins -------------------------------------------------------------------------------------------------------
def pins(st: storage.Store, lay: layout.Layout, project: str, release: str) -> list[int]:
    """The pinned generation numbers of a release (one LIST)."""
    return sorted(_numbers(st, lay.pinned(project, release)))


def pin(st: storage.Store, lay: layout.Layout, project: str, release: str, generation: int, note: str = '') -> None:
    """Pin a live generation so it is never retired (idempotent).

    Raises ``forml.MissingError`` if the generation is not live: retired already, or never committed. The check
    is repeated after the pin is stored, so a retire racing with the pin is reported, not silently lost.
    """
    project, release = str(names.project(project)), str(names.release(release))
    generation = int(names.generation(generation))
    _require_live(st, lay, project, release, generation)
    marker = {
        'project': project,
        'release': release,
        'generation': generation,
        'pinned': codec.now(),
        'writer': codec.writer(),
        'note': note,
    }
    st.write(lay.pin_marker(project, release, generation), codec.dumps(marker))
    _require_live(st, lay, project, release, generation, meanwhile=True)


def unpin(st: storage.Store, lay: layout.Layout, project: str, release: str, generation: int) -> bool:
    """Remove a pin; returns whether there was one."""
    project, release = str(names.project(project)), str(names.release(release))
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
            [names.release(release)] if release is not None else _valid(st.listdir(lay.releases(name)), names.release)
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
