"""Garbage collection (``forml-s3 gc``): what is safe to delete, judged twice, deleted exactly as judged.

Garbage is what an interrupted push or training leaves: packages, states and packs no marker names, and the
incomplete multipart uploads of a writer killed mid-upload (S3). An object is deleted only if all of these hold:

* the :mod:`forml_s3.model.layout` makes exactly its key (``package-<16 hex>.4ml``, ``states/<uuid>.bin`` or
  ``.pack``; a user's ``package-backup.4ml`` is not ours) in a project the registry knows (a project or release
  marker exists) and, for states and packs, in a release whose marker exists;
* it is older than the grace period (7 days by default: longer than any training between its first upload and
  its commit);
* two listings, the second right before deleting, find no marker naming it, and nothing is deleted in a
  release with a corrupted marker;
* no live lease (:mod:`forml_s3.runtime.lease`) names its release: a process still holding uncommitted uploads there;
  the leases are listed after the second listing (and again while deleting), so a writer that announced
  itself before its upload appeared is always seen;
* where the store has conditional deletes (S3: ``If-Match`` on the ETag the listing reported), an object
  rewritten since it was judged is kept (servers that ignore the condition delete it anyway, and ``file://`` and
  ``memory://`` have none: see ``docs/consistency.md``).

Expired leases (of killed processes) are dropped too.

With ``retired_older_than``, ``gc`` also deletes what a lifecycle rule on the ``forml-s3=retired`` tag would
expire, on stores that have no such rules (GCS; ``file://``; any bucket without them): the states and packs of
generations retired longer ago than that (except those a live generation names too) and their ``retired/``
markers. The generation's tombstone stays, so its number is never reused.
"""

import dataclasses
import datetime
import logging
import time
import typing

from forml.io import asset

from .. import storage
from ..model import layout
from ..runtime import lease
from . import snapshot as inspect

LOGGER = logging.getLogger(__name__)

GRACE = datetime.timedelta(days=7)
"""Default age below which nothing is collected."""
LEASE_RECHECK = 10.0
"""Seconds between re-listings of the leases while deleting."""


class Upload(typing.NamedTuple):
    """An incomplete multipart upload of one of the registry's objects (what ListMultipartUploads says of it)."""

    path: str
    upload_id: str
    initiated: float
    kind: inspect.Kind
    project: str | None
    release: str | None


@dataclasses.dataclass
class Garbage:
    """What a collection deletes (or, dry, would delete)."""

    objects: list[inspect.Object] = dataclasses.field(default_factory=list)
    uploads: list[Upload] = dataclasses.field(default_factory=list)
    leases: list[lease.Lease] = dataclasses.field(default_factory=list)
    """Expired leases."""
    leased: set[str] = dataclasses.field(default_factory=set)
    """Releases (``project/release``) spared because a live lease names them."""
    changed: list[str] = dataclasses.field(default_factory=list)
    """Paths kept because they changed since they were judged (a conditional delete refused)."""
    retired: list[inspect.Object] = dataclasses.field(default_factory=list)
    """Objects of generations retired long enough ago (``retired_older_than``): states, packs, retired markers."""

    def __len__(self) -> int:
        return len(self.objects) + len(self.uploads) + len(self.leases) + len(self.retired)


def _eligible(snap: inspect.Snapshot) -> typing.Callable[[str | None, str | None, inspect.Kind], bool]:
    """Whether the layout says an object of this kind in this release may be garbage at all."""
    projects = {p.name for p in snap.projects if p.listed or p.releases}
    released = {(p.name, r.name) for p in snap.projects for r in p.releases if r.marker is not None}
    damaged = {
        (p.name, r.name) for p in snap.projects for r in p.releases if r.error or any(g.error for g in r.generations)
    }

    def eligible(project: str | None, release: str | None, kind: inspect.Kind) -> bool:
        if project not in projects or (project, release) in damaged:
            return False
        return kind is inspect.Kind.PACKAGE or (project, release) in released

    return eligible


def candidates(
    snap: inspect.Snapshot, older_than: datetime.timedelta, now: float | None = None
) -> list[inspect.Object]:
    """The orphans of a snapshot the layout lets ``gc`` judge, last modified more than ``older_than`` before ``now``.

    Objects whose store reports no modification time are never candidates.
    """
    limit = (time.time() if now is None else now) - older_than.total_seconds()
    eligible = _eligible(snap)
    return [
        o
        for o in snap.orphans()
        if o.modified is not None and o.modified < limit and eligible(o.project, o.release, o.kind)
    ]


def retired(snap: inspect.Snapshot, older_than: datetime.timedelta, now: float) -> list[inspect.Object]:
    """The objects of generations retired more than ``older_than`` before ``now`` (by their ``retired/`` marker's
    modification time): the states and packs no other generation names, then the retired markers themselves."""
    lay, limit = layout.Layout(snap.root), now - older_than.total_seconds()
    kept: set[str] = set()
    expired: list[str] = []
    markers: list[str] = []
    for project in snap.projects:
        for release in project.releases:
            for generation in release.generations:
                try:
                    stored = list(generation.stored(lay, project.name, release.name))
                except asset.Level.Invalid:
                    kept.add(generation.marker)  # a damaged marker: judge nothing it may name
                    continue
                marker = snap.objects.get(generation.marker)
                modified = marker.modified if marker else None
                if generation.retired and generation.error is None and modified is not None and modified < limit:
                    expired.extend(stored)
                    markers.append(generation.marker)
                else:
                    kept.update(stored)
    doomed = [p for p in dict.fromkeys(expired) if p not in kept] + markers
    return [snap.objects[p] for p in doomed if p in snap.objects]


def uploads(st: storage.Store, snap: inspect.Snapshot, older_than: datetime.timedelta, now: float) -> list[Upload]:
    """Incomplete multipart uploads of the registry's objects initiated more than ``older_than`` ago (S3 only)."""
    if not st.multipart:
        return []
    lay, eligible = layout.Layout(st.root), _eligible(snap)
    bucket = st.root.partition('/')[0]
    found = []
    for upload in st.multipart_uploads(f'{st.root}/'):
        path = f'{bucket}/{upload["Key"]}'
        kind, project, release, _ = inspect.classify(lay, path)
        initiated = upload['Initiated']
        initiated = (initiated if initiated.tzinfo else initiated.replace(tzinfo=datetime.UTC)).timestamp()
        if kind in inspect.STORED and eligible(project, release, kind) and initiated < now - older_than.total_seconds():
            found.append(Upload(path, upload['UploadId'], initiated, kind, project, release))
    return sorted(found, key=lambda u: (u.path, u.upload_id))


def _aged(
    older_than: datetime.timedelta, retired_older_than: datetime.timedelta | None, now: float
) -> inspect.Releases:
    """The releases worth reading the markers of: those holding a package, state or pack (or, with
    ``retired_older_than``, a retired marker) old enough to be judged, by the ages the listing gave. A registry
    with nothing that old costs its LIST pages and nothing more."""

    def aged(objects: typing.Iterable[inspect.Object]) -> set[tuple[str | None, str | None]]:
        limits = {kind: now - older_than.total_seconds() for kind in inspect.STORED}
        if retired_older_than is not None:
            limits[inspect.Kind.RETIRED_MARKER] = now - retired_older_than.total_seconds()
        return {
            (o.project, o.release)
            for o in objects
            if o.kind in limits and (o.modified is None or o.modified < limits[o.kind])
        }

    return aged


def judge(
    st: storage.Store,
    older_than: datetime.timedelta,
    now: float | None = None,
    snap: inspect.Snapshot | None = None,
    retired_older_than: datetime.timedelta | None = None,
) -> Garbage:
    """What a collection would delete now: the garbage of two listings, less what live leases protect (and, with
    ``retired_older_than``, the objects of generations retired that long ago)."""
    now = time.time() if now is None else now
    aged = _aged(older_than, retired_older_than, now)
    snap = snap or inspect.snapshot(st, aged)
    first = candidates(snap, older_than, now)
    second = inspect.snapshot(st, aged) if first else snap
    again = {o.path: o for o in candidates(second, older_than, now)} if first else {}
    pending = uploads(st, second, older_than, now)
    found = lease.leases(st)
    live = [x for x in found if x.live(now)]
    garbage = Garbage(leases=[x for x in found if not x.live(now)])
    if retired_older_than is not None:
        garbage.retired = retired(snap, retired_older_than, now)
    for obj in first:
        current = again.get(obj.path)
        if current is None or current.version != obj.version:
            continue  # named meanwhile, or rewritten: not what was judged
        if any(x.covers(obj.project, obj.release) for x in live):
            garbage.leased.add(f'{obj.project}/{obj.release}')
            continue
        garbage.objects.append(current)
    for upload in pending:
        if any(x.covers(upload.project, upload.release) for x in live):
            garbage.leased.add(f'{upload.project}/{upload.release}')
        else:
            garbage.uploads.append(upload)
    return garbage


Progress = typing.Callable[[str, typing.Any], None]
"""Told each thing done: (``'deleted'`` / ``'expired'`` / ``'aborted'`` / ``'dropped'`` / ``'changed'``, the
object, upload, lease or path)."""


def collect(
    st: storage.Store,
    older_than: datetime.timedelta = GRACE,
    *,
    dry_run: bool = False,
    now: float | None = None,
    progress: Progress | None = None,
    garbage: Garbage | None = None,
) -> Garbage:
    """Delete the garbage :func:`judge` finds (or ``garbage`` judged just before); returns what was (or, with
    ``dry_run``, would be) deleted. An error stops the run: what ``progress`` was told is what was done."""
    now = time.time() if now is None else now
    garbage = garbage or judge(st, older_than, now)
    if dry_run:
        return garbage
    done = Garbage(leased=set(garbage.leased))
    tell = progress or (lambda *_: None)

    def delete(item: typing.Any, into: list, event: str) -> None:
        """Delete exactly the version judged; one that changed meanwhile (or a lease renewed) is kept."""
        if st.delete_if_unchanged(item.path, item.version):
            into.append(item)
            tell(event, item)
        else:
            done.changed.append(item.path)
            tell('changed', item.path)

    live, checked = [], time.monotonic()
    for obj in garbage.objects:
        if time.monotonic() - checked > LEASE_RECHECK:  # a long run: writers may have announced themselves since
            live, checked = [x for x in lease.leases(st) if x.live(time.time())], time.monotonic()
        if any(x.covers(obj.project, obj.release) for x in live):
            done.leased.add(f'{obj.project}/{obj.release}')
            continue
        LOGGER.info('Deleting orphan %s (%d bytes)', st.url_of(obj.path), obj.size)
        delete(obj, done.objects, 'deleted')
    for obj in garbage.retired:
        LOGGER.info('Deleting %s of a retired generation (%d bytes)', st.url_of(obj.path), obj.size)
        delete(obj, done.retired, 'expired')
    for upload in garbage.uploads:
        LOGGER.info('Aborting multipart upload %s of %s', upload.upload_id, st.url_of(upload.path))
        st.abort_upload(upload.path, upload.upload_id)
        done.uploads.append(upload)
        tell('aborted', upload)
    for expired in garbage.leases:
        delete(expired, done.leases, 'dropped')
    return done
