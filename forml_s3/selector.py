"""Model-selection strategies that follow the registry without a restart, and survive retention.

``Refreshing`` picks the latest generation of a project (optionally of one release) and re-checks the
registry at most every ``refresh`` seconds, on the next request after the interval: a retrained model is
served within one interval, and the check costs a listing or two (one LIST each). ``Alias`` follows a model
alias, ``Fallback`` chains selectors and ``Split`` weighs traffic over them (``docs/aliases.md``).

Picks are compared and hashed by their names (project, release, generation number), never through ForML's
``Instance`` equality: that looks the generation up in the registry's listing and raises once the generation
is retired or expired, which took ForML's own ``Latest`` (and ``Refreshing``, before) down for good. The
gateway hashes the selected instance on every request to find its loaded model, so every selector here returns
a :class:`Named` instance, hashed by name too: a retired pick keeps being served from memory until the next
check moves on.

If the registry cannot be reached at refresh time, the last good pick keeps serving and the failure is
logged; if the registry answers that ``Refreshing`` has no generation left to pick (the served one retired or
expired too), the pick is dropped and requests fail with that error until a generation is listed again.

Example descriptor (``application.py``)::

    from forml import application
    from forml_s3.selector import Refreshing

    application.setup(application.Generic('forml-s3-demo', selector=Refreshing('forml-s3-demo', refresh=10)))
"""

import hashlib
import logging
import random
import threading
import time
import typing

import forml
from forml import application
from forml.io import asset

if typing.TYPE_CHECKING:
    from forml import runtime

LOGGER = logging.getLogger(__name__)

GONE = (asset.Level.Listing.Empty, asset.Level.Invalid, forml.MissingError)
"""What a registry that answered says about a pick that no longer exists (retired, expired or deleted)."""


Pick = tuple[str, str, int]
"""A selector's pick by name: (project, release, generation number) - compared without asking the registry."""


class Named(asset.Instance):
    """A model instance named by its :data:`Pick`, compared and hashed by that name (``name``).

    ForML's ``Instance`` compares and hashes through the registry's listings (``Level.key`` re-lists its
    parent and raises ``Invalid level key`` for a generation no longer listed): fine for a fixed generation,
    fatal for a serving gateway whose generation gets retired while it serves it. Every selector here returns
    these.
    """

    def __init__(self, project: str, release: str, generation: int, registry: asset.Directory):
        super().__init__(project=project, release=release, generation=generation, registry=registry)
        self.name: Pick = (str(project), str(release), int(generation))

    def __hash__(self):
        return hash(self.name)

    def __eq__(self, other):
        return isinstance(other, Named) and other.name == self.name

    def __str__(self):
        return '-'.join(str(n) for n in self.name)

    def __repr__(self):
        return f'Named{self.name}'


def _instance(registry: asset.Directory, pick: Pick) -> Named:
    return Named(*pick, registry=registry)


class _Refreshed(application.Selector):
    """A pick per registry, kept for ``refresh`` seconds; when the registry cannot be read at refresh time, the
    last good pick keeps serving (:meth:`_failed` logs why, or refuses for a pick that is gone)."""

    def __init__(self, refresh: float):
        if refresh < 0:
            raise ValueError(f'Refresh interval must not be negative: {refresh}')
        self._refresh: float = float(refresh)
        self._lock: threading.Lock = threading.Lock()
        self._picked: dict[asset.Directory, tuple[float, Named]] = {}

    def select(self, registry: asset.Directory, context: typing.Any, stats: 'runtime.Stats') -> asset.Instance:
        with self._lock:
            now = time.monotonic()
            picked = self._picked.get(registry)
            if picked is not None and now - picked[0] < self._refresh:
                return picked[1]
            previous = None if picked is None else picked[1]
            try:
                instance = self._current(registry, previous)
            except Exception as err:
                if previous is None:
                    raise
                if not self._failed(err, previous):
                    del self._picked[registry]
                    raise
                instance = previous
            self._picked[registry] = (now, instance)
            return instance

    def _current(self, registry: asset.Directory, previous: Named | None) -> Named:
        """The pick now (``previous``: the one served so far, if any)."""
        raise NotImplementedError

    def _failed(self, err: Exception, previous: Named) -> bool:
        """Log that reading the registry failed with ``err``; whether ``previous`` may keep serving."""
        raise NotImplementedError


class Refreshing(_Refreshed):
    """Latest generation of a project (or of one of its releases), re-checked every ``refresh`` seconds.

    Args:
        project: Project to serve.
        release: Release to serve the latest generation of (default: the newest release with a generation).
        refresh: Seconds between registry checks (default 10).
    """

    def __init__(self, project: str, release: str | None = None, refresh: float = 10.0):
        super().__init__(refresh)
        self._project: str = project
        self._release: str | None = release

    def __reduce__(self):
        return self.__class__, (self._project, self._release, self._refresh)

    def __repr__(self):
        return f'Refreshing({self._project!r}, release={self._release!r}, refresh={self._refresh})'

    def _current(self, registry: asset.Directory, previous: Named | None) -> Named:
        instance = self.pick(registry)
        if previous is not None and instance != previous:
            LOGGER.info('Switching from %s to %s', previous, instance)
        return instance

    def _failed(self, err: Exception, previous: Named) -> bool:
        if isinstance(err, GONE):
            LOGGER.error('No generation left to serve (%s was retired or deleted): %s', previous, err)
            return False
        LOGGER.warning('Registry check failed, still serving %s: %s', previous, err)
        return True

    def pick(self, registry: asset.Directory) -> Named:
        """The latest generation now, as a model instance (listings only: nothing older is looked up)."""
        project = registry.get(self._project)
        releases = [self._release] if self._release else reversed(project.list())
        for release in releases:
            try:
                generation = project.get(release).list().last
            except asset.Level.Listing.Empty:
                continue
            return _instance(registry, (self._project, str(release), int(generation)))
        raise asset.Level.Listing.Empty(f'No trained generation of {self._project} in {registry}')


def _aliases(registry: asset.Directory):
    """The aliases of the registry behind a ForML directory (a forml-s3 registry provider)."""
    provider = getattr(registry, 'registry', None)
    for _ in range(3):  # the gateway hands selectors its registry wrapped read-only (ForML 0.93 Dispatcher.Frozen)
        if hasattr(provider, 'aliases') or not hasattr(provider, '_registry'):
            break
        provider = provider._registry
    found = getattr(provider, 'aliases', None)
    if found is None:
        raise forml.InvalidError(
            f'Alias selectors need a forml-s3 registry (provider "s3"), not {provider!r}: aliases live in its bucket'
        )
    return found


def _first(
    chain: typing.Sequence[application.Selector], registry: asset.Directory, context: typing.Any, stats: typing.Any
) -> asset.Instance:
    """The pick of the first selector of ``chain`` that resolves."""
    failures = []
    for selector in chain:
        try:
            return selector.select(registry, context, stats)
        except Exception as err:  # any selector's failure to resolve moves on to the next one
            LOGGER.debug('%r did not resolve (%s), trying the next selector', selector, err)
            failures.append(f'{selector!r}: {err}')
    raise forml.MissingError('No selector resolved: ' + '; '.join(failures))


class Alias(_Refreshed):
    """The generation an alias points to (``forml-s3 alias set``), re-read every ``refresh`` seconds.

    Moving the alias changes what is served within one interval, without a restart; reading it costs one GET of a
    small object per interval. If the registry cannot be read at refresh time, the last good pick keeps serving
    (and the failure is logged); an alias that does not exist (yet) raises ``forml.MissingError`` until it does -
    wrap it in :class:`Fallback` for a cold start.

    Args:
        project: Project whose alias to follow.
        name: Alias name (``champion``, ``production``, ...).
        refresh: Seconds between reads of the alias (default 10).
    """

    def __init__(self, project: str, name: str, refresh: float = 10.0):
        super().__init__(refresh)
        from .model import names  # the selector module stays light for descriptors

        self._project: str = str(names.project(project))
        self._name: str = names.alias(name)

    def __reduce__(self):
        return self.__class__, (self._project, self._name, self._refresh)

    def __repr__(self):
        return f'Alias({self._project!r}, {self._name!r}, refresh={self._refresh})'

    def _current(self, registry: asset.Directory, previous: Named | None) -> Named:
        target = _aliases(registry).resolve(self._project, self._name)
        pick = (self._project, target.release, target.generation)
        if previous is not None and pick == previous.name:
            return previous
        if previous is not None:
            LOGGER.info('Alias %s of %s moved: switching from %s to %s', self._name, self._project,
                        previous.name, pick)  # fmt: skip
        return _instance(registry, pick)

    def _failed(self, err: Exception, previous: Named) -> bool:
        LOGGER.warning('Could not read alias %s of %s, still serving %s: %s', self._name, self._project,
                       previous.name, err)  # fmt: skip
        return True


class Fallback(application.Selector):
    """The first of several selectors that resolves: a cold-start / fallback chain.

    Example: ``Fallback(Alias('churn', 'champion'), Refreshing('churn'))`` serves the champion once it is set and the
    latest generation until then (or whenever the alias cannot be resolved and has never been).

    Args:
        primary: The selector to try first.
        fallbacks: Those to try next, in order.
    """

    def __init__(self, primary: application.Selector, *fallbacks: application.Selector):
        self._chain: tuple[application.Selector, ...] = (primary, *fallbacks)
        if len(self._chain) < 2:
            raise ValueError('Fallback needs at least one fallback selector')

    def __reduce__(self):
        return self.__class__, self._chain

    def __repr__(self):
        return f'Fallback({", ".join(map(repr, self._chain))})'

    def select(self, registry: asset.Directory, context: typing.Any, stats: 'runtime.Stats') -> asset.Instance:
        return _first(self._chain, registry, context, stats)


class Split(application.Selector):
    """Weighted traffic across aliases (or any selectors), sticky per request key.

    A request carrying the key (a request parameter of ForML's ``Generic`` application, e.g. ``?user=42``, or a
    field of a custom descriptor's context) always lands on the same variant, by a deterministic hash of its value:
    one user keeps one model across requests, gateways and restarts. A request without the key gets a weighted
    random draw. To shift traffic, move the aliases (``forml-s3 alias set``): no descriptor is redeployed. A
    variant that cannot be resolved (an alias not set yet) passes its requests to the next variant that can.

    Args:
        variants: Alias name (of ``project``) or selector -> weight (positive; normalised to sum to 1).
        project: The project of the aliases named by string.
        key: The request parameter (or context field) that makes assignment sticky.
        refresh: Refresh interval of the aliases named by string.
    """

    def __init__(
        self,
        variants: typing.Mapping[typing.Any, float],
        project: str | None = None,
        key: str = 'user',
        refresh: float = 10.0,
    ):
        if not variants:
            raise ValueError('Split needs at least one variant')
        weights = {}
        for variant, weight in variants.items():
            if not isinstance(weight, int | float) or isinstance(weight, bool) or weight <= 0:
                raise ValueError(f'Weight of {variant!r} must be a positive number, not {weight!r}')
            if isinstance(variant, str):
                if project is None:
                    raise ValueError(f'Variant {variant!r} names an alias: give the project (project=...)')
                variant = Alias(project, variant, refresh)
            elif not isinstance(variant, application.Selector):
                raise ValueError(f'Variant {variant!r} is neither an alias name nor a selector')
            weights[variant] = float(weight)
        total = sum(weights.values())
        self._variants: tuple[tuple[application.Selector, float], ...] = tuple(
            (v, w / total) for v, w in weights.items()
        )
        self._args = (dict(variants), project, key, refresh)
        self._key: str = key

    def __reduce__(self):
        return self.__class__, self._args

    def __repr__(self):
        return f'Split({", ".join(f"{v!r}: {w:.3g}" for v, w in self._variants)}, key={self._key!r})'

    def point(self, context: typing.Any) -> float:
        """Where in [0, 1) a request falls: a hash of its key's value, or a random draw without one."""
        value = None
        if isinstance(context, typing.Mapping):
            params = context.get('params')
            value = params.get(self._key) if isinstance(params, typing.Mapping) else None
            if value is None:
                value = context.get(self._key)
        if value is None or value == '':
            return random.random()
        digest = hashlib.sha256(f'{self._key}={value}'.encode()).digest()
        return int.from_bytes(digest[:8], 'big') / 2**64

    def select(self, registry: asset.Directory, context: typing.Any, stats: 'runtime.Stats') -> asset.Instance:
        point, start = self.point(context), 0.0
        chosen = len(self._variants) - 1
        for index, (_, weight) in enumerate(self._variants):
            start += weight
            if point < start:
                chosen = index
                break
        order = self._variants[chosen:] + self._variants[:chosen]
        return _first([v for v, _ in order], registry, context, stats)
