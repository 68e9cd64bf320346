"""Any other fsspec protocol, allowed only by ``single_writer = true``: no exclusive create exists there, so a
commit checks and writes under a lock of this process only. Two writers (processes or machines) racing for the same
release or generation can both "commit" it, the later silently overwriting the earlier: the setting says so.

The URL is read the way fsspec reads it for that protocol (``ftp://host:port/path`` gives the client its host and
a root of ``/path``), and the storage options are added to what the URL says.
"""

import errno
import threading
import typing

import forml

from . import base

_LOCK = threading.Lock()


class UnguardedStore(base.Store):
    """A registry root on a protocol without a verified exclusive create (one writer at a time, by agreement)."""

    exclusive_create = False

    def __init__(self, url: str, storage_options: typing.Mapping[str, typing.Any] | None = None):
        import fsspec  # only this (rare) store needs fsspec's registry at construction

        self.protocol = url.partition('://')[0].lower()
        try:
            cls = fsspec.get_filesystem_class(self.protocol)
        except ValueError:
            raise forml.InvalidError(f'Registry url {url!r}: fsspec knows no {self.protocol}:// protocol') from None
        except ImportError as err:
            raise forml.MissingError(f'Registry url {url!r} needs a package fsspec asks for: {err}') from None
        super().__init__(
            cls._strip_protocol(url).rstrip('/') or '/', {**cls._get_kwargs_from_urls(url), **(storage_options or {})}
        )
        self._url = url.rstrip('/')
        self._cls = cls

    @property
    def url(self) -> str:
        return self._url

    def _connect(self):
        return self._cls(**self._options)

    def create(self, path: str, data: bytes) -> None:
        with self._boundary('create', path), _LOCK:
            if self.fs.exists(path):
                raise FileExistsError(errno.EEXIST, f'{self.url_of(path)} exists')
            self.fs.pipe_file(path, data)
