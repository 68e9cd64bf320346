"""Google Cloud Storage (``gs://bucket/prefix``) over gcsfs's JSON API client.

* exclusive create is the generation precondition ``ifGenerationMatch=0`` on the upload (gcsfs ``mode="create"``):
  GCS answers 412 to every racer but the first, which gcsfs raises as ``FileExistsError``; never exists-then-write;
* listings come straight from the objects list, one request per 1,000 names, never from gcsfs's listings cache
  (another process's commit would stay invisible there);
* objects carry user metadata (``head`` returns it) but no tags a lifecycle rule could filter on, so
  :attr:`~GCSStore.object_tags` and :attr:`~GCSStore.lifecycle` are off: retired generations are removed by
  ``forml-s3`` itself, not by bucket rules (see ``docs/backends.md``).

gcsfs's ``GCSFileSystem`` is used from ``gcsfs.core``, not the package's default export: that one (unless
``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false``) first asks a gRPC API for each bucket's layout, which emulators do not
serve (a 60 s wait per bucket) and which standard buckets do not need. Credentials follow gcsfs: ``token`` in
``storage_options``, else Google's default chain (``GOOGLE_APPLICATION_CREDENTIALS``, ``gcloud auth
application-default login``, the metadata server).
"""

import asyncio
import datetime
import errno
import json
import pathlib
import typing
import urllib.parse

import forml

from . import base, digest, reach

PAGE = 1000
"""Names per listing request (the JSON API's maximum)."""
RANGED_FROM = 16 * 2**20
"""Objects of a known size above this come in parallel ranged GETs (gcsfs's concurrent download); smaller ones in
one streaming GET (the concurrent path first asks for the object's size, two more requests)."""


class GCSStore(base.Store):
    """A registry root in a Google Cloud Storage bucket: ``gs://bucket[/prefix]``."""

    protocol = 'gs'
    exclusive_create = True
    conditional_write = True
    user_metadata = True
    denied_hint = (
        'check the credentials (storage_options token, GOOGLE_APPLICATION_CREDENTIALS or `gcloud auth '
        'application-default login`) and the bucket IAM (roles/storage.objectAdmin)'
    )

    lifecycle_advice = (
        'GCS rules cannot filter on object tags or metadata, so none can tell a retired generation from a live one; '
        '`forml-s3 gc --retired-older-than DAYS` deletes retired generations, and abandoned uploads (docs/backends.md)'
    )

    def _connect(self) -> typing.Any:
        # never fsspec's listings cache: listings are read fresh by :meth:`listdir`, and gcsfs would otherwise
        # answer ``info``/``exists`` from a stale listing
        return _file_system()(**{**self._options, 'use_listings_cache': False})

    # the JSON API, with gcsfs's session, credentials and retries ----------------------------------------
    def _api(self, method: str, template: str, *args: str, **params: typing.Any) -> typing.Any:
        """One JSON API call (``template`` is gcsfs's: ``b/{}/o``, formatted with the quoted ``args``)."""
        return self.fs.call(method, template, *args, json_out=True, **params)

    def _objects(self, prefix: str, delimiter: str | None) -> typing.Iterator[tuple[str, dict[str, typing.Any]]]:
        """(bucket, object resource) of every object under ``prefix``, page by page; a missing bucket raises."""
        bucket, _, key = prefix.partition('/')
        key = f'{key}/' if key else ''
        token = None
        while True:
            try:
                page = self._api(
                    'GET', 'b/{}/o', bucket, prefix=key, delimiter=delimiter, maxResults=PAGE, pageToken=token
                )
            except FileNotFoundError:  # listing a prefix never 404s: only a missing bucket does
                raise forml.MissingError(
                    f'Bucket {bucket!r} does not exist (while trying to list {self.url_of(prefix)}): create it or fix '
                    'the url in the config section'
                ) from None
            for item in page.get('items', ()):
                if item['name'] != key:  # a "folder" placeholder object is not an entry
                    yield bucket, item
            token = page.get('nextPageToken')
            if not token:
                return

    def listdir(self, prefix: str) -> list[base.Entry]:
        with self._boundary('list', prefix):
            return [_entry(item) for _, item in self._objects(prefix, '/')]

    def walk(self, prefix: str) -> typing.Iterator[tuple[str, base.Entry]]:
        with self._boundary('list', prefix):
            for bucket, item in self._objects(prefix, None):
                yield f'{bucket}/{item["name"]}', _entry(item)

    def download(
        self, path: str, target: pathlib.Path, size: int | None = None, sink: digest.Sink | None = None
    ) -> None:
        with self._boundary('download', path):
            if size is not None and size > RANGED_FROM:
                self.fs.get_file(path, str(target))
            else:
                self.fs.get_file(path, str(target), concurrency=1)

    def head(self, path: str) -> tuple[int, dict[str, str]]:
        bucket, _, key = path.partition('/')
        with self._boundary('inspect', path):
            item = self._api('GET', 'b/{}/o/{}', bucket, key)
            return int(item['size']), dict(item.get('metadata') or {})

    # writing ------------------------------------------------------------------------------------------------
    def write(self, path: str, data: base.Data, *, tags: base.Labels = None, metadata: base.Labels = None) -> None:
        """One multipart upload below 50 MiB, a resumable upload (finalized whole) above; ``tags`` are not kept
        (GCS has none: :attr:`object_tags` is off)."""
        with self._boundary('write', path):
            meta = dict(metadata) if metadata else None
            if isinstance(data, pathlib.Path):
                self.fs.put_file(str(data), path, metadata=meta)
            else:
                self.fs.pipe_file(path, data, metadata=meta)

    def create(self, path: str, data: bytes) -> None:
        """``ifGenerationMatch=0``: GCS refuses the upload with 412 if any live object has the name."""
        with self._boundary('create', path):
            self.fs.pipe_file(path, data, mode='create')

    # compare-and-swap: the object's generation is its version ---------------------------------------------
    def get(self, path: str) -> tuple[bytes, str]:
        with self._boundary('read', path):
            headers, data = self.fs.call('GET', self.fs.url(path))
            return data, headers['X-Goog-Generation']

    def replace(self, path: str, data: bytes, version: str | None) -> None:
        """``ifGenerationMatch`` on one multipart upload (the generation read; ``0``: create)."""
        if version is None:
            self.create(path, data)
            return
        bucket, _, key = path.partition('/')
        boundary = '==forml-s3=='
        head = f'--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{json.dumps({"name": key})}\r\n'
        head += f'--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n'
        body = head.encode() + data + f'\r\n--{boundary}--'.encode()
        with self._boundary('update', path):
            try:
                self.fs.call(
                    'POST',
                    f'{self.fs._location}/upload/storage/v1/b/{urllib.parse.quote(bucket, safe="")}/o',
                    uploadType='multipart',
                    ifGenerationMatch=version,
                    headers={'Content-Type': f'multipart/related; boundary="{boundary}"'},
                    data=body,
                )
            except FileExistsError as err:  # gcsfs raises a 412 so
                raise base.Changed(errno.EEXIST, f'{self.url_of(path)} changed meanwhile') from err
            except FileNotFoundError as err:  # gone since it was read: not the version expected either
                raise base.Changed(errno.EEXIST, f'{self.url_of(path)} was deleted meanwhile') from err

    # errors ---------------------------------------------------------------------------------------------------
    def _translate(self, err: Exception, action: str, path: str) -> BaseException | None:
        from gcsfs import retry

        if isinstance(err, reach.Unreachable):
            retries = self.fs.connect_retries
            where, setting = f'{action} {self.url_of(path)}', 'endpoint_url (or STORAGE_EMULATOR_HOST)'
            tuning = 'connect_retries and requests_timeout'
            return forml.FailedError(reach.message(err.endpoint, where, retries, 'GCS', setting, tuning))
        code = getattr(err, 'code', None)
        if (isinstance(err, OSError) and str(err).startswith('Forbidden')) or code == 401:
            return forml.InvalidError(
                f'Access denied while trying to {action} {self.url_of(path)}: {self.denied_hint} ({err})'.splitlines()[
                    0
                ]
            )
        transient = isinstance(err, retry.HttpError) and (code == 429 or (code or 0) >= 500)
        if transient or _is_transport_error(err):
            return forml.FailedError(
                f'Could not {action} {self.url_of(path)}, retries exhausted ({err}): the registry is unchanged by this '
                'step; check the endpoint and try again'
            )
        return None


_CLASS: list[type] = []


def _file_system() -> type:
    """gcsfs's file system, failing fast on an endpoint it cannot connect to (see :mod:`.reach`): gcsfs retries every
    failure six times, 31 s and more of silence. A failed connection is retried ``connect_retries`` times (a storage
    option; default :data:`.reach.CONNECT_RETRIES`), each announced; then :class:`.reach.Unreachable` is raised, which
    gcsfs never retries. Other failures keep gcsfs's own retries."""
    if _CLASS:
        return _CLASS[0]
    import aiohttp  # the optional extra's dependencies, imported when a gs:// URL is used
    from gcsfs import retry
    from gcsfs.core import GCSFileSystem

    once = GCSFileSystem._request.__wrapped__  # one request, without gcsfs's retry loop

    class Unreachable(reach.Unreachable, retry.NonRetryableError):
        pass

    class FastGCSFileSystem(GCSFileSystem):
        def __init__(self, *args: typing.Any, connect_retries: int = reach.CONNECT_RETRIES, **kwargs: typing.Any):
            super().__init__(*args, **kwargs)
            self.connect_retries = connect_retries

        async def _request(self, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            failed = 0

            async def attempt(*args: typing.Any, **kwargs: typing.Any) -> typing.Any:
                nonlocal failed
                try:
                    return await once(self, *args, **kwargs)
                except aiohttp.ClientConnectorError as err:
                    failed += 1
                    endpoint = self._location
                    if failed > self.connect_retries:
                        raise Unreachable(endpoint) from err
                    reach.retrying(endpoint, type(err).__name__, failed, self.connect_retries)
                    raise

            return await retry.retry_request(retries=self.retries)(attempt)(*args, **kwargs)

    _CLASS.append(FastGCSFileSystem)
    return FastGCSFileSystem


def _is_transport_error(err: BaseException) -> bool:
    """A network-level failure (dropped connection, timeout) that survived gcsfs's retries."""
    return isinstance(err, asyncio.TimeoutError) or type(err).__module__.split('.')[0] == 'aiohttp'


def _entry(item: typing.Mapping[str, typing.Any]) -> base.Entry:
    """A listing entry from a JSON API object resource (``generation`` changes with every write of the name)."""
    updated = item.get('updated')
    modified = datetime.datetime.fromisoformat(updated.replace('Z', '+00:00')).timestamp() if updated else None
    return base.Entry(item['name'].rsplit('/', 1)[-1], int(item.get('size') or 0), str(item['generation']), modified)
