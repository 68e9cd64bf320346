"""Where bytes move: one narrow store interface (:class:`Store`, with capability flags) and one class per backend.

=========================  ============================  ==================================================
URL                        class                         exclusive create (what a commit marker relies on)
=========================  ============================  ==================================================
``s3://bucket/prefix``     :class:`.s3.S3Store`           ``If-None-Match: *`` (any 412 means "exists")
``gs://bucket/prefix``     ``.gcs.GCSStore``              ``ifGenerationMatch=0``
``az://container/prefix``  ``.azure.AzureStore``          ``If-None-Match: *``
``file:///path``           :class:`.local.LocalStore`     hard link (``EEXIST``)
``memory://name``          :class:`.memory.MemoryStore`   a lock (one process sees it)
=========================  ============================  ==================================================

:func:`open_store` is the one entry: it parses the URL, refuses what no backend serves (and, on S3, a storage
option nothing takes: :func:`forml_s3.storage.options.check_s3`), and imports a backend's client library only when a URL
needs it.
"""

import importlib
import typing
import urllib.parse

import forml

from .base import Changed, Entry, Store, local_failure

__all__ = ['Changed', 'Entry', 'Store', 'local_failure', 'open_store', 'SCHEMES']

SCHEMES: dict[str, str] = {
    's3': 's3:S3Store',
    's3a': 's3:S3Store',
    'gs': 'gcs:GCSStore',
    'gcs': 'gcs:GCSStore',
    'az': 'azure:AzureStore',
    'abfs': 'azure:AzureStore',
    'abfss': 'azure:AzureStore',
    'file': 'local:LocalStore',
    'memory': 'memory:MemoryStore',
}
"""The URL schemes forml-s3 serves, and the class serving each (``module:Class`` in this package)."""


def open_store(
    url: str, storage_options: typing.Mapping[str, typing.Any] | None = None, *, single_writer: bool = False
) -> Store:
    """The store at ``url`` (``forml.InvalidError`` for a URL no backend serves).

    ``single_writer`` admits any other fsspec protocol (and an S3 server that ignores ``If-None-Match``), with no
    protection against concurrent writers.
    """
    url = str(url)
    parsed = urllib.parse.urlsplit(url)
    scheme = parsed.scheme.lower()
    if parsed.username or parsed.password:
        raise forml.InvalidError(
            'Credentials in the registry URL are not supported: use storage_options or the AWS chain'
        )
    if not scheme:
        raise forml.InvalidError(
            f'Registry url {url!r} has no scheme: write s3://bucket/prefix, gs://..., az://..., file:///absolute/path '
            'or memory://name'
        )
    target = SCHEMES.get(scheme)
    if target is None:
        if not single_writer:
            raise forml.InvalidError(
                f'Registry url {url!r}: the {scheme}:// protocol is not supported (supported: '
                f'{", ".join(sorted(s + "://" for s in SCHEMES))}); set single_writer = true to use it anyway, '
                'with no protection against concurrent writers'
            )
        from .unguarded import UnguardedStore

        store = UnguardedStore(url, storage_options)
        store.single_writer = True
        return store
    if scheme == 'file':
        import os

        root = os.path.abspath(os.path.expanduser(parsed.netloc + parsed.path))
    else:
        root = (parsed.netloc + parsed.path).rstrip('/')
        if not parsed.netloc:
            raise forml.InvalidError(f'Invalid registry url {url!r}: expected {scheme}://bucket[/prefix]')
    module, _, name = target.partition(':')
    if module == 's3':
        from . import options  # imports s3fs: only for an S3 URL

        options.check_s3(storage_options or {})
    try:
        backend = importlib.import_module(f'.{module}', __name__)
    except ImportError as err:
        extra = {'gcs': 'gcs', 'azure': 'azure'}.get(module, module)
        raise forml.MissingError(
            f'Registry url {url!r} needs the {extra} extra: pip install "forml-s3[{extra}]" ({err})'
        ) from None
    store = getattr(backend, name)(root, storage_options)
    store.single_writer = single_writer
    return store
