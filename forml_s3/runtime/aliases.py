"""Model aliases: a named pointer per project (``champion``, ``production``, ...) to one release and generation.

An alias is one small JSON object, ``<project>/aliases/<name>.json`` (see :mod:`forml_s3.model.layout`), holding what
it points to now and every change it went through (from, to, when, by whom: user and host, never a secret).
Every change is a compare-and-swap on that object (:meth:`forml_s3.storage.Store.replace`: ``If-Match`` on S3,
the generation precondition on GCS, ``If-Match`` on Azure, a lock on local disk): of two operators moving one
alias at once exactly one wins; the other gets :class:`Conflict`, which says what the alias points to now.

An alias points only to a committed, live generation: a retired or missing one is refused, and retention never
retires a generation an alias points to (:func:`aliased` is consulted as pins are). A removed alias keeps its
object (pointing nowhere) so that its history survives and a later ``set`` continues it.
"""

import dataclasses
import getpass
import logging
import socket
import typing

import forml
from forml.io import asset

from .. import storage
from ..model import codec, layout, names

LOGGER = logging.getLogger(__name__)

ANY = object()
"""``expect`` default: move the alias whatever it points to now (the swap still fails if it moves meanwhile)."""


class Conflict(forml.InvalidError):
    """The alias is not (or no longer) where the caller expected it: another change came first."""


@dataclasses.dataclass(frozen=True)
class Target:
    """What an alias points to."""

    release: str
    generation: int

    def __str__(self):
        return f'{self.release}#{self.generation}'

    def as_json(self) -> dict[str, typing.Any]:
        return {'release': self.release, 'generation': self.generation}

    @classmethod
    def parse(cls, value: typing.Any) -> 'Target | None':
        if value is None:
            return None
        return cls(str(names.release(value['release'])), int(names.generation(value['generation'])))


@dataclasses.dataclass(frozen=True)
class Alias:
    """One alias as read from the store."""

    project: str
    name: str
    target: Target | None
    """What it points to (``None``: removed)."""
    updated: str
    by: str
    history: list[dict[str, typing.Any]]
    """Every change, oldest first: ``{"from": ..., "to": ..., "when": ..., "by": ...}`` (targets as JSON or null)."""
    version: str = dataclasses.field(default='', compare=False)
    """The store's version of the object it was read from (what a compare-and-swap compares)."""

    def as_json(self) -> dict[str, typing.Any]:
        return {
            'format': codec.FORMAT,
            'kind': 'alias',
            'project': self.project,
            'name': self.name,
            'target': self.target.as_json() if self.target else None,
            'updated': self.updated,
            'by': self.by,
            'history': self.history,
        }


def who() -> str:
    """The user and host making a change (for the history; no secret ever goes there)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (containers) and no USER variable
        import os

        user = f'uid{os.getuid()}'
    return f'{user}@{socket.gethostname()}'


class Aliases:
    """The aliases of one registry (its store and key layout)."""

    def __init__(self, st: storage.Store, lay: layout.Layout):
        self._store: storage.Store = st
        self._layout: layout.Layout = lay

    # reading ------------------------------------------------------------------------------------------------
    def read(self, project: str, name: str) -> Alias | None:
        """The alias object (pointing somewhere or removed), or ``None`` if it never existed (one GET)."""
        key = self._layout.alias(project, name)
        try:
            raw, version = self._store.get(key)
        except FileNotFoundError:
            return None
        doc = codec.loads(raw, self._store.url_of(key))
        try:
            return Alias(
                project=str(doc['project']),
                name=str(doc['name']),
                target=Target.parse(doc.get('target')),
                updated=str(doc.get('updated', '')),
                by=str(doc.get('by', '')),
                history=list(doc.get('history') or []),
                version=version,
            )
        except (KeyError, TypeError, ValueError, asset.Level.Invalid) as err:
            raise forml.InvalidError(
                f'Corrupted alias {self._store.url_of(key)}: {err!r}; set it again with `forml-s3 alias set`'
            ) from None

    def get(self, project: str, name: str) -> Alias:
        """The alias, pointing to a generation (``forml.MissingError`` if it does not exist or was removed)."""
        project, name = str(names.project(project)), names.alias(name)
        found = self.read(project, name)
        if found is None or found.target is None:
            raise forml.MissingError(
                f'No alias {name!r} of project {project} in {self._store.url}'
                + (' (it was removed)' if found is not None else '')
                + f': `forml-s3 alias set {self._store.url} {project} {name} RELEASE GENERATION` creates it'
            )
        return found

    def resolve(self, project: str, name: str) -> Target:
        """What the alias points to now (one GET)."""
        return typing.cast(Target, self.get(project, name).target)

    def named(self, project: str) -> list[str]:
        """The alias names of a project, removed ones included (one LIST)."""
        prefix = self._layout.aliases(names.project(project))
        found = []
        for name in layout.Layout.marker_names({e.name: e.size for e in self._store.listdir(prefix)}):
            try:
                found.append(names.alias(name))
            except asset.Level.Invalid:
                LOGGER.debug('Ignoring foreign alias object %s', name)
        return sorted(found)

    def live(self, project: str) -> list[Alias]:
        """The live aliases of a project (one LIST, then one GET per alias)."""
        project = str(names.project(project))
        found = [self.read(project, name) for name in self.named(project)]
        return [a for a in found if a is not None and a.target is not None]

    def aliased(self, project: str, release: str) -> dict[int, list[str]]:
        """The generations of a release that aliases point to, with their alias names (what retention keeps)."""
        release = str(names.release(release))
        kept: dict[int, list[str]] = {}
        for alias in self.live(project):
            if alias.target and alias.target.release == release:
                kept.setdefault(alias.target.generation, []).append(alias.name)
        return kept

    # changing -----------------------------------------------------------------------------------------------
    def set(self, project: str, name: str, release: str, generation: int, *, expect: typing.Any = ANY) -> Alias:
        """Point the alias to a live generation (creating it if needed).

        Args:
            expect: What the caller believes the alias points to now (a :class:`Target`, or ``None`` for "does not
                    exist or removed"); by default any. A mismatch raises :class:`Conflict` before anything is
                    written.

        Raises:
            forml.MissingError: The generation is retired or was never committed.
            Conflict: The alias is not where ``expect`` says, or another change won the swap.
        """
        project, name = str(names.project(project)), names.alias(name)
        target = Target(str(names.release(release)), int(names.generation(generation)))
        self._require_live(project, target)
        current = self._change(project, name, target, expect)
        self._require_live(project, target, after=current)
        return current

    def remove(self, project: str, name: str, *, expect: typing.Any = ANY) -> Alias:
        """Make the alias point nowhere (its history is kept); ``forml.MissingError`` if it points nowhere now."""
        project, name = str(names.project(project)), names.alias(name)
        self.get(project, name)
        return self._change(project, name, None, expect)

    def history(self, project: str, name: str) -> list[dict[str, typing.Any]]:
        """Every change of the alias, oldest first (``forml.MissingError`` if it never existed)."""
        project, name = str(names.project(project)), names.alias(name)
        found = self.read(project, name)
        if found is None:
            raise forml.MissingError(f'No alias {name!r} of project {project} in {self._store.url}')
        return found.history

    def _change(self, project: str, name: str, target: Target | None, expect: typing.Any) -> Alias:
        old = self.read(project, name)
        before = old.target if old else None
        if expect is not ANY and expect != before:
            raise Conflict(
                f'Alias {name!r} of {project} points to {before or "nothing"}, not {expect or "nothing"} as expected '
                f'(changed by {old.by if old else "nobody"} at {old.updated if old else "-"}): nothing was changed'
            )
        return self.swap(project, name, old, target)

    def swap(self, project: str, name: str, old: Alias | None, target: Target | None) -> Alias:
        """Move the alias from ``old`` (as read; ``None``: it never existed) to ``target`` by compare-and-swap:
        :class:`Conflict` if it changed since it was read, and then nothing is written."""
        before = old.target if old else None
        if old is not None and before == target:
            return old  # already there: no change, no history entry
        now, by = codec.now(), who()
        change = {
            'from': before.as_json() if before else None,
            'to': target.as_json() if target else None,
            'when': now,
            'by': by,
        }
        new = Alias(project, name, target, now, by, [*(old.history if old else []), change])
        key = self._layout.alias(project, name)
        try:
            self._store.replace(key, codec.dumps(new.as_json()), old.version if old else None)
        except FileExistsError:
            winner = self.read(project, name)
            raise Conflict(
                f'Alias {name!r} of {project} was changed by another writer meanwhile: it now points to '
                f'{(winner.target if winner else None) or "nothing"} (by {winner.by if winner else "-"}); '
                'nothing of yours was written - check and set it again'
            ) from None
        LOGGER.info('Alias %s of %s: %s -> %s', name, project, before or 'nothing', target or 'nothing')
        return self.read(project, name) or new

    def _require_live(self, project: str, target: Target, after: Alias | None = None) -> None:
        """The target generation is committed and not retired (one HEAD of its marker). Checked again after the
        alias is stored: a retire that came in between is undone on the alias's side (it is moved back)."""
        key = self._layout.generation_marker(project, target.release, target.generation)
        try:
            live = layout.live(self._store.head(key)[0])
            what = 'is retired'
        except FileNotFoundError:  # never committed, or retired (its marker moved to retired/)
            retired = self._layout.retired_marker(project, target.release, target.generation)
            live, what = False, 'is retired' if self._store.exists(retired) else 'does not exist'
        if live:
            return
        if after is not None:
            what = 'was retired meanwhile'
            previous = after.history[-1]['from'] if after.history else None
            try:
                self._change(project, after.name, Target.parse(previous), expect=target)
            except forml.InvalidError as err:
                LOGGER.warning('Could not move alias %s of %s back: %s', after.name, project, err)
        raise forml.MissingError(
            f'Generation {target.generation} of {project}-{target.release} {what} in {self._store.url}: an alias '
            'points only to a live generation (`forml-s3 ls` shows them)'
        )
