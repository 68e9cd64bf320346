"""What a store's server really does with the requests the registry relies on: the checks of ``forml-s3 doctor``,
and the exclusive-create check every registry on S3 runs once per endpoint and process before its first commit.

Each doctor check writes only under a probe prefix of its own (``<root>/.forml-s3-probe/<random>/``) and deletes
what it wrote; the registry's check keeps one object, ``<root>/.forml-s3-probe/exclusive``. Checks the registry
relies on are ``required``; the others say what a feature of forml-s3 needs (lifecycle rules for
``forml-s3 lifecycle``). Lifecycle configuration is only read unless ``write_lifecycle`` is given: S3 keeps
one configuration per bucket, so writing replaces it (the probe puts the original back, but a concurrent change by
someone else would be lost).
"""

import contextlib
import dataclasses
import logging
import typing
import uuid
import zlib

import forml

from . import base

LOGGER = logging.getLogger(__name__)

PROBE_DIR = '.forml-s3-probe'
"""Folder under the store root the probes write in (never a valid project name, so never listed as one)."""
REGISTRY_PROBE = f'{PROBE_DIR}/exclusive'
"""The one object the registry's own check keeps under the root (see :func:`exclusive_create`)."""
PROBE_BODY = b'forml-s3 exclusive-create probe (see docs/doctor.md); safe to delete\n'

_REFUSED_CONDITIONAL = ('NotImplemented', 'InvalidArgument', 'InvalidRequest', 'NotImplementedError')
"""Error codes of servers that refuse an ``If-None-Match`` PUT outright."""


@dataclasses.dataclass(frozen=True)
class Check:
    """The outcome of one check."""

    name: str
    ok: bool | None
    """``None``: not applicable to this store (or skipped)."""
    detail: str
    required: bool = True
    """The registry relies on it (doctor fails without it)."""


def probe_prefix(store: base.Store) -> str:
    """A fresh prefix for one probe's objects."""
    return f'{store.root.rstrip("/")}/{PROBE_DIR}/{uuid.uuid4().hex}'


def error_of(err: BaseException) -> dict[str, typing.Any]:
    """The S3 ``<Error>`` of an exception (s3fs keeps the botocore error in the cause chain); empty if none."""
    seen: BaseException | None = err
    while seen is not None:
        response = getattr(seen, 'response', None)
        if isinstance(response, dict):
            return dict(
                response.get('Error') or {}, HTTPStatusCode=response.get('ResponseMetadata', {}).get('HTTPStatusCode')
            )
        seen = seen.__cause__ or seen.__context__
    return {}


def exclusive_create(store: base.Store, prefix: str | None = None, *, keep: bool = False) -> Check:
    """Create one object exclusively until a create is refused: the second create at the latest must be.

    The doctor's check (``keep=False``) uses a fresh key under ``prefix`` and deletes it: two PUTs and a DELETE.
    The registry's own check (``keep=True``) uses one fixed key, :data:`REGISTRY_PROBE` under the root, and never
    deletes it, so a writer needs no ``s3:DeleteObject``: where an earlier check left it, the first create is
    already refused (one request; two the first time ever). A server that refuses conditional writes outright fails
    the check too; other errors (access denied, missing bucket, retries exhausted) propagate: they say nothing about
    the server's semantics.
    """
    key = f'{store.root.rstrip("/")}/{REGISTRY_PROBE}' if keep else f'{prefix or probe_prefix(store)}/exclusive'
    try:
        for _ in range(2):
            try:
                store.create(key, PROBE_BODY)
            except FileExistsError as err:
                error = error_of(err)
                if not error:  # not an S3 store: the backend's own exclusive create
                    return Check('exclusive create', True, 'a create of an existing object was refused')
                how = 'with' if error.get('Condition') else 'without'
                return Check(
                    'exclusive create',
                    True,
                    f'an If-None-Match: * PUT of an existing object was refused: {error.get("HTTPStatusCode")} '
                    f'{error.get("Code")} {how} <Condition>',
                )
            except forml.FailedError as err:
                error = error_of(err)
                if error.get('Code') in _REFUSED_CONDITIONAL or error.get('HTTPStatusCode') == 501:
                    return Check(
                        'exclusive create',
                        False,
                        f'the server refuses a PUT with If-None-Match: * ({error.get("Code")}): it has no conditional '
                        'writes',
                    )
                raise
        return Check(
            'exclusive create',
            False,
            'the server ACCEPTED a second If-None-Match: * PUT of an existing object (it ignores the condition): two '
            'writers could both commit the same release or generation',
        )
    finally:
        if not keep:
            with contextlib.suppress(forml.AnyError):  # a doctor without s3:DeleteObject still gets its answer
                store.delete(key)


def listing(store: base.Store, prefix: str) -> Check:
    """One level lists its objects with sizes and versions, and not the objects of a level below."""
    store.write(f'{prefix}/list/a.json', b'12345')
    store.write(f'{prefix}/list/below/b.json', b'1')
    entries = store.listdir(f'{prefix}/list')
    found = {e.name: e for e in entries}
    if set(found) != {'a.json'}:
        return Check('listing', False, f'one level of a.json and below/b.json listed {sorted(found)} (not [a.json])')
    if found['a.json'].size != 5 or not found['a.json'].version:
        return Check('listing', False, f'a listing entry lacks its size or ETag: {found["a.json"]}')
    return Check('listing', True, 'one level listed with sizes and ETags, the level below left out (delimiter)')


def write_and_metadata(store: base.Store, prefix: str) -> Check:
    """A plain write (with the client's default checksums) reads back whole; user metadata where kept."""
    key = f'{prefix}/write.bin'
    data = bytes(range(256)) * 8
    store.write(key, data, metadata={'sha256': 'probe'} if store.user_metadata else None)
    if store.read(key) != data:
        return Check('write and read', False, 'an object read back differs from what was written')
    if store.user_metadata:
        size, metadata = store.head(key)
        if size != len(data) or metadata.get('sha256') != 'probe':
            return Check('write and read', False, f'HEAD returned size {size} and user metadata {metadata}')
        return Check('write and read', True, 'objects read back whole; HEAD returns size and user metadata')
    return Check('write and read', True, 'objects read back whole')


def tagging(store: base.Store, prefix: str) -> Check:
    """Tags on write, replaced, read and deleted (the ``forml-s3=uncommitted`` tag lifecycle rules expire by)."""
    if not store.object_tags:
        return Check('object tags', None, f'{store.protocol} objects carry no tags', required=False)
    key = f'{prefix}/tagged'
    store.write(key, b'x', tags={'forml-s3': 'uncommitted'})
    steps = [('on write', store.get_tags(key), {'forml-s3': 'uncommitted'})]
    store.set_tags(key, {'forml-s3': 'retired'})
    steps.append(('put', store.get_tags(key), {'forml-s3': 'retired'}))
    store.set_tags(key, {})
    steps.append(('delete', store.get_tags(key), {}))
    for step, got, expected in steps:
        if got != expected:
            return Check('object tags', False, f'tags {step}: read back {got}, expected {expected}')
    return Check('object tags', True, 'tags set on write, put, read back and deleted')


def compare_and_swap(store: base.Store, prefix: str) -> Check:
    """An update conditioned on the version read (S3 ``If-Match``) succeeds, and one on a stale version is refused
    (what moving an alias relies on)."""
    if not store.conditional_write:
        return Check('compare-and-swap', None, f'{store.protocol} stores have no conditional update', required=False)
    key = f'{prefix}/swapped'
    store.replace(key, b'1', None)
    _, stale = store.get(key)
    store.replace(key, b'2', stale)
    try:
        store.replace(key, b'3', stale)
    except base.Changed:
        if store.read(key) != b'2':
            return Check('compare-and-swap', False, 'a refused update still changed the object', required=False)
        return Check(
            'compare-and-swap', True, 'an update at the version read succeeds, at a stale one is refused', False
        )
    return Check(
        'compare-and-swap',
        False,
        'an update conditioned on a stale version was ACCEPTED (If-Match ignored): aliases could lose a move',
        required=False,
    )


def lifecycle(store: base.Store, write: bool = False) -> Check:
    """The bucket's lifecycle configuration reads (and, with ``write``, round-trips one rule and is restored)."""
    if not store.lifecycle:
        return Check('lifecycle rules', None, f'{store.protocol} stores have no bucket lifecycle rules', required=False)
    original = store.lifecycle_rules()
    if not write:
        return Check(
            'lifecycle rules',
            True,
            f'configuration read ({len(original)} rules); not written (--write-lifecycle replaces it to test that)',
            required=False,
        )
    rule = {
        'ID': f'forml-s3-probe-{uuid.uuid4().hex[:8]}',
        'Status': 'Enabled',
        'Filter': {'And': {'Prefix': f'{PROBE_DIR}/', 'Tags': [{'Key': 'forml-s3', 'Value': 'uncommitted'}]}},
        'Expiration': {'Days': 3},
    }
    try:
        store.set_lifecycle_rules([*original, rule])
        back = {r.get('ID'): r for r in store.lifecycle_rules()}
    finally:
        store.set_lifecycle_rules(original)
    got = back.get(rule['ID'])
    if got is None:
        return Check('lifecycle rules', False, 'a rule written was not read back', required=False)
    if got.get('Expiration') != rule['Expiration'] or 'Tags' not in str(got.get('Filter')):
        return Check('lifecycle rules', False, f'a rule came back changed: {got}', required=False)
    return Check('lifecycle rules', True, 'a tag-filtered rule written, read back and the original restored', False)


def multipart(store: base.Store, prefix: str) -> Check:
    """Create, upload a part, complete, read back; create and abort another (S3 API)."""
    if not _speaks_s3(store):
        return Check('multipart', None, f'not an S3 store ({store.protocol}): not checked', required=False)
    fs: typing.Any = store.fs
    bucket, _, root = prefix.partition('/')
    key = f'{root}/multipart.bin'
    data = b'part' * 1024
    upload = fs.call_s3('create_multipart_upload', Bucket=bucket, Key=key)['UploadId']
    part = fs.call_s3('upload_part', Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=data)
    fs.call_s3(
        'complete_multipart_upload',
        Bucket=bucket,
        Key=key,
        UploadId=upload,
        MultipartUpload={'Parts': [{'PartNumber': 1, 'ETag': part['ETag']}]},
    )
    if store.read(f'{bucket}/{key}') != data:
        return Check('multipart', False, 'a completed multipart upload reads back different bytes')
    aborted = fs.call_s3('create_multipart_upload', Bucket=bucket, Key=f'{key}.aborted')['UploadId']
    fs.call_s3('abort_multipart_upload', Bucket=bucket, Key=f'{key}.aborted', UploadId=aborted)
    if any(u.get('UploadId') == aborted for u in store.multipart_uploads(prefix)):
        return Check('multipart', False, 'an aborted multipart upload is still listed')
    return Check('multipart', True, 'create, upload part, complete, abort and list uploads work')


def checksums(store: base.Store, prefix: str) -> Check:
    """What the client sends by default (botocore >= 1.36 adds CRC32 checksums to PUTs) is accepted and stored."""
    if not _speaks_s3(store):
        return Check('checksum headers', None, f'not an S3 store ({store.protocol}): not checked', required=False)
    import base64

    import botocore

    fs: typing.Any = store.fs
    bucket, _, root = prefix.partition('/')
    data = b'checksummed' * 100
    expected = zlib.crc32(data).to_bytes(4, 'big')
    fs.call_s3('put_object', Bucket=bucket, Key=f'{root}/crc32', Body=data, ChecksumAlgorithm='CRC32')
    head = fs.call_s3('head_object', Bucket=bucket, Key=f'{root}/crc32', ChecksumMode='ENABLED')
    stored = head.get('ChecksumCRC32')
    kept = 'stored and returned' if stored == base64.b64encode(expected).decode() else 'not returned on HEAD'
    setting = getattr(fs.s3.meta.config, 'request_checksum_calculation', None) or 'when_supported'
    return Check(
        'checksum headers',
        True,
        f'PUT with x-amz-checksum-crc32 accepted (botocore {botocore.__version__}, request_checksum_calculation='
        f'{setting}); the CRC32 is {kept}',
    )


CHECKS: tuple[tuple[str, bool, typing.Callable[[base.Store, str], Check]], ...] = (
    ('listing', True, listing),
    ('write and read', True, write_and_metadata),
    ('object tags', True, tagging),
    ('multipart', True, multipart),
    ('checksum headers', True, checksums),
    ('compare-and-swap', False, compare_and_swap),
)
"""The checks after exclusive create: (name, whether the registry relies on it, the check)."""


def run(store: base.Store, *, write_lifecycle: bool = False) -> list[Check]:
    """Every check on ``store``, in order; the probe's objects are deleted afterwards."""
    prefix = probe_prefix(store)
    checks = [exclusive_create(store, prefix)]
    try:
        for name, required, check in CHECKS:
            checks.append(_guarded(name, required, lambda c=check: c(store, prefix)))
        checks.append(_guarded('lifecycle rules', False, lambda: lifecycle(store, write_lifecycle)))
    finally:
        for path, _ in list(store.walk(prefix)):
            with contextlib.suppress(Exception):
                store.delete(path)
    return checks


def _guarded(name: str, required: bool, check: typing.Callable[[], Check]) -> Check:
    """A check's outcome; an error it raises fails it, with the server's error code."""
    try:
        return check()
    except Exception as err:  # any failure is the finding
        error = error_of(err)
        code = f'{error.get("HTTPStatusCode")} {error.get("Code")}: ' if error else ''
        LOGGER.debug('Probe %s failed', name, exc_info=True)
        return Check(name, False, f'failed: {code}{err}', required=required)


def _speaks_s3(store: base.Store) -> bool:
    """The store is an S3 store (the multipart and checksum checks call the S3 API itself)."""
    from .s3 import S3Store

    return isinstance(store, S3Store)
