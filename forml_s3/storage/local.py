"""Local disk (``file://``, including shared network file systems): atomic writes by temp file + rename, exclusive
create by a hard link (``link(2)`` fails with ``EEXIST``, atomically, also on NFS)."""

import contextlib
import errno
import fcntl
import os
import pathlib
import shutil
import tempfile
import typing
import uuid

from . import base, digest

TEMP_PREFIX = '.tmp-'
"""Names of writes in progress (never listed)."""
LOCK_PREFIX = '.lock-'
"""Names of the lock files of compare-and-swap updates (never listed)."""
HIDDEN = (TEMP_PREFIX, LOCK_PREFIX)


class LocalStore(base.Store):
    """A registry root on a local or shared file system: ``file:///path``."""

    protocol = 'file'
    exclusive_create = True
    conditional_write = True
    on_local_disk = True

    def listdir(self, prefix: str) -> list[base.Entry]:
        with self._boundary('list', prefix):
            try:
                with os.scandir(prefix) as found:
                    return [
                        base.Entry(e.name, (st := e.stat()).st_size, f'{st.st_size}-{st.st_mtime_ns}', st.st_mtime)
                        for e in found
                        if e.is_file() and not e.name.startswith(HIDDEN)
                    ]
            except (FileNotFoundError, NotADirectoryError):
                return []

    def walk(self, prefix: str) -> typing.Iterator[tuple[str, base.Entry]]:
        for path, entry in super().walk(prefix):
            if not entry.name.startswith(HIDDEN):
                yield path, entry

    def write(self, path: str, data: base.Data, *, tags: base.Labels = None, metadata: base.Labels = None) -> None:
        with self._boundary('write', path):
            _write(path, data, exclusive=False)

    def create(self, path: str, data: bytes) -> None:
        with self._boundary('create', path):
            _write(path, data, exclusive=True)

    def get(self, path: str) -> tuple[bytes, str]:
        with self._boundary('read', path):
            data = pathlib.Path(path).read_bytes()
        return data, base.content_version(data)

    def replace(self, path: str, data: bytes, version: str | None) -> None:
        """Under an exclusive ``flock`` of a lock file beside the object (every updater takes it; ``flock`` is
        honoured across processes, and over NFS as a POSIX lock), compare the content's hash, then rename."""
        target = pathlib.Path(path)
        with self._boundary('update', path):
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target.with_name(f'{LOCK_PREFIX}{target.name}'), os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:
                    current = base.content_version(target.read_bytes())
                except FileNotFoundError:
                    current = None
                if current != version:
                    raise base.Changed(errno.EEXIST, f'{self.url_of(path)} exists or changed meanwhile')
                _write(path, data, exclusive=False)
            finally:
                os.close(fd)  # releases the lock


def _write(path: str, data: bytes | pathlib.Path, *, exclusive: bool) -> None:
    """Write via a temp file in the same directory, then rename (or hard-link when exclusive) into place."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f'{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-', dir=target.parent)
    try:
        with os.fdopen(fd, 'wb') as file:
            if isinstance(data, pathlib.Path):
                with data.open('rb') as source:
                    shutil.copyfileobj(source, file, digest.WRITE_SLICE)
            else:
                digest.write_all(file, data)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(temp, target)  # atomic and exclusive: FileExistsError if the target exists
        else:
            os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
