"""What the registry browser shows, read from the store at the cost the issue sets.

Each level is read with one delimiter LIST per 1,000 entries (afresh on each view unless ``listing_ttl``), and a marker
is read (one GET) only when a page shows its row; markers are memoised by key and ETag, so a marker read once is
never read again while it is unchanged. A release page therefore costs its three LISTs (generations, retired,
pinned) plus the markers of the one page of generations it shows, whatever the release holds.
"""

import collections
import concurrent.futures
import contextlib
import dataclasses
import datetime
import logging
import threading
import time
import typing

import forml
from forml.io import asset

from .. import storage
from ..model import codec, layout, names
from ..ops import snapshot as inspect
from ..runtime import aliases as aliasmod
from ..runtime import markers as markermod
from ..runtime import retention

LOGGER = logging.getLogger(__name__)

PAGE = 50
"""Rows per page of projects and of generations."""
LISTING_TTL = 0.0
"""Seconds a listing is reused (0: every page view lists afresh, so a commit by another process shows at once)."""
MEMO = 20_000
"""Markers kept in memory (a generation marker is a few KiB)."""
WORKERS = 8


@dataclasses.dataclass
class Row:
    """One generation as a page shows it: listing data, plus its marker's tag where the marker was read."""

    number: int
    committed: float | None
    """When the marker was stored (from the listing)."""
    pinned: bool = False
    marker: dict[str, typing.Any] | None = None
    tag: asset.Tag | None = None
    error: str | None = None

    @property
    def score(self) -> float | None:
        score = self.tag.tuning.score if self.tag is not None else None
        return float(score) if isinstance(score, int | float) and not isinstance(score, bool) else None

    @property
    def size(self) -> int:
        return sum(int(s.get('size', 0)) for s in (self.marker or {}).get('states', {}).values())

    @property
    def states(self) -> int:
        return len((self.marker or {}).get('states', {}))


@dataclasses.dataclass
class ReleaseView:
    project: str
    release: str
    marker: dict[str, typing.Any] | None
    error: str | None
    live: list[Row]
    """Every live generation, newest first (listing data; markers of the shown page read)."""
    page: list[Row]
    retired: list[tuple[int, float | None]]
    pinned: list[int]
    pages: int
    number: int
    aliased: dict[int, list[str]] = dataclasses.field(default_factory=dict)
    """Alias names by the generation of this release they point to."""


@dataclasses.dataclass
class StateRow:
    sid: str
    size: int
    sha256: str
    pack: str | None
    offset: int | None


def when(moment: float | str | None) -> str:
    """A listing time (POSIX seconds) or marker time (ISO) for people, in UTC."""
    if not moment and moment != 0:
        return '-'
    if isinstance(moment, int | float):
        return datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime('%Y-%m-%d %H:%M:%S')
    try:
        parsed = datetime.datetime.fromisoformat(str(moment))
    except ValueError:
        return str(moment)
    if parsed.tzinfo:
        parsed = parsed.astimezone(datetime.UTC)
    return parsed.strftime('%Y-%m-%d %H:%M:%S')


class Browser:
    """Read side of the browser over one registry store (and optionally one inventory store)."""

    def __init__(
        self,
        st: storage.Store,
        inventory: storage.Store | None = None,
        *,
        listing_ttl: float = LISTING_TTL,
        page: int = PAGE,
    ):
        self.store = st
        self.layout = layout.Layout(st.root)
        self.inventory = inventory
        self.listing_ttl = listing_ttl
        self.page_size = page
        self._lock = threading.Lock()
        self._listings: dict[str, tuple[float, list[storage.Entry]]] = {}
        self._markers: collections.OrderedDict[tuple[str, str], dict[str, typing.Any]] = collections.OrderedDict()

    # listings and markers ---------------------------------------------------------------------------------
    def _entries(self, prefix: str) -> list[storage.Entry]:
        now = time.monotonic()
        with self._lock:
            cached = self._listings.get(prefix)
        if cached and now - cached[0] < self.listing_ttl:
            return cached[1]
        entries = self.store.listdir(prefix)
        with self._lock:
            self._listings[prefix] = (now, entries)
        return entries

    def markers(self, prefix: str) -> dict[str, storage.Entry]:
        """Live markers under a level prefix by name (tombstones and foreign objects skipped)."""
        entries = {e.name: e for e in self._entries(prefix)}
        return {
            name: entries[name + layout.MARKER]
            for name in layout.Layout.marker_names({n: e.size for n, e in entries.items()})
        }

    def invalidate(self, project: str, release: str) -> None:
        """Forget the listings of a release (after a write through the browser)."""
        with self._lock:
            for prefix in (
                self.layout.generations(project, release),
                self.layout.retired(project, release),
                self.layout.pinned(project, release),
            ):
                self._listings.pop(prefix, None)

    def marker(self, key: str, entry: storage.Entry) -> dict[str, typing.Any]:
        """A marker by key and listed version: memoised, else one GET."""
        with self._lock:
            memo = self._markers.get((key, entry.version))
            if memo is not None:
                self._markers.move_to_end((key, entry.version))
                return memo
        found = markermod.read(self.store, key)
        with self._lock:
            self._markers[(key, entry.version)] = found
            while len(self._markers) > MEMO:
                self._markers.popitem(last=False)
        return found

    def _many(self, func: typing.Callable[[typing.Any], typing.Any], items: list[typing.Any]) -> list[typing.Any]:
        """``func`` over ``items`` concurrently; each result or the exception it raised."""

        def safe(item: typing.Any) -> typing.Any:
            try:
                return func(item)
            except (forml.AnyError, FileNotFoundError) as err:
                return err

        if len(items) <= 1:
            return [safe(i) for i in items]
        with concurrent.futures.ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(safe, items))

    @staticmethod
    def _valid(found: typing.Iterable[str], key: typing.Callable[[str], typing.Any]) -> list[typing.Any]:
        valid = []
        for name in found:
            with contextlib.suppress(asset.Level.Invalid):
                valid.append(key(name))
        return valid

    # pages ------------------------------------------------------------------------------------------------
    def pages(self, count: int) -> int:
        return max(1, -(-count // self.page_size))

    def projects(self, page: int = 1) -> tuple[list[dict[str, typing.Any]], int, int]:
        """One page of projects with their releases' generation counts and last commit; (rows, pages, total).

        Costs one LIST of the projects, then, for each project shown, one LIST of its releases and one of each
        release's generations (in parallel); no marker is read.
        """
        projects = sorted(str(p) for p in self._valid(self.markers(self.layout.projects()), names.project))
        shown = projects[(page - 1) * self.page_size : page * self.page_size]

        def releases(project: str) -> list[dict[str, typing.Any]]:
            found = sorted(self._valid(self.markers(self.layout.releases(project)), names.release))
            return [self._release_row(project, str(r)) for r in found]

        rows = []
        for project, found in zip(shown, self._many(releases, shown), strict=True):
            if isinstance(found, Exception):
                rows.append({'name': project, 'releases': [], 'error': str(found), 'generations': 0, 'last': None})
                continue
            lasts = [r['last'] for r in found if r['last'] is not None]
            rows.append(
                {
                    'name': project,
                    'releases': found,
                    'error': None,
                    'generations': sum(r['generations'] for r in found),
                    'last': max(lasts) if lasts else None,
                }
            )
        return rows, self.pages(len(projects)), len(projects)

    def _release_row(self, project: str, release: str) -> dict[str, typing.Any]:
        generations = self.markers(self.layout.generations(project, release))
        times = [e.modified for e in generations.values() if e.modified is not None]
        return {'release': release, 'generations': len(generations), 'last': max(times) if times else None}

    def project(self, project: str) -> list[dict[str, typing.Any]]:
        """The releases of a project: generation counts and last commit (LISTs) and each package (one GET each,
        memoised)."""
        project = str(names.project(project))
        entries = self.markers(self.layout.releases(project))
        if not entries and project not in self.markers(self.layout.projects()):
            raise forml.MissingError(f'No project {project} in {self.store.url}')
        found = sorted(self._valid(entries, names.release))

        def row(release: asset.Release.Key) -> dict[str, typing.Any]:
            data = self._release_row(project, str(release))
            try:
                marker = self.marker(self.layout.release_marker(project, release), entries[str(release)])
                data.update(package=marker.get('package') or {}, created=marker.get('created'), error=None)
            except (forml.AnyError, FileNotFoundError) as err:
                data.update(package={}, created=None, error=str(err))
            return data

        return self._many(row, found)

    def release(self, project: str, release: str, page: int = 1) -> ReleaseView:
        """A release: its marker, every live generation from the listing, the markers of one page of them."""
        project, release = str(names.project(project)), str(names.release(release))
        entry = self.markers(self.layout.releases(project)).get(release)
        if entry is None:
            raise forml.MissingError(f'No release {project}-{release} in {self.store.url}')
        marker, error = None, None
        try:
            marker = self.marker(self.layout.release_marker(project, release), entry)
        except (forml.AnyError, FileNotFoundError) as err:
            error = str(err)
        generations = self.markers(self.layout.generations(project, release))
        pinned = sorted(
            int(g) for g in self._valid(self.markers(self.layout.pinned(project, release)), names.generation)
        )
        live = sorted(
            (
                Row(int(g), generations[str(g)].modified, int(g) in pinned)
                for g in self._valid(generations, names.generation)
            ),
            key=lambda r: r.number,
            reverse=True,
        )
        retired_entries = self.markers(self.layout.retired(project, release))
        retired = sorted(
            ((int(g), retired_entries[str(g)].modified) for g in self._valid(retired_entries, names.generation)),
            reverse=True,
        )
        pages = self.pages(len(live))
        page = min(max(page, 1), pages)
        shown = live[(page - 1) * self.page_size : page * self.page_size]
        self._read_rows(project, release, shown, generations)
        for row in live:  # markers read before (other pages) cost nothing: show their scores on the chart too
            if row.marker is None:
                key = (
                    self.layout.generation_marker(project, release, row.number),
                    generations[str(row.number)].version,
                )
                with self._lock:
                    row.marker = self._markers.get(key)
                if row.marker is not None:
                    self._tag(row, project, release)
        aliased: dict[int, list[str]] = {}
        for alias in self.aliases(project):
            if alias.target and alias.target.release == release:
                aliased.setdefault(alias.target.generation, []).append(alias.name)
        return ReleaseView(project, release, marker, error, live, shown, retired, pinned, pages, page, aliased)

    def _read_rows(self, project: str, release: str, rows: list[Row], entries: dict[str, storage.Entry]) -> None:
        def read(row: Row) -> dict[str, typing.Any]:
            return self.marker(self.layout.generation_marker(project, release, row.number), entries[str(row.number)])

        for row, found in zip(rows, self._many(read, rows), strict=True):
            if isinstance(found, Exception):
                row.error = str(found)
            else:
                row.marker = found
                self._tag(row, project, release)

    def _tag(self, row: Row, project: str, release: str) -> None:
        try:
            row.tag = codec.tag_of(
                row.marker, self.store.url_of(self.layout.generation_marker(project, release, row.number))
            )
        except asset.Level.Invalid as err:
            row.error = str(err)

    def generation(self, project: str, release: str, generation: int) -> tuple[Row, bool, list[StateRow]]:
        """A generation (live or retired): (row, retired, its states)."""
        project, release = str(names.project(project)), str(names.release(release))
        number = int(names.generation(generation))
        retired = False
        entry = self.markers(self.layout.generations(project, release)).get(str(number))
        key = self.layout.generation_marker(project, release, number)
        if entry is None:
            entry = self.markers(self.layout.retired(project, release)).get(str(number))
            key, retired = self.layout.retired_marker(project, release, number), True
        if entry is None:
            raise forml.MissingError(f'No generation {number} of {project}-{release} in {self.store.url}')
        pinned = str(number) in self.markers(self.layout.pinned(project, release))
        row = Row(number, entry.modified, pinned and not retired)
        try:
            row.marker = self.marker(key, entry)
        except (forml.AnyError, FileNotFoundError) as err:
            row.error = str(err)
            return row, retired, []
        self._tag(row, project, release)
        states = []
        for sid, info in sorted((row.marker.get('states') or {}).items()):
            pack = info.get('pack')
            states.append(
                StateRow(str(sid), int(info.get('size', 0)), str(info.get('sha256', '')), pack, info.get('offset'))
            )
        return row, retired, states

    def verify(self, project: str, release: str, generation: int) -> list[tuple[str, str, str | None]]:
        """Check each object holding the generation's states (exists, size, sha256): (key, what, problem).

        Uses :func:`forml_s3.ops.snapshot.verify` on a snapshot of just this generation (one HEAD and one GET per
        object), so the browser reports exactly what ``forml-s3 verify`` would.
        """
        row, retired, _ = self.generation(project, release, generation)
        if row.marker is None:
            raise forml.InvalidError(row.error or 'unreadable generation marker')
        project, release = str(names.project(project)), str(names.release(release))
        stored = self.layout.stored(project, release, row.marker)

        def head(path: str) -> inspect.Object | None:
            try:
                size, _ = self.store.head(path)
            except FileNotFoundError:
                return None
            return inspect.Object(path, size, None, inspect.Kind.STATE, project, release)

        objects = {o.path: o for o in self._many(head, list(stored)) if isinstance(o, inspect.Object)}
        found = inspect.Generation(int(generation), '', retired=False, states=row.marker['states'])
        found.packs = dict(row.marker.get('packs') or {})
        snap = inspect.Snapshot(
            self.store.url,
            self.store.root,
            objects,
            [inspect.Project(project, True, [inspect.Release(release, None, generations=[found])])],
        )
        _, problems = inspect.verify(self.store, orphans=False, snap=snap)
        by_path = {p.path: p.message for p in problems}
        return [(path, what, by_path.get(path)) for path, (_, _, what) in sorted(stored.items())]

    # aliases ------------------------------------------------------------------------------------------------
    @property
    def alias_book(self) -> aliasmod.Aliases:
        """The registry's aliases (:mod:`forml_s3.runtime.aliases`: what ``forml-s3 alias`` reads and moves)."""
        return aliasmod.Aliases(self.store, self.layout)

    def aliases(self, project: str) -> list[aliasmod.Alias]:
        """The live aliases of a project (one LIST, one GET per alias)."""
        return self.alias_book.live(project)

    # writes (the CLI's functions) ---------------------------------------------------------------------------
    def retire_plan(self, project: str, release: str, keep: int) -> retention.Plan:
        return retention.plan(self.store, self.layout, project, release, keep)

    # inventory ----------------------------------------------------------------------------------------------
    def applications(self) -> list[tuple[str, int, float | None]]:
        """The inventory's applications: (name, descriptor size, last modified); one LIST."""
        if self.inventory is None:
            return []
        entries = {e.name: e for e in self.inventory.listdir(self.inventory.root)}
        found = []
        for name in layout.InventoryLayout.applications(entries):
            with contextlib.suppress(asset.Level.Invalid):
                entry = entries[name + layout.DESCRIPTOR_SUFFIX]
                found.append((names.application(name), entry.size, entry.modified))
        return sorted(found)

    def descriptor(self, application: str) -> bytes:
        """The descriptor's source (read, never imported: the browser runs no stored code)."""
        if self.inventory is None:
            raise forml.MissingError('No inventory configured (forml-s3 ui --inventory URL)')
        key = layout.InventoryLayout(self.inventory.root).descriptor(application)
        try:
            return self.inventory.read(key)
        except FileNotFoundError:
            raise forml.MissingError(f'Application {application!r} not found in {self.inventory.url}') from None
