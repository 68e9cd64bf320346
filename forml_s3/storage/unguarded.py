"""Any other fsspec protocol, allowed only by ``single_writer = true``: no exclusive create exists there, so a
commit checks and writes under a lock of this process only. Two writers (processes or machines) racing for the same
release or generation can both "commit" it, the later silently overwriting the earlier: the setting says so."""

import errno
import threading

from . import base

_LOCK = threading.Lock()


class UnguardedStore(base.Store):
    """A registry root on a protocol without a verified exclusive create (one writer at a time, by agreement)."""

    exclusive_create = False

    def __init__(self, protocol: str, root: str, storage_options=None):
        super().__init__(root, storage_options)
        self.protocol = protocol

    def create(self, path: str, data: bytes) -> None:
        with self._boundary('create', path), _LOCK:
            if self.fs.exists(path):
                raise FileExistsError(errno.EEXIST, f'{self.uri(path)} exists')
            self.fs.pipe_file(path, data)
