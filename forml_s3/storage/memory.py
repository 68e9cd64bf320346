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
    conditional_write = True

    def create(self, path: str, data: bytes) -> None:
        with self._boundary('create', path), _LOCK:
            if self.fs.exists(path):
                raise FileExistsError(errno.EEXIST, f'{self.url_of(path)} exists')
            self.fs.pipe_file(path, data)

    def get(self, path: str) -> tuple[bytes, str]:
        with self._boundary('read', path):
            data = self.fs.cat_file(path)
        return data, base.content_version(data)

    def replace(self, path: str, data: bytes, version: str | None) -> None:
        with self._boundary('update', path), _LOCK:
            try:
                current = base.content_version(self.fs.cat_file(path))
            except FileNotFoundError:
                current = None
            if current != version:
                raise base.Changed(errno.EEXIST, f'{self.url_of(path)} exists or changed meanwhile')
            self.fs.pipe_file(path, data)
