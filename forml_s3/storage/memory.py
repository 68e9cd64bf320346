"""fsspec's in-memory file system (``memory://``, for tests and trials): one per process, so a lock makes its
exclusive create atomic."""

import errno
import threading

from . import base

_LOCK = threading.Lock()
"""Serialises exclusive creates on the (process-global) memory file system."""


class MemoryStore(base.Store):
    """A registry root in this process's memory: ``memory://name``."""

    protocol = 'memory'
    exclusive_create = True  # within the one process that can see it

    def create(self, path: str, data: bytes) -> None:
        with self._boundary('create', path), _LOCK:
            if self.fs.exists(path):
                raise FileExistsError(errno.EEXIST, f'{self.uri(path)} exists')
            self.fs.pipe_file(path, data)
