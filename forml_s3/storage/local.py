"""Local disk (``file://``, including shared network file systems): atomic writes by temp file + rename, exclusive
create by a hard link (``link(2)`` fails with ``EEXIST``, atomically, also on NFS)."""

import contextlib
import os
import pathlib
import shutil
import tempfile
import typing
import uuid

from . import base

TEMP_PREFIX = '.tmp-'
"""Names of writes in progress (never listed)."""


class LocalStore(base.Store):
    """A registry root on a local or shared file system: ``file:///path``."""

    protocol = 'file'
    exclusive_create = True

    def listdir(self, prefix: str) -> list[base.Entry]:
        with self._boundary('list', prefix):
            try:
                with os.scandir(prefix) as found:
                    return [
                        base.Entry(e.name, (st := e.stat()).st_size, f'{st.st_size}-{st.st_mtime_ns}', st.st_mtime)
                        for e in found
                        if e.is_file() and not e.name.startswith(TEMP_PREFIX)
                    ]
            except (FileNotFoundError, NotADirectoryError):
                return []

    def walk(self, prefix: str) -> typing.Iterator[tuple[str, base.Entry]]:
        for path, entry in super().walk(prefix):
            if not entry.name.startswith(TEMP_PREFIX):
                yield path, entry

    def write(
        self,
        path: str,
        data: bytes | pathlib.Path,
        *,
        tags: typing.Mapping[str, str] | None = None,
        metadata: typing.Mapping[str, str] | None = None,
    ) -> None:
        with self._boundary('write', path):
            _write(path, data, exclusive=False)

    def create(self, path: str, data: bytes) -> None:
        with self._boundary('create', path):
            _write(path, data, exclusive=True)


def _write(path: str, data: bytes | pathlib.Path, *, exclusive: bool) -> None:
    """Write via a temp file in the same directory, then rename (or hard-link when exclusive) into place."""
    target = pathlib.Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f'{TEMP_PREFIX}{uuid.uuid4().hex[:8]}-', dir=target.parent)
    try:
        with os.fdopen(fd, 'wb') as file:
            if isinstance(data, pathlib.Path):
                with data.open('rb') as source:
                    shutil.copyfileobj(source, file, 8 * 2**20)
            else:
                file.write(data)
            file.flush()
            os.fsync(file.fileno())
        if exclusive:
            os.link(temp, target)  # atomic and exclusive: FileExistsError if the target exists
        else:
            os.replace(temp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
