"""The commit protocol of a registry: what makes a release or a generation visible, whole or not at all.

A state is stored first - tagged ``forml-s3=uncommitted`` (what lifecycle rules expire if no commit follows) and
leased against ``forml-s3 gc`` (:mod:`forml_s3.runtime.lease`) - held for a pack when small
(:mod:`forml_s3.runtime.packing`) or uploaded in the background (:mod:`forml_s3.runtime.transfers`). A commit then
waits for every upload it names, clears their uncommitted tags, confirms with one LIST that each is still stored
with its size (a ``gc`` or a lifecycle rule may have removed it meanwhile: :class:`Incomplete`), and creates the
marker exclusively: of two writers racing for the same one exactly one wins, the other gets :class:`Conflict`
and its objects are tagged uncommitted again. A create whose answer was lost and that meets its own marker is
this writer's commit, not a conflict.

A release is committed the same way: its package is stored (tagged and leased), confirmed, then the release marker
is created exclusively, the project marker before it if missing.

:class:`Protocol` is the registry's part that runs it (a mixin: the registry provides ``_store``, ``_layout``,
``_reader``, ``_release_marker`` and the settings below); :class:`forml_s3.registry.Registry` adapts ForML's calls
to it.
"""

import contextlib
import dataclasses
import hashlib
import logging
import time
import typing
import uuid

import forml
from forml.io import asset

from .. import storage
from ..model import codec, layout, names
from . import lease, packing, retention, transfers
from . import markers as markermod

LOGGER = logging.getLogger(__name__)

UNCOMMITTED = dict([layout.UNCOMMITTED_TAG])


class Conflict(asset.Level.Invalid):
    """Another writer committed the same release or generation first."""


class Incomplete(asset.Level.Invalid):
    """A commit refused: objects its marker would name are not stored (deleted meanwhile, or lost)."""


class Protocol:
    """The commit protocol, mixed into the registry."""

    _store: storage.Store
    _layout: layout.Layout
    _reader: markermod.Markers
    _commit_timeout: float
    _tag_uncommitted: bool
    _pack_states: bool
    _keep_generations: int | None
    _lease_after: float
    _release_marker: typing.Callable[[asset.Project.Key, asset.Release.Key], dict[str, typing.Any]]
    """The release marker of a release as stored (the registry's reader, which resolves its spelling)."""

    def _write_state(
        self, project: asset.Project.Key, release: asset.Release.Key, stem: str, sid: uuid.UUID, state: bytes
    ) -> None:
        """Store a state of ``release`` (``stem``: the name it is stored under) tagged uncommitted and leased: held
        for a pack (small ones) or uploaded in the background; its commit waits for it."""
        key = self._layout.state(project, stem, sid)
        self._store.verify_exclusive_create()
        sha256 = hashlib.sha256(state).hexdigest()
        uri = self._store.url_of(key)
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
            LOGGER.info('Marker %s was created by this writer (its first answer was lost)', self._store.url_of(key))

    def _commit_release(
        self,
        project: asset.Project.Key,
        release: asset.Release.Key,
        stem: str,
        key: str,
        size: int,
        sha256: str,
        manifest: dict[str, typing.Any],
    ) -> None:
        """Commit a release whose package is stored at ``key`` (``stem``: the name the release is stored under):
        the package's uncommitted tag is cleared and its presence confirmed by one LIST, then the release marker is
        created exclusively (the project marker first, if missing) - or :class:`Conflict` naming the winner."""
        try:
            self._commit_stored(
                self._layout.release_dir(project, stem),
                {key: size},
                f'Cannot commit release {project}-{release}',
                lambda _: f'package {layout.Layout.object_name(key)}',
            )
        except Incomplete:
            lease.settle(self._store, [key])
            raise
        marker = codec.release_marker(
            str(project), str(release), manifest, layout.Layout.object_name(key), size, sha256
        )
        body = codec.dumps(marker)
        self._ensure_project(project)
        try:
            self._create_marker(self._layout.release_marker(project, stem), body)
        except FileExistsError:
            self._reader.invalidate(self._layout.releases(project))
            winner = self._release_marker(project, release)
            if winner.get('package', {}).get('sha256') != sha256:
                self._uncommit_tags([key])
            raise Conflict(
                f'Release {project}-{release} was pushed to {self._store.url} by another writer meanwhile '
                f'(as {winner.get("release", stem)}, by {winner.get("writer")}): releases are immutable, '
                'bump the version and release again'
            ) from None
        finally:
            self._reader.invalidate(self._layout.releases(project))
            lease.settle(self._store, [key])

    def _ensure_project(self, project: asset.Project.Key) -> None:
        """Create the project marker if missing, before the release marker: a push that dies between the two leaves
        a project listed without releases (which ForML lists as such), never a committed release that ForML's
        project listing does not show."""
        if str(project) in self._reader.listing(self._layout.projects()):
            return
        with contextlib.suppress(FileExistsError):
            self._store.create(
                self._layout.project_marker(project),
                codec.dumps(codec.project_marker(str(project))),
            )
        self._reader.invalidate(self._layout.projects())

    def _commit_generation(self, project: asset.Project.Key, release: str, generation: int, tag: asset.Tag) -> None:
        """Commit generation ``generation`` of a stored release (``release``: the name it is stored under): the
        states' uploads finish (the held ones as one pack), their uncommitted tags are cleared and their presence
        confirmed by one LIST, then the generation marker is created exclusively - or :class:`Conflict`."""
        self._store.verify_exclusive_create()
        prefix = self._layout.generations(project, release)
        # early exit on a known conflict; the exclusive marker below is the real guard
        if str(int(generation)) in self._reader.known(prefix):
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
                        f'({self._store.url}: no generation below {floor} is committed any more); your states were not '
                        'committed. Train again to build on the newest generation.'
                    )
            except FileExistsError:
                self._uncommit_tags(stored)
                raise self._conflict(project, release, generation) from None
            finally:
                self._reader.invalidate(prefix)
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
            transfers.forget(self._store.url_of(key))
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
                self._store, self._layout, project, release, self._keep_generations, read=self._reader.marker
            )
        except Exception as err:
            LOGGER.warning('Could not retire old generations of %s-%s: %s', project, release, err)
            return
        finally:
            self._reader.invalidate(self._layout.generations(project, release))
        if retired:  # own retirement: hidden from this process at once, as from listings
            self._reader.forget(*(self._layout.generation_marker(project, release, g) for g in retired))
            LOGGER.info('Retired generations %s of %s-%s', retired, project, release)

    def _conflict(self, project: str, release: str, generation: int) -> Conflict:
        return Conflict(
            f'Generation {generation} of {project}-{release} was committed by another writer meanwhile '
            f'({self._store.url}); your states were not committed. Train again to build generation '
            f'{int(generation) + 1} on top of it.'
        )

    def _claim_pack(self, project: str, release: str, keys: dict[str, str]) -> tuple[dict[str, str], '_Pack | None']:
        """The states (by id: key) held in this process, claimed as one pack; and the others, stored on their own."""
        if not self._pack_states:
            return keys, None
        held = packing.claim(self._store.url_of(k) for k in keys.values())
        try:
            if len(held) == 1:  # nothing to pack it with: stored on its own
                packing.send(*held.values())
                held = {}
            alone = {sid: key for sid, key in keys.items() if self._store.url_of(key) not in held}
            packed = [(sid, held[self._store.url_of(key)]) for sid, key in keys.items() if sid not in alone]
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
        uploads = {sid: transfers.pending(self._store.url_of(key)) for sid, key in alone.items()}
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
        uri = self._store.url_of(pack.key)
        LOGGER.debug('Uploading %d states in one pack %s (%d bytes)', len(pack.held), uri, len(pack.body))
        try:
            self._store.write(pack.key, pack.body, tags=self._uncommitted(), metadata={'sha256': pack.sha256})
        except Exception as err:
            raise asset.Level.Invalid(f'Upload of state pack {uri} failed: {err}') from err
        return len(pack.body), pack.sha256

    def _uploaded_checksum(self, key: str, pending: transfers.Pending) -> tuple[int, str]:
        """Size and sha256 of a state written in this process, once its upload (or its pack's) has finished."""
        uri = self._store.url_of(key)
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
        uri = self._store.url_of(key)
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
                f'{refusal}: {", ".join(missing)} in {self._store.url_of(prefix)} - deleted while the upload waited '
                'for its commit (by `forml-s3 gc` or a lifecycle rule) or lost; nothing was committed, run it again'
            )

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
        return layout.Layout.pack_id(self.key)

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
