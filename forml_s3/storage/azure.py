"""Azure Blob Storage (``az://container/prefix``; ``abfs://``, ``abfss://`` alike) over adlfs and azure-storage-blob.

adlfs builds the account's client from ``storage_options`` (``connection_string``, ``account_name`` with
``account_key``/``sas_token``/``credential``, service principal variables, else Azure's default credential chain)
and owns its event loop; every call here goes to azure-storage-blob through that client, because adlfs's own
calls cannot do what the registry needs: its uploads always set their own metadata (no user metadata), and its
listings are cached (invalidated under a path without the container name, so even a process's own write can stay
unlisted).

* exclusive create is ``upload_blob(overwrite=False)``: ``If-None-Match: *`` on the upload (on the block list
  commit of a large one); the second writer gets 409 ``BlobAlreadyExists``, raised as ``FileExistsError``;
* listings are fresh, one request per 1,000 names (``results_per_page``), one level by the ``/`` delimiter;
* tags are blob index tags, sent in the same upload (``x-ms-tags``): an account lifecycle management policy can
  filter on them (``blobIndexMatch``), but it lives in Azure Resource Manager, not in the blob API, so
  :attr:`~AzureStore.lifecycle` is off and ``docs/backends.md`` shows the policy to set with the ``az`` CLI.
  Accounts with a hierarchical namespace have no index tags: the ``index_tags = false`` storage option turns
  them off (:attr:`~AzureStore.object_tags` then is too).
"""

import asyncio
import errno
import logging
import pathlib
import typing
import urllib.parse

import forml

from . import base, digest, reach

PAGE = 1000
"""Names per listing request."""
CONCURRENCY = 8
"""Blocks (ranges) in flight at once when a large blob moves."""


class AzureStore(base.Store):
    """A registry root in an Azure Blob Storage container: ``az://container[/prefix]``."""

    protocol = 'az'
    exclusive_create = True
    conditional_write = True
    object_tags = True
    user_metadata = True
    denied_hint = (
        'check the credentials (storage_options connection_string, account_name with account_key, sas_token or '
        'credential, or the Azure default chain: AZURE_CLIENT_ID/AZURE_TENANT_ID, managed identity, `az login`) and '
        'the role assignment (Storage Blob Data Contributor; Storage Blob Data Owner to set blob index tags)'
    )

    def __init__(self, root: str, storage_options: typing.Mapping[str, typing.Any] | None = None):
        super().__init__(root, storage_options)
        # accounts with a hierarchical namespace (ADLS Gen2) refuse blob index tags: ``index_tags = false`` there
        tags = self._options.pop('index_tags', True)
        if not isinstance(tags, bool):
            raise forml.InvalidError(f'storage_options index_tags must be true or false, not {tags!r}')
        self.object_tags = tags

    lifecycle_advice = (
        'Azure keeps lifecycle management policies per storage account, in Azure Resource Manager; set one that '
        'filters on the forml-s3 blob index tags (docs/backends.md shows it) with '
        '`az storage account management-policy create`'
    )

    def _connect(self) -> typing.Any:
        from adlfs import AzureBlobFileSystem  # the optional extra, imported when an az:// URL is used

        # the SDK logs every request and response at INFO, which ForML's logging prints: keep it to warnings unless
        # the user set a level for it
        http_log = logging.getLogger('azure.core.pipeline.policies.http_logging_policy')
        if http_log.level == logging.NOTSET:
            http_log.setLevel(logging.WARNING)
        options = {**self._options, 'use_listings_cache': False}
        retries = options.pop('connect_retries', reach.CONNECT_RETRIES)
        fs = AzureBlobFileSystem(**options)
        _fail_fast(fs.service_client, retries)
        fs.connect_retries = retries
        return fs

    def _run(self, call: typing.Callable[..., typing.Awaitable[typing.Any]], *args: typing.Any) -> typing.Any:
        """Run one coroutine of the SDK on adlfs's event loop (where its client's connections live)."""
        from fsspec.asyn import sync

        return sync(self.fs.loop, call, *args)

    def _blob(self, path: str) -> typing.Any:
        container, _, blob = path.partition('/')
        return self.fs.service_client.get_blob_client(container=container, blob=blob)

    # listing ------------------------------------------------------------------------------------------------
    def _list(self, prefix: str, delimiter: str | None) -> list[tuple[str, base.Entry]]:
        container, _, key = prefix.partition('/')
        key = f'{key}/' if key else ''
        client = self.fs.service_client.get_container_client(container)

        async def listing() -> list[tuple[str, base.Entry]]:
            if delimiter:
                found = client.walk_blobs(name_starts_with=key or None, delimiter=delimiter, results_per_page=PAGE)
            else:
                found = client.list_blobs(name_starts_with=key or None, results_per_page=PAGE)
            return [
                (f'{container}/{blob.name}', _entry(blob))
                async for blob in found
                if not blob.name.endswith('/') and hasattr(blob, 'size')  # a BlobPrefix (sub-level) has no size
            ]

        return self._run(listing)

    def listdir(self, prefix: str) -> list[base.Entry]:
        with self._boundary('list', prefix):
            return [entry for _, entry in self._list(prefix, '/')]

    def walk(self, prefix: str) -> typing.Iterator[tuple[str, base.Entry]]:
        with self._boundary('list', prefix):
            yield from self._list(prefix, None)

    # reading ------------------------------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        async def read() -> bytes:
            async with self._blob(path) as blob:
                return await (await blob.download_blob(max_concurrency=CONCURRENCY)).readall()

        with self._boundary('read', path):
            return self._run(read)

    def download(
        self, path: str, target: pathlib.Path, size: int | None = None, sink: digest.Sink | None = None
    ) -> None:
        """Ranged GETs in parallel (the SDK's chunked download), each written at its offset."""

        async def download() -> None:
            async with self._blob(path) as blob:
                stream = await blob.download_blob(max_concurrency=CONCURRENCY)
                with open(target, 'wb') as file:
                    await stream.readinto(file)

        with self._boundary('download', path):
            self._run(download)

    def head(self, path: str) -> tuple[int, dict[str, str]]:
        async def head() -> typing.Any:
            async with self._blob(path) as blob:
                return await blob.get_blob_properties()

        with self._boundary('inspect', path):
            properties = self._run(head)
            return int(properties.size), dict(properties.metadata or {})

    # writing ------------------------------------------------------------------------------------------------
    def _upload(self, path: str, data: bytes | pathlib.Path, overwrite: bool, **extra: typing.Any) -> None:
        async def upload() -> None:
            async with self._blob(path) as blob:
                if isinstance(data, pathlib.Path):
                    with data.open('rb') as source:
                        length = data.stat().st_size
                        await blob.upload_blob(
                            source, length=length, overwrite=overwrite, max_concurrency=CONCURRENCY, **extra
                        )
                else:
                    await blob.upload_blob(data, overwrite=overwrite, max_concurrency=CONCURRENCY, **extra)

        self._run(upload)

    def write(self, path: str, data: base.Data, *, tags: base.Labels = None, metadata: base.Labels = None) -> None:
        """One PUT up to 64 MiB; above, blocks in parallel and one block list commit (the blob appears whole).
        ``tags`` and ``metadata`` travel in the same request (the commit of a large one)."""
        extra: dict[str, typing.Any] = {}
        if tags and self.object_tags:
            extra['tags'] = dict(tags)
        if metadata:
            extra['metadata'] = dict(metadata)
        with self._boundary('write', path):
            self._upload(path, data, True, **extra)

    def create(self, path: str, data: bytes) -> None:
        """``If-None-Match: *``: the service refuses the upload (409) when the blob exists."""
        with self._boundary('create', path):
            self._upload(path, data, False)

    def delete(self, path: str) -> None:
        from azure.core import exceptions

        async def delete() -> None:
            async with self._blob(path) as blob:
                try:
                    await blob.delete_blob()
                except exceptions.ResourceNotFoundError as err:
                    if _code(err) == 'ContainerNotFound':
                        raise

        with self._boundary('delete', path):
            self._run(delete)

    # compare-and-swap: the blob's ETag is its version -----------------------------------------------------
    def get(self, path: str) -> tuple[bytes, str]:
        async def get() -> tuple[bytes, str]:
            async with self._blob(path) as blob:
                stream = await blob.download_blob()
                return await stream.readall(), stream.properties.etag

        with self._boundary('read', path):
            return self._run(get)

    def replace(self, path: str, data: bytes, version: str | None) -> None:
        """``If-Match`` on the ETag read (``If-None-Match: *`` to create)."""
        if version is None:
            self.create(path, data)
            return
        from azure.core import MatchConditions, exceptions

        async def swap() -> None:
            async with self._blob(path) as blob:
                try:
                    await blob.upload_blob(
                        data, overwrite=True, etag=version, match_condition=MatchConditions.IfNotModified
                    )
                except (exceptions.ResourceModifiedError, exceptions.ResourceNotFoundError) as err:
                    if _code(err) == 'ContainerNotFound':
                        raise
                    raise base.Changed(errno.EEXIST, f'{self.url_of(path)} changed meanwhile') from err

        with self._boundary('update', path):
            self._run(swap)

    # blob index tags ----------------------------------------------------------------------------------------
    def set_tags(self, path: str, tags: typing.Mapping[str, str]) -> None:
        if not self.object_tags:
            return

        async def tag() -> None:
            async with self._blob(path) as blob:
                await blob.set_blob_tags(dict(tags) or None)  # none: clears them

        with self._boundary('tag', path):
            self._run(tag)

    def get_tags(self, path: str) -> dict[str, str]:
        if not self.object_tags:
            return {}

        async def tags() -> dict[str, str]:
            async with self._blob(path) as blob:
                return dict(await blob.get_blob_tags() or {})

        with self._boundary('read tags of', path):
            return self._run(tags)

    # errors ---------------------------------------------------------------------------------------------------
    def _translate(self, err: Exception, action: str, path: str) -> BaseException | None:
        from azure.core import exceptions

        if isinstance(err, exceptions.ResourceExistsError):
            if _code(err) == 'BlobAlreadyExists':
                return FileExistsError(f'{self.url_of(path)} exists')
            return None
        if isinstance(err, exceptions.ResourceNotFoundError):
            if _code(err) == 'ContainerNotFound':
                return forml.MissingError(
                    f'Container {path.partition("/")[0]!r} does not exist (while trying to {action} '
                    f'{self.url_of(path)}): create it or fix the url in the config section'
                )
            return FileNotFoundError(f'{self.url_of(path)} does not exist')
        if isinstance(err, exceptions.ClientAuthenticationError) or getattr(err, 'status_code', None) == 403:
            return forml.InvalidError(
                f'Access denied while trying to {action} {self.url_of(path)}: {self.denied_hint} ({_code(err) or err})'
            )
        if isinstance(err, exceptions.ServiceRequestError) and getattr(self.fs, 'connect_retries', None) is not None:
            endpoint = urllib.parse.urlsplit(self.fs.service_client.url)
            return forml.FailedError(
                reach.message(
                    f'{endpoint.scheme}://{endpoint.netloc}', f'{action} {self.url_of(path)}', self.fs.connect_retries,
                    'Azure', 'the connection_string (or account_name)', 'connect_retries',
                )
            )  # fmt: skip
        # a dropped connection, a body cut short, or a status the SDK retries (408, 429, any 5xx: e.g. a proxy's 502)
        transient = isinstance(err, exceptions.ServiceRequestError | exceptions.ServiceResponseError)
        transient |= isinstance(err, exceptions.IncompleteReadError | exceptions.DecodeError | asyncio.TimeoutError)
        status = getattr(err, 'status_code', None) or 0
        if transient or status in (408, 429) or status >= 500:
            return forml.FailedError(
                f'Could not {action} {self.url_of(path)}, retries exhausted ({_code(err) or err}): the registry is '
                'unchanged by this step; check the endpoint and try again'
            )
        return None


def _fail_fast(client: typing.Any, retries: int) -> None:
    """Retry a failed connection only ``retries`` times, soon and announced (see :mod:`.reach`): the SDK's storage
    retry policy waits 15 s, 18 s, 24 s between attempts, over a minute of silence before an unreachable endpoint is
    reported. Other failures keep the SDK's backoff. (The policy is reached through the client's pipeline, a private
    attribute: where an SDK version lays it out otherwise, its own retries stay.)"""
    from azure.core.exceptions import ServiceRequestError

    endpoint = urllib.parse.urlsplit(client.url)
    where = f'{endpoint.scheme}://{endpoint.netloc}'
    for policy in getattr(getattr(client, '_pipeline', None), '_impl_policies', ()):
        if not (hasattr(policy, 'connect_retries') and hasattr(policy, 'get_backoff_time')):
            continue
        policy.connect_retries = retries
        slow = policy.get_backoff_time

        def backoff(settings: dict[str, typing.Any], slow: typing.Callable = slow) -> float:
            history = settings.get('history') or ()
            failed = history[-1].error if history else None
            if not isinstance(failed, ServiceRequestError):
                return slow(settings)
            attempt = retries - settings['connect']
            reach.retrying(where, type(failed).__name__, attempt, retries)
            return min(2.0 ** (attempt - 1), 4.0)

        policy.get_backoff_time = backoff


def _code(err: BaseException) -> str | None:
    """The Azure Storage error code (``BlobAlreadyExists``, ``ContainerNotFound``, ...) of an SDK error."""
    return getattr(err, 'error_code', None)


def _entry(blob: typing.Any) -> base.Entry:
    """A listing entry from the SDK's ``BlobProperties`` (the ETag changes with every write of the name)."""
    modified = blob.last_modified.timestamp() if blob.last_modified else None
    return base.Entry(blob.name.rsplit('/', 1)[-1], int(blob.size), (blob.etag or '').strip('"'), modified)
