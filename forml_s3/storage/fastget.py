"""Ranged downloads and whole small reads of S3 objects through obstore (Rust's ``object_store``), behind
:class:`S3Store.download` and :class:`S3Store.read`.

Measured on SeaweedFS on 127.0.0.1 (docs/benchmarks.md), a 256 MiB object in 16 MiB ranged GETs, 8 in flight, comes
about twice as fast through obstore as through botocore's s3transfer, and three to four times as fast as through
aiobotocore (s3fs's client), whose body reading costs Python work per network chunk on one event loop thread; a
6 MiB pack in one GET, hashed as it lands, took 20 ms through aiobotocore plus 11 ms to hash the file after. So the
downloads of a known size (states, packs, packages) and the reads of whole objects (markers) go through obstore,
and everything else (listings, writes, conditional requests, tags) stays on s3fs/aiobotocore.

The obstore client is built from the store's botocore client, never from the user's options a second time: the
same endpoint (``AWS_ENDPOINT_URL`` and the rest resolved by botocore), the same region, and the credentials of the
botocore client itself (a provider asking it for frozen credentials, so profiles, SSO, assumed roles and their
refreshes are botocore's). Options obstore would not honour the same way (anything beyond credentials, endpoint,
region, timeouts, retries and the server-side encryption of writes, e.g. ``requester_pays``, ``anon``, SSL or
proxy settings) keep the download on aiobotocore (:func:`client` returns None), as does a missing obstore. A
download or read that fails through obstore for any reason but a missing object or a short one is tried once more
through aiobotocore (which follows e.g. a region redirect obstore does not), and the store stays on aiobotocore
after it.
"""

import concurrent.futures
import contextlib
import datetime
import errno
import logging
import os
import threading
import typing
import weakref

if typing.TYPE_CHECKING:
    import fsspec

    from . import digest

LOGGER = logging.getLogger(__name__)

CHUNK = 256 * 2**10
"""How much of a part's body obstore hands over at a time (written to the file at its offset as it comes). Larger
chunks leave more memory with the allocator after the download (1 MiB: ~20 MiB more at the peak of a 256 MiB read,
when the state's bytes are read from the cache); smaller ones cost more Python work per byte."""
TIMEOUT = '300s'
"""The longest one ranged GET (at most a part) may take, body included."""
CREDENTIALS_FOR = datetime.timedelta(minutes=5)
"""How long obstore keeps the credentials before it asks the botocore client again (which refreshes its own)."""

_OPTIONS = {'key', 'secret', 'token', 'endpoint_url', 'profile', 'use_listings_cache', 'skip_instance_cache'}
_CLIENT = {'region_name', 'endpoint_url'}
_CONFIG = {'retries', 'connect_timeout', 'read_timeout', 'max_pool_connections'}
_CONFIG_ANY = {'request_checksum_calculation', 'response_checksum_validation'}
_ADDITIONAL = {'ServerSideEncryption', 'SSEKMSKeyId'}
"""The mapped s3fs options (:func:`forml_s3.options.s3_kwargs`) a download through obstore honours the same way."""


class Shorter(Exception):
    """The object is shorter than the size asked for."""


def honoured(kwargs: typing.Mapping[str, typing.Any]) -> bool:
    """Whether a download through obstore honours every one of these (mapped) s3fs options."""
    return (
        set(kwargs) <= _OPTIONS | {'client_kwargs', 'config_kwargs', 's3_additional_kwargs'}
        and set(kwargs.get('client_kwargs') or {}) <= _CLIENT
        and set(kwargs.get('config_kwargs') or {}) <= _CONFIG | _CONFIG_ANY
        and set(kwargs.get('s3_additional_kwargs') or {}) <= _ADDITIONAL
    )


_CLIENTS: 'weakref.WeakKeyDictionary[typing.Any, dict[tuple[int, str, str], typing.Any]]' = weakref.WeakKeyDictionary()
"""The clients made, by s3fs file system (a store keeps one per process; fsspec shares one between stores of the
same options and thread), process, bucket and options: the stores of a bucket that share a file system share one
client (its set-up is ~10 ms and a few MiB)."""
_LOCK = threading.Lock()


def _forked() -> None:
    """In a forked child: a lock another thread held at the fork would never be let go of, and the clients are the
    parent's (their runtime's threads did not come along)."""
    global _LOCK
    _LOCK = threading.Lock()
    _CLIENTS.clear()


os.register_at_fork(after_in_child=_forked)


def client(fs: 'fsspec.AbstractFileSystem', bucket: str, kwargs: typing.Mapping[str, typing.Any]) -> typing.Any:
    """An obstore ``S3Store`` of ``bucket`` on the endpoint, region and credentials of the s3fs file system's
    botocore client (one per file system, process and bucket); None if obstore is missing or would not honour the
    options."""
    key = (os.getpid(), bucket, repr(sorted(kwargs.items())))
    with _LOCK:
        made = _CLIENTS.setdefault(fs, {})
        if key not in made:
            made[key] = _client(fs, bucket, kwargs)
        return made[key]


def _client(fs: 'fsspec.AbstractFileSystem', bucket: str, kwargs: typing.Mapping[str, typing.Any]) -> typing.Any:
    if not honoured(kwargs):
        return None
    try:
        from obstore.store import S3Store  # optional, and lazy
    except ImportError:
        return None
    from fsspec.asyn import sync

    botocore = fs.s3  # the connected client (s3fs makes it on first use)
    credentials = getattr(getattr(botocore, '_request_signer', None), '_credentials', None)
    if credentials is None:  # anonymous access: obstore would sign with whatever it finds itself
        return None

    loop = fs.loop  # (not the file system itself: the client made here must not keep its key alive)

    def provide() -> dict[str, typing.Any]:
        frozen = sync(loop, credentials.get_frozen_credentials)
        return {
            'access_key_id': frozen.access_key,
            'secret_access_key': frozen.secret_key,
            'token': frozen.token,
            'expires_at': datetime.datetime.now(datetime.UTC) + CREDENTIALS_FOR,
        }

    config = kwargs.get('config_kwargs') or {}
    retries = config.get('retries') or {}
    options: dict[str, typing.Any] = {'timeout': TIMEOUT}
    if config.get('connect_timeout') is not None:
        options['connect_timeout'] = f'{float(config["connect_timeout"])}s'
    endpoint = botocore.meta.endpoint_url
    if endpoint.startswith('http://'):
        options['allow_http'] = True
    retry: dict[str, typing.Any] = {}
    if 'max_attempts' in retries:
        retry['max_retries'] = int(retries['max_attempts'])
    return S3Store(
        bucket,
        endpoint=endpoint,
        region=botocore.meta.region_name or 'us-east-1',
        credential_provider=provide,
        client_options=options,
        retry_config=retry or None,
    )


def download(
    store: typing.Any, key: str, fd: int, size: int, follower: 'digest.Follower', part_size: int, parallel: int
) -> None:
    """Ranged GETs of ``part_size``, ``parallel`` in flight, streamed into ``fd`` at their offsets and reported to
    ``follower`` as they land. Raises FileNotFoundError (no such object), :class:`Shorter`, or OSError."""
    import obstore

    from . import digest

    def part(start: int, end: int) -> None:
        offset = start
        with _translated(key, ranged=True):
            result = obstore.get(store, key, options={'range': (start, end)})
            for chunk in result.stream(min_chunk_size=CHUNK):
                if offset + len(chunk) > end:
                    raise OSError(errno.EIO, f'{key}: more bytes than the range {start}-{end - 1} asked for')
                digest.write_at(fd, chunk, offset)
                follower.landed(offset, offset + len(chunk))
                offset += len(chunk)
                del chunk  # (else the loop holds it while obstore gathers the next one)
        if offset != end:
            raise Shorter(key)

    with concurrent.futures.ThreadPoolExecutor(parallel, thread_name_prefix='forml-s3-get') as pool:
        futures = [pool.submit(part, start, end) for start, end in digest.spans(size, part_size, parallel)]
        try:
            for future in concurrent.futures.as_completed(futures):
                future.result()
        except BaseException:
            for future in futures:  # parts not started yet stay unstarted
                future.cancel()
            raise


def read(store: typing.Any, key: str) -> bytes:
    """The whole object in one GET (a marker, say: ~1 ms on SeaweedFS on 127.0.0.1, where aiobotocore's GET takes
    ~4.5 ms of Python work). Raises FileNotFoundError (no such object) or OSError."""
    import obstore

    with _translated(key):
        return bytes(obstore.get(store, key).bytes())


@contextlib.contextmanager
def _translated(key: str, *, ranged: bool = False) -> typing.Iterator[None]:
    """obstore's errors as the store expects them: no such object is FileNotFoundError, a range the object ends
    before (``ranged``) :class:`Shorter`, anything else OSError (which the store retries through aiobotocore)."""
    from obstore import exceptions

    try:
        yield
    except exceptions.NotFoundError as err:
        raise FileNotFoundError(errno.ENOENT, f'No such object: {key}') from err
    except exceptions.BaseError as err:
        if ranged and _unsatisfiable(err):  # the object ends before this part starts
            raise Shorter(key) from None
        raise OSError(errno.EIO, f'{key}: {_first_line(err)}') from err


def _unsatisfiable(err: BaseException) -> bool:
    """A 416 (Range Not Satisfiable) from the server, or obstore's own finding that the range is past the end."""
    text = str(err)
    return '416' in text or 'InvalidRange' in text or 'out of bounds' in text.lower() or 'not satisfiable' in text


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
