"""Amazon S3 and S3-compatible servers (s3fs/aiobotocore): exclusive create by ``If-None-Match: *``, object tags,
bucket lifecycle rules, SSE, multipart uploads with a sliding window and ranged parallel downloads.

Any HTTP 412 on a conditional create counts as "exists" (several S3-compatible servers omit ``<Condition>`` from
the error, so s3fs raises ``OSError(EINVAL)`` there, not ``FileExistsError``): translated once, in
:meth:`S3Store._translate`.
"""

import asyncio
import base64
import contextlib
import errno
import io
import logging
import os
import pathlib
import threading
import typing
import urllib.parse
import zlib

import forml

from . import base, digest, fastget, probe
from . import options as optmod

if typing.TYPE_CHECKING:
    import fsspec

LOGGER = logging.getLogger(__name__)

PART_SIZE = 16 * 2**20
"""Multipart part size and ranged-GET size (see :data:`MULTIPART_FROM`; larger downloads are ranged)."""
MULTIPART_FROM = 2 * PART_SIZE
"""Objects from this size up are uploaded in parts (smaller ones in one PUT)."""
PART_CONCURRENCY = 8
"""Parts in flight at once: bounds the extra memory of a large transfer to about PART_SIZE x PART_CONCURRENCY."""

_CHUNK = 2**20
"""How much of a ranged GET's body is read and written to the file at a time."""

BATCH_DELETE = 1000
"""Keys per ``DeleteObjects`` request (the S3 limit)."""

_CRC_CHUNK = 2**20
"""How much of a file a part's CRC32 reads at a time (the part itself is never held whole)."""

_CHATTER = ('botocore.credentials', 'aiobotocore.credentials', 'botocore.configprovider')
"""Loggers that say at INFO where the client found its credentials and endpoint (quieted unless set explicitly)."""

_NEXT_LIST = {'NextContinuationToken': 'ContinuationToken'}
"""How ListObjectsV2 asks for its next page."""

_VERIFIED: dict[tuple[str, str], str | None] = {}
"""Endpoints (and buckets) whose exclusive create this process has checked: ``None`` if it works, else why not."""
_VERIFYING = threading.Lock()
_WARNED: set[tuple[str, str]] = set()
"""Failed checks already logged (``single_writer``): once per endpoint, bucket and process, not once per call."""


def _after_fork() -> None:
    global _VERIFYING  # a lock another thread held at fork time would never be released in the child
    _VERIFYING = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


class S3Store(base.Store):
    """A registry root on S3: ``s3://bucket[/prefix]`` (``s3a://`` accepted)."""

    protocol = 's3'
    exclusive_create = True
    object_tags = True
    user_metadata = True
    lifecycle = True
    multipart = True
    conditional_delete = True
    conditional_write = True

    def _connect(self) -> 'fsspec.AbstractFileSystem':
        from . import reach  # lazy: keeps `forml-s3 --help` and provider loading fast

        kwargs = optmod.s3_kwargs(self._options)
        retries = optmod.s3fs_retries(self._options)
        if retries is not None:
            kwargs['skip_instance_cache'] = True  # the attribute is set on this instance only
        kwargs['config_kwargs'].setdefault('connect_timeout', reach.CONNECT_TIMEOUT)  # fail fast: see reach
        LOGGER.debug('Connecting to %s with storage options %s', self.url, optmod.redacted(kwargs))
        for chatter in _CHATTER:  # under ForML's INFO root every command would say where credentials were found
            if logging.getLogger(chatter).level == logging.NOTSET:
                logging.getLogger(chatter).setLevel(logging.WARNING)
        fs = reach.S3FileSystem(**kwargs)
        if retries is not None:
            fs.retries = retries
        return fs

    denied_hint = (
        'check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID or storage_options key/secret) and the bucket policy'
    )

    def _bucket_key(self, path: str) -> tuple[str, str]:
        bucket, _, key = path.partition('/')
        return bucket, key

    # error translation ------------------------------------------------------------------------------
    def _reason(self, err: BaseException) -> str:
        return _code(err) or str(err)

    def _translate(self, err: Exception, action: str, path: str) -> BaseException | None:
        """One message per cause, naming what to fix: a missing bucket, an endpoint that cannot be reached, missing
        credentials, an unknown profile, access denied (also a 403 without a body, as HEAD gets), a request the server
        refused (4xx: never retried), and only then a failure that outlived the retries (5xx, dropped connections)."""
        from botocore import exceptions

        from . import reach

        code, where = _code(err), f'{action} {self.url_of(path)}'
        if isinstance(err, FileNotFoundError):
            if code == 'NoSuchBucket':
                return forml.MissingError(
                    f'Bucket {path.partition("/")[0]!r} does not exist (while trying to {where}): create it or fix '
                    'the url in the config section'
                )
            return None
        if reach.unreachable(err):
            return forml.FailedError(reach.message(reach.endpoint_of(err), where, self.fs.connect_retries))
        if isinstance(err, exceptions.NoCredentialsError | exceptions.PartialCredentialsError):
            return forml.InvalidError(
                f'No AWS credentials to {where} ({err}): set AWS_PROFILE, or AWS_ACCESS_KEY_ID and '
                'AWS_SECRET_ACCESS_KEY, or the storage options key and secret (anon = true for a public bucket)'
            )
        if isinstance(err, exceptions.ProfileNotFound):
            return forml.InvalidError(self._unknown_profile(err, where))
        if not isinstance(err, OSError) and not _is_transport_error(err):
            return None
        if code in ('PreconditionFailed', 'ConditionalRequestConflict') or 'Precondition' in str(err):
            # any 412 on a conditional write means "exists" / "changed": some S3-compatible servers omit <Condition>;
            # AWS answers 409 ConditionalRequestConflict to the loser of two concurrent conditional writes
            return base.Changed(errno.EEXIST, f'{self.url_of(path)} exists or changed meanwhile')
        answer = probe.error_of(err)
        status = int(answer.get('HTTPStatusCode') or 0)
        if status == 403:  # a HEAD's 403 has no body: s3fs cannot tell it is AccessDenied
            return forml.InvalidError(f'Access denied while trying to {where}: {self.denied_hint} ({code})')
        if 400 <= status < 500 and status not in (408, 429):  # botocore never retries these: the request is wrong
            detail = f'{code}: {answer["Message"]}' if answer.get('Message') not in (None, '', code) else code
            return forml.InvalidError(
                f'The S3 endpoint refused to {where} (HTTP {status}, {detail}); not retried: the request, not the '
                f'network, is at fault: {_REFUSAL_HINT}'
            )
        retried = _retries(err)  # None: no answer at all (a dropped connection), which botocore retries
        if retried == 0:
            head = f'Could not {where} ({code or err}; not retried)'
        else:
            head = (
                f'Could not {where}, retries exhausted ({code or err}{f" after {retried} retries" if retried else ""})'
            )
        return forml.FailedError(
            f'{head}: the registry is unchanged by this step; check the endpoint and try again (storage_options '
            'max_attempts and retry_mode set the retries)'
        )

    def _unknown_profile(self, err: Exception, where: str) -> str:
        """What to fix for a profile the AWS config files do not have (set as a storage option or by AWS_PROFILE)."""
        name = getattr(err, 'kwargs', {}).get('profile', '?')
        source = 'the storage option profile' if self._options.get('profile') else 'AWS_PROFILE'
        files = ' or '.join(
            dict.fromkeys(  # once each, in order
                os.environ.get(variable) or default
                for variable, default in (
                    ('AWS_CONFIG_FILE', '~/.aws/config'),
                    ('AWS_SHARED_CREDENTIALS_FILE', '~/.aws/credentials'),
                )
            )
        )
        return (
            f'The AWS profile {name!r} (from {source}) is not in {files} (while trying to {where}): fix {source}, or '
            'add the profile (`aws configure --profile NAME`)'
        )

    # listing ------------------------------------------------------------------------------------------
    def _pages(self, method: str, follow: typing.Mapping[str, str], **params: typing.Any) -> typing.Iterator[dict]:
        """Every page of a paginated S3 listing (one request a page of up to 1,000 entries); ``follow`` maps the
        response fields naming the next page to the request parameters that ask for it."""
        after: dict[str, str] = {}
        while True:
            page = self.fs.call_s3(method, **params, **after)
            yield page
            if not page.get('IsTruncated'):
                return
            after = {request: page[response] for response, request in follow.items()}

    def listdir(self, prefix: str) -> list[base.Entry]:
        with self._boundary('list', prefix):
            bucket, key = self._bucket_key(prefix)
            key = f'{key}/' if key else ''
            return [
                _entry(o, o['Key'][len(key) :])
                for page in self._pages('list_objects_v2', _NEXT_LIST, Bucket=bucket, Prefix=key, Delimiter='/')
                for o in page.get('Contents', ())
                if o['Key'] != key
            ]

    def walk(self, prefix: str) -> typing.Iterator[tuple[str, base.Entry]]:
        with self._boundary('list', prefix):
            bucket, key = self._bucket_key(prefix)
            key = f'{key}/' if key else ''
            for page in self._pages('list_objects_v2', _NEXT_LIST, Bucket=bucket, Prefix=key):
                for obj in page.get('Contents', ()):
                    path = f'{bucket}/{obj["Key"]}'
                    yield path, _entry(obj, path.rsplit('/', 1)[-1])

    # reading ------------------------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        """The whole object. botocore retries a request until its response headers arrive, not the body after
        them: a body cut short (connection reset, closed early) is asked for again here, as many times as the
        retry policy's ``max_attempts``, instead of failing the read on one dropped connection."""
        from fsspec.asyn import sync

        with self._boundary('read', path):
            bucket, key = self._bucket_key(path)
            if (fast := self._fastget()) is not None:
                try:
                    return fastget.read(fast, key)
                except FileNotFoundError:
                    raise
                except OSError as err:
                    self._off_obstore('Read', path, err)
            return sync(self.fs.loop, self._get, Bucket=bucket, Key=key)[0]

    async def _get(self, **params: typing.Any) -> tuple[bytes, dict[str, typing.Any]]:
        """One GET's whole body and its response, the GET repeated (up to ``max_attempts``) while the body comes
        cut short."""
        attempts = max(1, optmod.s3_kwargs(self._options)['config_kwargs']['retries']['max_attempts'])
        for attempt in range(1, attempts + 1):
            response = await self.fs._call_s3('get_object', **params)
            try:
                return await response['Body'].read(), response
            except Exception as err:
                if attempt >= attempts or not _is_cut_body(err):
                    raise
                LOGGER.debug('Body of %s cut short (%s), reading it again', params['Key'], err)
            finally:
                response['Body'].close()
        raise AssertionError('not reached')

    def download(
        self, path: str, target: pathlib.Path, size: int | None = None, sink: digest.Sink | None = None
    ) -> str | None:
        """Download the object to a local file.

        An object of known ``size`` comes in ranged GETs of :data:`PART_SIZE` (one for a smaller object), up to
        :data:`PART_CONCURRENCY` in flight, streamed to the file at their offsets as they arrive (bounded memory)
        and hashed in order meanwhile (in the buffer a reader attaches to ``sink``, where given): it returns the
        file's sha256, so the cache does not read the file again to hash it (11 ms of a 6 MiB pack). Without a size
        s3fs first opens a whole-object GET to learn it, which a large object pays for twice.
        """
        with self._boundary('download', path):
            if size:
                return self._ranged_download(path, target, size, sink)
            self.fs.get_file(path, str(target), chunksize=PART_SIZE, max_concurrency=PART_CONCURRENCY)
            return None

    def head(self, path: str) -> tuple[int, dict[str, str]]:
        with self._boundary('inspect', path):
            bucket, key = self._bucket_key(path)
            response = self.fs.call_s3('head_object', Bucket=bucket, Key=key)
            return int(response['ContentLength']), dict(response.get('Metadata') or {})

    # writing ------------------------------------------------------------------------------------------
    def write(self, path: str, data: base.Data, *, tags: base.Labels = None, metadata: base.Labels = None) -> None:
        """Store the object whole or not at all: one PUT, or a multipart upload from :data:`MULTIPART_FROM` up;
        ``tags`` and ``metadata`` travel in the same PUT (or CreateMultipartUpload)."""
        with self._boundary('write', path):
            extra: dict[str, typing.Any] = {}
            if tags:
                extra['Tagging'] = urllib.parse.urlencode(dict(tags))
            if metadata:
                extra['Metadata'] = dict(metadata)
            size = data.stat().st_size if isinstance(data, pathlib.Path) else len(data)
            if size >= MULTIPART_FROM:
                self._multipart_upload(path, data, size, extra)
            else:
                self.fs.pipe_file(path, data.read_bytes() if isinstance(data, pathlib.Path) else data, **extra)

    def verify_exclusive_create(self) -> None:
        """Check once per endpoint, bucket and process that the server refuses an ``If-None-Match: *`` PUT of an
        existing object (of ``<root>/.forml-s3-probe/exclusive``, kept: one request, two the first time ever);
        ``forml.InvalidError`` if it does not.

        Some S3-compatible servers ignore the condition: every commit would then "win". With ``single_writer`` the
        finding is logged instead (the user has accepted no protection against concurrent writers).
        """
        endpoint = self.fs.s3.meta.endpoint_url  # resolves the client (no request)
        memo = (endpoint, self.bucket)
        with _VERIFYING:
            if memo not in _VERIFIED:
                check = probe.exclusive_create(self, keep=True)
                LOGGER.debug('Exclusive create at %s (%s): %s', endpoint, self.bucket, check.detail)
                _VERIFIED[memo] = None if check.ok else check.detail
        failure = _VERIFIED[memo]
        if failure is None:
            return
        message = (
            f'The S3 endpoint {endpoint} cannot guard commits to {self.url}: {failure}. Use a server with conditional '
            'writes (`forml-s3 doctor URL` shows what it supports) or set single_writer = true to accept no '
            'protection against concurrent writers'
        )
        if not self.single_writer:
            raise forml.InvalidError(message)
        if memo not in _WARNED:
            _WARNED.add(memo)
            LOGGER.warning('%s (single_writer is set: going on)', message)

    def create(self, path: str, data: bytes) -> None:
        """Exclusive create by ``If-None-Match: *`` (any 412 means the object exists)."""
        with self._boundary('create', path):
            self.fs.pipe_file(path, data, mode='create')

    def delete(self, path: str) -> None:
        with self._boundary('delete', path), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def delete_many(self, paths: typing.Iterable[str]) -> None:
        """``DeleteObjects``: one request per 1,000 keys (a missing key counts as deleted)."""
        by_bucket: dict[str, list[str]] = {}
        for path in paths:
            bucket, key = self._bucket_key(path)
            by_bucket.setdefault(bucket, []).append(key)
        for bucket, keys in by_bucket.items():
            for start in range(0, len(keys), BATCH_DELETE):
                batch = keys[start : start + BATCH_DELETE]
                with self._boundary('delete', f'{bucket}/{batch[0]}'):
                    response = self.fs.call_s3(
                        'delete_objects', Bucket=bucket, Delete={'Objects': [{'Key': k} for k in batch], 'Quiet': True}
                    )
                if errors := response.get('Errors'):
                    first = errors[0]
                    raise forml.FailedError(
                        f'Could not delete {len(errors)} of {len(batch)} objects, e.g. '
                        f'{self.url_of(bucket + "/" + first.get("Key", ""))} ({first.get("Code")}): run it again'
                    )

    def delete_if_unchanged(self, path: str, version: str) -> bool:
        """``DeleteObject`` with ``If-Match`` on the ETag (AWS, moto: 412 if it changed). A server answering 501 to
        the condition (LocalStack) gets a plain delete from then on; one ignoring it (Ceph RGW) cannot be told."""
        if not version or self._unconditional:
            self.delete(path)
            return True
        bucket, key = self._bucket_key(path)
        try:
            with self._boundary('delete', path):
                self.fs.call_s3('delete_object', Bucket=bucket, Key=key, IfMatch=f'"{version}"')
        except FileExistsError:  # any 412: no longer the version judged
            return False
        except FileNotFoundError:
            return True
        except forml.FailedError as err:
            if 'NotImplemented' not in str(err):
                raise
            LOGGER.warning('%s does not support conditional deletes: deleting without If-Match', self.url)
            self._unconditional = True
            self.delete(path)
        return True

    _unconditional = False
    """Set once the server refused the conditional delete (501)."""

    def get(self, path: str) -> tuple[bytes, str]:
        from fsspec.asyn import sync

        with self._boundary('read', path):
            bucket, key = self._bucket_key(path)
            data, response = sync(self.fs.loop, self._get, Bucket=bucket, Key=key)
            return data, response.get('ETag', '').strip('"')

    def replace(self, path: str, data: bytes, version: str | None) -> None:
        """``If-Match`` on the ETag read (sent unquoted: Ceph RGW matches only that form, AWS and moto accept it),
        or ``If-None-Match: *`` to create."""
        if version is None:
            self.create(path, data)
            return
        with self._boundary('update', path):
            bucket, key = self._bucket_key(path)
            self.fs.call_s3('put_object', Bucket=bucket, Key=key, Body=data, IfMatch=version)

    def _multipart_upload(self, path: str, data: bytes | pathlib.Path, size: int, extra: dict[str, typing.Any]) -> None:
        """Upload in parts of :data:`PART_SIZE`, up to :data:`PART_CONCURRENCY` in flight, and never in batches (a slow
        part does not hold the others back). Each part's body is a :class:`_PartBody`, a zero-copy window on the
        caller's bytes (or on the file, read with ``pread``): the data is copied only in the small chunks aiohttp
        sends, so the extra memory stays far below the parts in flight. A failure aborts the upload.

        Over plain HTTP, where botocore would checksum each part itself (``request_checksum_calculation`` other
        than ``when_required``, the default), the part's CRC32 is computed here first, off the event loop, and sent
        as ``ChecksumCRC32`` with an explicit ``ContentLength``: botocore then sends the body plainly (no body read
        of its own for a header checksum; no aws-chunked body with a trailing checksum); the upload is created with
        ``ChecksumAlgorithm='CRC32'`` and the completion names every part's checksum, as S3 requires then. Over
        HTTPS botocore streams the body unsigned with a trailing checksum computed as it sends; a checksum given
        up front would make it sign the whole body with SHA-256 on the event loop instead, so it is left alone."""
        from fsspec.asyn import sync

        bucket, key = self._bucket_key(path)
        count = -(-size // PART_SIZE)

        async def part(number: int, source: _Source, checksum: bool, slots: asyncio.Semaphore) -> dict:
            start = (number - 1) * PART_SIZE
            length = min(PART_SIZE, size - start)
            params: dict[str, typing.Any] = {'ContentLength': length}
            async with slots:
                if checksum:
                    params['ChecksumCRC32'] = await asyncio.to_thread(source.crc32, start, length)
                body = source.body(start, length)
                try:
                    response = await self.fs._call_s3(
                        'upload_part', Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=body, **params
                    )
                finally:
                    body.close()
            done = {'PartNumber': number, 'ETag': response['ETag']}
            if checksum:
                done['ChecksumCRC32'] = params['ChecksumCRC32']
            return done

        async def run(source: _Source) -> None:
            nonlocal upload
            await self.fs.set_session()
            client = await self.fs.get_s3(bucket)
            checksum = (  # see the docstring: on HTTPS, botocore's own streaming checksum is the cheaper path
                client.meta.endpoint_url.startswith('http://')
                and getattr(client.meta.config, 'request_checksum_calculation', None) != 'when_required'
            )
            create = {**extra, 'ChecksumAlgorithm': 'CRC32'} if checksum else extra
            upload = (await self.fs._call_s3('create_multipart_upload', Bucket=bucket, Key=key, **create))['UploadId']
            slots = asyncio.Semaphore(PART_CONCURRENCY)
            tasks = [asyncio.ensure_future(part(n, source, checksum, slots)) for n in range(1, count + 1)]
            try:
                parts = await asyncio.gather(*tasks)
                await self.fs._call_s3(
                    'complete_multipart_upload',
                    Bucket=bucket,
                    Key=key,
                    UploadId=upload,
                    MultipartUpload={'Parts': list(parts)},
                )
            except BaseException:
                for task in tasks:  # no part goes on reading the source (the caller frees it) or uploading
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                with contextlib.suppress(Exception):  # the lifecycle rule aborts it later if this fails too
                    await self.fs._call_s3('abort_multipart_upload', Bucket=bucket, Key=key, UploadId=upload)
                raise

        upload = ''
        if isinstance(data, pathlib.Path):
            fd = os.open(data, os.O_RDONLY)
            try:
                sync(self.fs.loop, run, _Source(fd=fd))
            finally:
                os.close(fd)
        else:
            with memoryview(data) as view, view.cast('B') as octets:
                sync(self.fs.loop, run, _Source(view=octets))

    def _ranged_download(self, path: str, target: pathlib.Path, size: int, sink: digest.Sink | None = None) -> str:
        """Ranged GETs of :data:`PART_SIZE`, up to :data:`PART_CONCURRENCY` in flight; each body is streamed into the
        file at its offset in chunks of :data:`_CHUNK` as they arrive (no part is held whole), while a
        :class:`~forml_s3.storage.digest.Follower` hashes the landed prefix in order (into the buffer a reader attaches
        to ``sink``, where given). Returns the sha256 of the file."""
        from fsspec.asyn import sync

        bucket, key = self._bucket_key(path)

        def shorter() -> base.Corrupted:
            return base.Corrupted(
                f'Object {self.url_of(path)} is corrupted: expected {size} bytes, it is shorter than its marker '
                'records; restore it or retrain (`forml-s3 verify`)'
            )

        async def part(fd: int, start: int, end: int, slots: asyncio.Semaphore, follower: digest.Follower) -> None:
            async with slots:
                try:
                    response = await self.fs._call_s3(
                        'get_object', Bucket=bucket, Key=key, Range=f'bytes={start}-{end - 1}'
                    )
                except OSError as err:
                    if _code(err) == 'InvalidRange':  # the object ends before this part starts
                        raise shorter() from None
                    raise
                body, offset = response['Body'], start
                try:
                    while offset < end and (chunk := await body.read(min(_CHUNK, end - offset))):
                        digest.write_at(fd, chunk, offset)
                        follower.landed(offset, offset + len(chunk))
                        offset += len(chunk)
                        del chunk  # (else it is held while the next one is read)
                finally:
                    body.close()
            if offset != end:
                raise shorter()

        async def run(fd: int, follower: digest.Follower) -> None:
            slots = asyncio.Semaphore(PART_CONCURRENCY)
            spans = digest.spans(size, PART_SIZE, PART_CONCURRENCY)
            await asyncio.gather(*(part(fd, start, end, slots, follower) for start, end in spans))

        # no O_TRUNC on the (new, empty) file the cache made: ext4 flushes a file truncated to zero when it is
        # closed (auto_da_alloc), which started writing the whole object to disk on the read's path (~0.1 s and the
        # disk's CPU while the caller read it back, for 256 MiB)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if os.fstat(fd).st_size:
                os.ftruncate(fd, 0)
            if (fast := self._fastget()) is not None:
                try:
                    with digest.Follower(fd, size, sink) as follower:
                        fastget.download(fast, key, fd, size, follower, PART_SIZE, PART_CONCURRENCY)
                        if sink is not None:
                            sink.all_landed(fd)
                        return follower.hexdigest()
                except fastget.Shorter:
                    raise shorter() from None
                except FileNotFoundError:
                    raise
                except OSError as err:
                    self._off_obstore('Download', path, err)
                    os.ftruncate(fd, 0)
            with digest.Follower(fd, size, sink) as follower:
                sync(self.fs.loop, run, fd, follower)
                if sink is not None:
                    sink.all_landed(fd)
                return follower.hexdigest()
        finally:
            os.close(fd)

    _fast: tuple[int, typing.Any] | None = None
    """This process's obstore client of the bucket (None inside: the options keep its requests on aiobotocore)."""

    def connect(self) -> None:
        super().connect()
        self._fastget()

    def _off_obstore(self, action: str, path: str, err: OSError) -> None:
        """An obstore request failed (e.g. on a redirect botocore follows and obstore does not): it is tried once more
        through aiobotocore, which this process's store keeps to from now on."""
        LOGGER.warning('%s of %s through obstore failed (%s): using aiobotocore', action, self.url_of(path), err)
        self._fast = (os.getpid(), None)

    def _fastget(self) -> typing.Any:
        """The obstore client downloads and whole reads go through (:mod:`.fastget`), made once per process; None:
        none."""
        if self._fast is None or self._fast[0] != os.getpid():
            self._fast = (os.getpid(), fastget.client(self.fs, self.bucket, optmod.s3_kwargs(self._options)))
        return self._fast[1]

    def __getstate__(self):
        state = super().__getstate__()
        state.pop('_fast', None)
        return state

    # object tags --------------------------------------------------------------------------------------
    def set_tags(self, path: str, tags: typing.Mapping[str, str]) -> None:
        with self._boundary('tag', path):
            bucket, key = self._bucket_key(path)
            if not tags:  # DeleteObjectTagging: the canonical clear (moto 5.2 fails an empty PutObjectTagging)
                self.fs.call_s3('delete_object_tagging', Bucket=bucket, Key=key)
                return
            self.fs.call_s3(
                'put_object_tagging',
                Bucket=bucket,
                Key=key,
                Tagging={'TagSet': [{'Key': k, 'Value': v} for k, v in tags.items()]},
            )

    def get_tags(self, path: str) -> dict[str, str]:
        with self._boundary('read tags of', path):
            bucket, key = self._bucket_key(path)
            response = self.fs.call_s3('get_object_tagging', Bucket=bucket, Key=key)
            return {t['Key']: t['Value'] for t in response.get('TagSet', ())}

    # bucket-level S3 features (lifecycle and its preview) ----------------------------------------------------
    def lifecycle_rules(self) -> list[dict[str, typing.Any]]:
        """The bucket's lifecycle rules as ``GetBucketLifecycleConfiguration`` returns them (none: empty)."""
        bucket = self.bucket
        with self._boundary('read the lifecycle rules of', bucket):
            try:
                response = self.fs.call_s3('get_bucket_lifecycle_configuration', Bucket=bucket)
            except FileNotFoundError as err:
                if _code(err) == 'NoSuchLifecycleConfiguration':
                    return []
                raise
            return list(response.get('Rules') or [])

    def set_lifecycle_rules(self, rules: list[dict[str, typing.Any]]) -> None:
        """Replace the bucket's lifecycle configuration (S3 keeps one per bucket; no rules deletes it)."""
        bucket = self.bucket
        with self._boundary('set the lifecycle rules of', bucket):
            if rules:
                self.fs.call_s3(
                    'put_bucket_lifecycle_configuration', Bucket=bucket, LifecycleConfiguration={'Rules': rules}
                )
            else:
                self.fs.call_s3('delete_bucket_lifecycle', Bucket=bucket)

    def multipart_uploads(self, prefix: str) -> list[dict[str, typing.Any]]:
        """Incomplete multipart uploads under ``prefix`` (``Key``, ``UploadId``, ``Initiated``), all pages."""
        bucket, key = self._bucket_key(prefix)
        follow = {'NextKeyMarker': 'KeyMarker', 'NextUploadIdMarker': 'UploadIdMarker'}
        with self._boundary('list the multipart uploads of', prefix):
            pages = self._pages('list_multipart_uploads', follow, Bucket=bucket, Prefix=key)
            return [upload for page in pages for upload in page.get('Uploads') or ()]

    def abort_upload(self, path: str, upload_id: str) -> None:
        bucket, key = self._bucket_key(path)
        with self._boundary('abort the multipart upload of', path), contextlib.suppress(FileNotFoundError):
            self.fs.call_s3('abort_multipart_upload', Bucket=bucket, Key=key, UploadId=upload_id)

    def versions(self, prefix: str) -> list[dict[str, typing.Any]]:
        """Every version and delete marker under ``prefix`` (``Key``, ``VersionId``, ``IsLatest``,
        ``LastModified``, ``Size``; delete markers with ``DeleteMarker=True``), all pages."""
        bucket, key = self._bucket_key(prefix)
        follow = {'NextKeyMarker': 'KeyMarker', 'NextVersionIdMarker': 'VersionIdMarker'}
        found: list[dict[str, typing.Any]] = []
        with self._boundary('list the object versions of', prefix):
            for page in self._pages('list_object_versions', follow, Bucket=bucket, Prefix=key):
                found.extend(page.get('Versions') or ())
                found.extend({**m, 'DeleteMarker': True} for m in page.get('DeleteMarkers') or ())
        return found


def _entry(obj: typing.Mapping[str, typing.Any], name: str) -> base.Entry:
    """A listing entry from a ListObjectsV2 ``Contents`` item."""
    return base.Entry(name, int(obj['Size']), obj.get('ETag', '').strip('"'), base.modified(obj))


class _Source:
    """What a multipart upload reads its parts from: bytes in memory (a flat memoryview) or an open file."""

    def __init__(self, view: memoryview | None = None, fd: int | None = None):
        self.view: memoryview | None = view
        self.fd: int | None = fd

    def body(self, start: int, length: int) -> '_PartBody':
        if self.view is not None:
            return _PartBody(length, view=self.view[start : start + length])
        return _PartBody(length, fd=self.fd, offset=start)

    def crc32(self, start: int, length: int) -> str:
        """The CRC32 of a part as S3 takes it: base64 of its 4 big-endian bytes (zlib releases the GIL)."""
        if self.view is not None:
            value = zlib.crc32(self.view[start : start + length])
        else:
            value, done = 0, 0
            while done < length:
                chunk = os.pread(self.fd, min(_CRC_CHUNK, length - done), start + done)
                if not chunk:
                    raise EOFError(f'File shrank while uploading: {length - done} bytes short at {start + done}')
                value = zlib.crc32(chunk, value)
                done += len(chunk)
        return base64.b64encode(value.to_bytes(4, 'big')).decode('ascii')


class _PartBody(io.RawIOBase):
    """One part of a multipart upload as a readable, seekable stream with a length, copying nothing up front: a
    window on bytes in memory (a memoryview slice) or on a file (``os.pread`` at the window's offset).

    botocore needs a seekable body (it rewinds it to retry, and to sign the payload over plain HTTP); aiohttp reads
    it in small chunks, so only those chunks are ever copied.
    """

    def __init__(self, length: int, *, view: memoryview | None = None, fd: int | None = None, offset: int = 0):
        super().__init__()
        self._length = length
        self._view = view
        self._fd = fd
        self._offset = offset
        self._position = 0

    def __len__(self) -> int:
        return self._length

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._checkClosed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._checkClosed()
        if whence == io.SEEK_SET:
            position = offset
        elif whence == io.SEEK_CUR:
            position = self._position + offset
        elif whence == io.SEEK_END:
            position = self._length + offset
        else:
            raise ValueError(f'Invalid whence ({whence})')
        if position < 0:
            raise ValueError(f'Negative seek position {position}')
        self._position = position
        return position

    def _span(self, size: int | None) -> int:
        left = max(self._length - self._position, 0)
        return left if size is None or size < 0 else min(size, left)

    def read(self, size: int | None = -1) -> bytes:
        self._checkClosed()
        count = self._span(size)
        if not count:
            return b''
        if self._view is not None:
            data = bytes(self._view[self._position : self._position + count])
        else:
            data = os.pread(self._fd, count, self._offset + self._position)
        self._position += len(data)
        return data

    def readall(self) -> bytes:
        return self.read()

    def readinto(self, buffer: typing.Any) -> int:
        self._checkClosed()
        with memoryview(buffer) as target, target.cast('B') as octets:
            count = self._span(len(octets))
            if not count:
                return 0
            if self._view is not None:
                octets[:count] = self._view[self._position : self._position + count]
            else:
                count = os.preadv(self._fd, [octets[:count]], self._offset + self._position)
        self._position += count
        return count

    def close(self) -> None:
        self._view = None  # releases the export of the caller's buffer as soon as the part is sent
        super().close()


def _code(err: BaseException) -> str | None:
    """The S3 error code behind an exception that s3fs translated (it keeps the boto error as the cause)."""
    return probe.error_of(err).get('Code')


_REFUSAL_HINT = (
    'check the storage options the request carries (sse, sse_kms_key_id, s3_additional_kwargs); a server that rejects '
    'the default checksums of boto3 >= 1.36 (MinIO, R2, ...) needs request_checksum_calculation = "when_required" '
    'and response_checksum_validation = "when_required"'
)
"""What to check when the server refuses a request (4xx)."""


def _retries(err: BaseException) -> int | None:
    """How many times botocore retried the request that failed (``None`` where the error does not say)."""
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, 'response', None)
        if isinstance(response, dict):
            return response.get('ResponseMetadata', {}).get('RetryAttempts')
        seen = seen.__cause__ or seen.__context__
    return None


def _is_transport_error(err: BaseException) -> bool:
    """A network-level failure surfacing unwrapped from botocore/aiohttp after retries (dropped connection)."""
    return type(err).__module__.split('.')[0] in ('botocore', 'aiobotocore', 'aiohttp')


def _is_cut_body(err: BaseException) -> bool:
    """A response body that ended early: the connection dropped or closed before its ``Content-Length``."""
    return _is_transport_error(err) or isinstance(err, ConnectionError | asyncio.IncompleteReadError | EOFError)
