"""Copying a whole registry between locations (``forml-s3 copy``): ForML posix <-> forml-s3, forml-s3 <-> forml-s3.

Both sides are driven through ForML's ``asset.Registry`` API - ForML's own posix ``Registry`` for a posix
directory, :class:`forml_s3.registry.Registry` for any forml-s3 URL - so the copy stores exactly what ForML
itself would: releases are pushed, states written and generations closed under their original numbers with
their original tags. Where the API would move bytes just to compare, a forml-s3 side answers from its markers
(read through :mod:`forml_s3.storage` at keys from :mod:`forml_s3.model.layout`): a second copy reads markers and
local files only and transfers no package or state.

The copy is resumable: a release or generation already at the destination with the same content (package
sha256; tag and every state's size and sha256) is skipped; one there with different content is a conflict,
reported and left alone (releases and generations are immutable). A copy killed midway leaves at most
uncommitted states at a forml-s3 destination (invisible; ``forml-s3 gc`` removes them) and is completed by
running it again.
"""

import abc
import dataclasses
import enum
import hashlib
import logging
import os
import pathlib
import shutil
import tempfile
import typing
import urllib.parse
import uuid

import forml
from forml.io import asset

from .. import storage
from ..model import codec, layout, names
from ..runtime import cache as cachemod
from ..runtime import markers as markermod

if typing.TYPE_CHECKING:
    from forml import project as prj

LOGGER = logging.getLogger(__name__)

POSIX = 'posix'
FORML_S3 = 'forml-s3'
AUTO = 'auto'
FORMATS = (AUTO, POSIX, FORML_S3)

Sums = dict[str, tuple[int, str]]
"""State id -> (size, sha256)."""


# sides ------------------------------------------------------------------------------------------------------
class Side(abc.ABC):
    """One end of a copy: a registry plus cheap ways to compare what it holds."""

    format: str
    registry: asset.Registry

    def __init__(self, location: str):
        self.location = location

    def __repr__(self):
        return f'{self.format}:{self.location}'

    def projects(self) -> list[asset.Project.Key]:
        return sorted(self.registry.projects(), key=str)

    def releases(self, project: asset.Project.Key) -> list[asset.Release.Key]:
        return sorted(self.registry.releases(project))

    def generations(self, project: asset.Project.Key, release: asset.Release.Key) -> list[asset.Generation.Key]:
        return sorted(self.registry.generations(project, release), key=int)

    @abc.abstractmethod
    def package_sha256(self, project: asset.Project.Key, release: asset.Release.Key) -> str | None:
        """The sha256 of the release package (None if it cannot be known cheaply)."""

    @abc.abstractmethod
    def tag(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> asset.Tag:
        """The generation's tag, without fetching its states."""

    @abc.abstractmethod
    def sums(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> Sums:
        """Size and sha256 of each of the generation's states."""

    def pull(self, project: asset.Project.Key, release: asset.Release.Key) -> 'prj.Package':
        return self.registry.pull(project, release)

    def open(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> asset.Tag:
        """Open the generation for copying (a forml-s3 side starts fetching all its states at once)."""
        return self.registry.open(project, release, generation)

    def read(self, project: asset.Project.Key, release: asset.Release.Key, generation: int, sid: uuid.UUID) -> bytes:
        return self.registry.read(project, release, generation, sid)

    pinnable = False
    """Whether the side keeps pins (and retired generations): forml-s3 does, ForML posix does not."""

    def pins(self, project: asset.Project.Key, release: asset.Release.Key) -> dict[int, str]:
        """The pinned generations of a release, with their notes."""
        return {}

    def retired(self, project: asset.Project.Key, release: asset.Release.Key) -> set[int]:
        """Numbers of retired generations (taken: a copy cannot commit them)."""
        return set()

    def pin(self, project: asset.Project.Key, release: asset.Release.Key, generation: int, note: str) -> None:
        raise forml.InvalidError(f'{self} keeps no pins')


class PosixSide(Side):
    """A directory in ForML's posix registry layout, through ForML's own posix ``Registry``."""

    format = POSIX

    def __init__(self, path: str | os.PathLike):
        from forml.provider.registry.filesystem import posix  # only when a posix side is used

        path = pathlib.Path(path).expanduser().resolve()
        super().__init__(str(path))
        self.registry = posix.Registry(path)

    def package_sha256(self, project: asset.Project.Key, release: asset.Release.Key) -> str | None:
        path = pathlib.Path(self.registry.pull(project, release).path)
        return cachemod.sha256_of(path)[1] if path.is_file() else None

    def tag(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> asset.Tag:
        return self.registry.open(project, release, generation)

    def sums(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> Sums:
        result = {}
        for sid in self.tag(project, release, generation).states:
            data = self.registry.read(project, release, generation, sid)
            result[str(sid)] = (len(data), hashlib.sha256(data).hexdigest())
        return result


class S3Side(Side):
    """A forml-s3 registry at any URL (``s3://``, ``file://``, ``memory://``, ...)."""

    format = FORML_S3

    def __init__(self, url: str, storage_options: typing.Mapping[str, typing.Any] | None, workdir: pathlib.Path):
        from ..registry import Registry

        self.store = storage.open_store(url, storage_options)
        super().__init__(self.store.url)
        self.layout = layout.Layout(self.store.root)
        self.registry = Registry(
            url, storage_options=storage_options, cache_dir=workdir / 'cache', staging=workdir / 'staging'
        )
        self._markers: dict[str, dict[str, typing.Any]] = {}

    def _marker(self, key: str) -> dict[str, typing.Any]:
        if key not in self._markers:
            self._markers[key] = markermod.read(self.store, key)
        return self._markers[key]

    def package_sha256(self, project: asset.Project.Key, release: asset.Release.Key) -> str | None:
        marker = self._marker(self.layout.release_marker(project, release))
        return (marker.get('package') or {}).get('sha256')

    def tag(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> asset.Tag:
        key = self.layout.generation_marker(project, release, generation)
        return codec.tag_of(self._marker(key), self.store.url_of(key))

    def sums(self, project: asset.Project.Key, release: asset.Release.Key, generation: int) -> Sums:
        marker = self._marker(self.layout.generation_marker(project, release, generation))
        return {str(sid): (int(info['size']), str(info['sha256'])) for sid, info in marker['states'].items()}

    pinnable = True

    def pins(self, project: asset.Project.Key, release: asset.Release.Key) -> dict[int, str]:
        from ..runtime import retention

        numbers = retention.pins(self.store, self.layout, str(project), str(release))
        return {n: str(self._marker(self.layout.pin_marker(project, release, n)).get('note') or '') for n in numbers}

    def retired(self, project: asset.Project.Key, release: asset.Release.Key) -> set[int]:
        """Those with a ``retired/`` marker, and those an earlier version left a tombstone of (two LISTs)."""
        from ..runtime import retention

        moved = retention.retired(self.store, self.layout, str(project), str(release))
        return moved | set(retention.tombstones(self.store, self.layout, str(project), str(release)))

    def pin(self, project: asset.Project.Key, release: asset.Release.Key, generation: int, note: str) -> None:
        from ..runtime import retention

        retention.pin(self.store, self.layout, str(project), str(release), generation, note)


def detect(location: str) -> str:
    """The format of a location: ``posix`` or ``forml-s3`` (see :func:`open_side`)."""
    parsed = urllib.parse.urlsplit(location)
    if parsed.scheme == POSIX:
        return POSIX
    if parsed.scheme not in ('', 'file'):
        return FORML_S3
    path = pathlib.Path(parsed.path if parsed.scheme else location).expanduser()
    if path.is_dir():
        with tempfile.TemporaryDirectory(prefix='forml-s3-detect-') as temp:
            if list(S3Side(f'file://{path.resolve()}', None, pathlib.Path(temp)).registry.projects()):
                return FORML_S3
        if list(PosixSide(path).registry.projects()):
            return POSIX
    return POSIX if not parsed.scheme else FORML_S3


def open_side(
    location: str,
    storage_options: typing.Mapping[str, typing.Any] | None,
    workdir: pathlib.Path,
    fmt: str = AUTO,
) -> Side:
    """One end of a copy.

    ``posix:PATH`` is a ForML posix registry, any URL with another scheme (``s3://``, ``memory://``, ...) a
    forml-s3 registry. A plain path or ``file://`` URL is whichever layout the directory holds; an empty or
    missing directory is a ForML posix registry given as a plain path and a forml-s3 registry given as
    ``file://``. ``fmt`` overrides the detection.
    """
    if fmt not in FORMATS:
        raise forml.InvalidError(f'Unknown registry format {fmt!r}: expected one of {", ".join(FORMATS)}')
    parsed = urllib.parse.urlsplit(location)
    if fmt == AUTO:
        fmt = detect(location)
    if fmt == POSIX:
        if parsed.scheme not in ('', 'file', POSIX):
            raise forml.InvalidError(f'A ForML posix registry is a local directory, not {location!r}')
        path = (parsed.netloc + parsed.path) if parsed.scheme == POSIX else parsed.path if parsed.scheme else location
        if storage_options:
            raise forml.InvalidError(f'Storage options make no sense for the posix registry {location}')
        return PosixSide(path)
    if parsed.scheme == POSIX:
        raise forml.InvalidError(f'{location!r} names a posix registry, not a forml-s3 one')
    return S3Side(location, storage_options, workdir)


# planning and copying ---------------------------------------------------------------------------------------
class Action(enum.Enum):
    COPY = 'copy'
    SKIP = 'skip'
    CONFLICT = 'conflict'
    PIN = 'pin'
    """Pin a generation at the destination as it is pinned at the source."""


@dataclasses.dataclass
class Step:
    """One release (its package) or generation (its tag and states) to copy, skip or report."""

    project: str
    release: str
    generation: int | None
    action: Action
    reason: str = ''
    note: str = ''
    """The pin's note (pin steps)."""

    @property
    def label(self) -> str:
        what = f'{self.project}-{self.release}'
        what = what if self.generation is None else f'{what} generation {self.generation}'
        return f'pin of {what}' if self.action is Action.PIN or self.reason.startswith('pin') else what


@dataclasses.dataclass
class Summary:
    copied: int = 0
    skipped: int = 0
    pinned: int = 0
    failed: list[str] = dataclasses.field(default_factory=list)
    """Messages of conflicts and failed steps."""
    bytes: int = 0
    """Package and state bytes written to the destination."""

    @property
    def ok(self) -> bool:
        return not self.failed

    def line(self) -> str:
        pins = f', {self.pinned} pinned' if self.pinned else ''
        return (
            f'{self.copied} copied, {self.skipped} skipped (already there){pins}, {len(self.failed)} failed; '
            f'{self.bytes} bytes transferred'
        )


def plan(source: Side, target: Side) -> list[Step]:
    """What a copy from ``source`` to ``target`` would do, release by release, generation by generation."""
    steps: list[Step] = []
    for project in source.projects():
        present_releases = set(target.releases(project))
        newest = max(present_releases, default=None)
        for release in source.releases(project):
            pname, rname = str(project), str(release)
            if release not in present_releases and target.pinnable and newest is not None and release < newest:
                older = f'is older than {pname}-{newest} at {target}, which accepts only increments: not copied'
                steps.append(Step(pname, rname, None, Action.CONFLICT, f'Release {pname}-{rname} {older}'))
                continue
            if release in present_releases:
                theirs, ours = target.package_sha256(project, release), source.package_sha256(project, release)
                if theirs and ours and theirs != ours:
                    steps.append(
                        Step(
                            pname,
                            rname,
                            None,
                            Action.CONFLICT,
                            f'Release {pname}-{rname} exists at {target} with another package (sha256 {theirs}, '
                            f'source {ours}): releases are immutable, left alone with all its generations',
                        )
                    )
                    continue
                steps.append(Step(pname, rname, None, Action.SKIP))
                present = set(target.generations(project, release))
            else:
                steps.append(Step(pname, rname, None, Action.COPY))
                present = set()
            retired = target.retired(project, release) if present else set()
            for generation in source.generations(project, release):
                number = int(generation)
                if number in retired:
                    steps.append(Step(pname, rname, number, Action.SKIP, f'retired at {target}, not copied again'))
                    continue
                if generation not in present:
                    steps.append(Step(pname, rname, number, Action.COPY))
                    continue
                if target.tag(project, release, number) != source.tag(project, release, number) or (
                    target.sums(project, release, number) != source.sums(project, release, number)
                ):
                    steps.append(
                        Step(
                            pname,
                            rname,
                            number,
                            Action.CONFLICT,
                            f'Generation {number} of {pname}-{rname} exists at {target} with another tag or other '
                            'states: generations are immutable, left alone',
                        )
                    )
                else:
                    steps.append(Step(pname, rname, number, Action.SKIP))
            steps.extend(_pin_steps(source, target, pname, rname, steps, present))
    return steps


def _pin_steps(source: Side, target: Side, project: str, release: str, steps: list[Step], present: set) -> list[Step]:
    """Pins of a release's generations the copy leaves at the destination, or why they are not copied."""
    pins = source.pins(project, release)
    if not pins:
        return []
    if not target.pinnable:
        return [
            Step(project, release, n, Action.SKIP, f'pin not copied: {target} keeps no pins (ForML posix)')
            for n in sorted(pins)
        ]
    there = target.pins(project, release) if present else {}
    ours = [s for s in steps if (s.project, s.release) == (project, release) and s.generation is not None]
    landing = {s.generation for s in ours if s.action is Action.COPY or (s.action is Action.SKIP and not s.reason)}
    found = []
    for number, note in sorted(pins.items()):
        if number in there:
            found.append(Step(project, release, number, Action.SKIP, 'pinned there already'))
        elif number in landing:
            found.append(Step(project, release, number, Action.PIN, note=note))
    return found


def execute(source: Side, target: Side, step: Step, written: typing.Callable[[int], None] | None = None) -> int:
    """Carry out one COPY step; returns the bytes written to the target. ``written`` is told the byte count of
    each object (the package, each state) as it goes, so a long step shows movement."""
    project, release = names.project(step.project), names.release(step.release)
    if step.generation is None:
        package = source.pull(project, release)
        path = pathlib.Path(package.path)
        size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob('*') if f.is_file())
        target.registry.push(package)
        if written:
            written(size)
        return size
    tag = source.open(project, release, step.generation)
    total = 0
    for sid in tag.states:
        data = source.read(project, release, step.generation, sid)
        if not data:
            raise forml.MissingError(
                f'State {sid} of generation {step.generation} of {step.project}-{step.release} is missing or empty '
                f'at {source}: generation not copied'
            )
        target.registry.write(project, release, sid, data)
        total += len(data)
        if written:
            written(len(data))
    target.registry.close(project, release, step.generation, tag)
    return total


def copy(
    source: Side,
    target: Side,
    *,
    steps: list[Step] | None = None,
    progress: typing.Callable[[Step], None] | None = None,
    written: typing.Callable[[Step, int], None] | None = None,
) -> Summary:
    """Copy everything ``source`` holds that ``target`` does not; returns the counts.

    ``progress`` is called after each step, ``written`` with the byte count of each object a step writes.

    A failed step (a conflict, a release older than the target's newest, a missing state) is recorded in the
    summary and the copy goes on; generations of a release that could not be copied are not attempted.
    """
    summary = Summary()
    broken: set[tuple[str, str]] = set()
    for step in plan(source, target) if steps is None else steps:
        key = (step.project, step.release)
        try:
            if step.action is Action.SKIP:
                summary.skipped += not step.label.startswith('pin')
            elif step.action is Action.PIN:
                if key in broken:
                    continue
                try:
                    target.pin(step.project, step.release, int(step.generation), step.note)
                    summary.pinned += 1
                except (forml.AnyError, OSError) as err:
                    summary.failed.append(f'{step.label}: {err}')
            elif step.action is Action.CONFLICT:
                summary.failed.append(step.reason)
                if step.generation is None:
                    broken.add(key)
            elif key in broken:
                summary.failed.append(f'{step.label}: not copied, its release could not be copied')
            else:
                try:
                    report = (lambda size, step=step: written(step, size)) if written else None
                    summary.bytes += execute(source, target, step, report)
                    summary.copied += 1
                except (forml.AnyError, asset.Level.Invalid, OSError) as err:
                    LOGGER.debug('Copy of %s failed', step.label, exc_info=True)
                    summary.failed.append(f'{step.label}: {err}')
                    if step.generation is None:
                        broken.add(key)
        finally:
            if progress:
                progress(step)
    return summary


class Workdir:
    """A temporary directory for a copy's local cache (packages and states pass through it once)."""

    def __init__(self):
        self.path = pathlib.Path(tempfile.mkdtemp(prefix='forml-s3-copy-'))

    def __enter__(self) -> pathlib.Path:
        return self.path

    def __exit__(self, *exc: object) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
