"""A model-selection strategy that follows newly trained generations without a restart.

``Refreshing`` picks the latest generation of a project (optionally of one release) and re-checks the
registry at most every ``refresh`` seconds, on the next request after the interval: a retrained model is
served within one interval, and the check costs a listing or two (one LIST each). If the registry cannot
be reached at refresh time, the last good pick keeps serving and the failure is logged.

Example descriptor (``application.py``)::

    from forml import application
    from forml_s3.selector import Refreshing

    application.setup(application.Generic('forml-s3-demo', selector=Refreshing('forml-s3-demo', refresh=10)))
"""

import logging
import threading
import time
import typing

from forml import application
from forml.io import asset

if typing.TYPE_CHECKING:
    from forml import runtime

LOGGER = logging.getLogger(__name__)


class Refreshing(application.Selector):
    """Latest generation of a project (or of one of its releases), re-checked every ``refresh`` seconds.

    Args:
        project: Project to serve.
        release: Release to serve the latest generation of (default: the newest release with a generation).
        refresh: Seconds between registry checks (default 10).
    """

    def __init__(self, project: str, release: str | None = None, refresh: float = 10.0):
        if refresh < 0:
            raise ValueError(f'Refresh interval must not be negative: {refresh}')
        self._project: str = project
        self._release: str | None = release
        self._refresh: float = float(refresh)
        self._lock: threading.Lock = threading.Lock()
        self._picked: dict[asset.Directory, tuple[float, asset.Instance]] = {}

    def __reduce__(self):
        return self.__class__, (self._project, self._release, self._refresh)

    def __repr__(self):
        return f'Refreshing({self._project!r}, release={self._release!r}, refresh={self._refresh})'

    def select(self, registry: asset.Directory, context: typing.Any, stats: 'runtime.Stats') -> asset.Instance:
        with self._lock:
            now = time.monotonic()
            picked = self._picked.get(registry)
            if picked is None or now - picked[0] >= self._refresh:
                try:
                    instance = self.pick(registry)
                except Exception as err:
                    if picked is None:
                        raise
                    LOGGER.warning('Registry check failed, still serving %s: %s', picked[1], err)
                    instance = picked[1]
                if picked is not None and instance != picked[1]:
                    LOGGER.info('Switching from %s to %s', picked[1], instance)
                self._picked[registry] = picked = (now, instance)
            return picked[1]

    def pick(self, registry: asset.Directory) -> asset.Instance:
        """The latest generation now, as a model instance."""
        project = registry.get(self._project)
        releases = [self._release] if self._release else reversed(project.list())
        for release in releases:
            try:
                generation = project.get(release).list().last
            except asset.Level.Listing.Empty:
                continue
            return asset.Instance(project=self._project, release=release, generation=generation, registry=registry)
        raise asset.Level.Listing.Empty(f'No trained generation of {self._project} in {registry}')
