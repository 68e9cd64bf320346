"""The narrow store interface every backend implements, with capability flags callers test instead of protocols.

Paths are full paths without the protocol (``bucket/forml/p/releases/1.json``; absolute paths on local disk).
Operations:

* ``listdir`` - the objects directly under a prefix, fresh (never from a listings cache), one request per page;
* ``walk`` - every object below a prefix (operator tools, not ForML's calls);
* ``read`` / ``download`` / ``head`` / ``exists`` - whole objects, to memory or to a local file;
* ``write`` - an object, whole or not at all (overwrites), optionally with tags and user metadata where the
  backend keeps them (:attr:`Store.object_tags`, :attr:`Store.user_metadata`);
* ``create`` - exclusive create: ``FileExistsError`` when the object exists, and then nothing is written;
* ``delete``; ``set_tags`` / ``get_tags``; bucket lifecycle rules where :attr:`Store.lifecycle`.

Errors the user must act on are translated once, in :meth:`Store._boundary`: denied access becomes
``forml.InvalidError`` naming the URL; each backend adds its own translations in :meth:`Store._translate`. A local
disk refusing a download (:func:`local_failure`) passes unchanged: the cache or staging above knows what to name.
``FileNotFoundError`` for a missing key and ``FileExistsError`` for a lost exclusive create pass through.
"""

import concurrent.futures
import contextlib
import dataclasses
import datetime
import errno
import hashlib
import logging
import os
import pathlib
import typing

import forml

from . import digest

if typing.TYPE_CHECKING:
    import fsspec

LOGGER = logging.getLogger(__name__)

DELETE_WORKERS = 16
"""Concurrent deletes where a backend has no batch delete (storage keeps no pool of its own)."""

Data = bytes | pathlib.Path
"""What :meth:`Store.write` stores: the bytes, or a local file to upload."""
Labels = typing.Mapping[str, str] | None
"""Object tags or user metadata of a write (``None``: none)."""


class Corrupted(forml.InvalidError):
    """Downloaded content does not match the size/sha256 recorded in its marker."""

    @classmethod
    def mismatch(cls, name: str, size: int, sha256: str, got_size: int, got_sha256: str) -> 'Corrupted':
        """The error for content of ``got_size`` bytes and ``got_sha256`` where the marker records the others."""
        return cls(
            f'Object {name} is corrupted: expected {size} bytes with sha256 {sha256}, '
            f'got {got_size} bytes with sha256 {got_sha256}; restore it or retrain (`forml-s3 verify`)'
        )


class Changed(FileExistsError):
    """A compare-and-swap lost: the object is no longer the version it was read at (or exists already)."""


@dataclasses.dataclass(frozen=True)
class Entry:
    """One object of a listing."""

    name: str
    """Basename of the object."""
    size: int
    version: str
    """Identity of this version of the object (S3 ETag; size and mtime elsewhere): a cache key part."""
    modified: float | None = None
    """Last modification, seconds since the epoch (from the same listing; ``None`` where the store has none)."""


class Store:
    """Storage at one URL with the options that configure its client.

    The client (an fsspec file system) is created lazily and is not pickled, so a store (and the providers holding
    it) travels into Dask tasks and gateway processes cheaply and reconnects there (and anew in a forked child).
    """

    protocol: str = ''
    """The URL scheme of the store's root (``s3``, ``file``, ...)."""

    # capability flags: callers test these, never protocol names
    exclusive_create: typing.ClassVar[bool] = False
    """``create`` is atomic across processes and machines (what a commit marker needs)."""
    object_tags: typing.ClassVar[bool] = False
    """Objects carry tags that bucket lifecycle rules can filter on (``write(tags=...)``, ``set_tags``)."""
    user_metadata: typing.ClassVar[bool] = False
    """``write(metadata=...)`` is stored and ``head`` returns it."""
    lifecycle: typing.ClassVar[bool] = False
    """The bucket has lifecycle rules forml-s3 can read and set (``lifecycle_rules``)."""
    multipart: typing.ClassVar[bool] = False
    """Large objects move in parallel parts; incomplete uploads can be listed (``multipart_uploads``)."""
    conditional_delete: typing.ClassVar[bool] = False
    """``delete_if_unchanged`` deletes only the version judged (else it deletes whatever is there)."""
    conditional_write: typing.ClassVar[bool] = False
    """``replace`` swaps an object only if it is still the version read (compare-and-swap, for aliases)."""
    on_local_disk: typing.ClassVar[bool] = False
    """The store itself is a local file system: a local disk's errors are the store's (see :func:`local_failure`)."""

    denied_hint: typing.ClassVar[str] = 'check the credentials and the permissions of the store'
    """What an access-denied message tells the user to check."""
    lifecycle_advice: typing.ClassVar[str] = (
        'they are an S3 feature: retiring only hides generations there; `forml-s3 gc` deletes abandoned uploads and, '
        'with --retired-older-than, retired generations'
    )
    """What to do instead, where the store has no bucket lifecycle rules forml-s3 can manage."""

    def __init__(self, root: str, storage_options: typing.Mapping[str, typing.Any] | None = None):
        self.root: str = root
        self._options: dict[str, typing.Any] = dict(storage_options or {})
        self._fs: fsspec.AbstractFileSystem | None = None
        self._pid: int = os.getpid()
        self.single_writer: bool = False
        """The user accepts no protection against concurrent writers (set by :func:`open_store`)."""

    def connect(self) -> None:
        """Make this store's clients now rather than at their first use (no request): a process that is about to
        read, or a measurement, pays their set-up ahead."""
        _ = self.fs

    # identity and pickling --------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """The store root as a URL (never carries credentials)."""
        return f'{self.protocol}://{self.root}'

    def url_of(self, path: str) -> str:
        """The URL of a path (for messages)."""
        return f'{self.protocol}://{path}'

    def __repr__(self):
        return f'{self.__class__.__name__}({self.url})'

    def __getstate__(self):
        state = self.__dict__.copy()
        state['_fs'] = None
        return state

    @property
    def fs(self) -> 'fsspec.AbstractFileSystem':
        """The fsspec file system (created on first use, and anew in a forked child)."""
        if self._fs is None or self._pid != os.getpid():
            self._fs = self._connect()
            self._pid = os.getpid()
        return self._fs

    def _connect(self) -> 'fsspec.AbstractFileSystem':
        import fsspec  # lazy: keeps `forml-s3 --help` and provider loading fast

        return fsspec.filesystem(self.protocol, **self._options)

    # error translation ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _boundary(self, action: str, path: str) -> typing.Iterator[None]:
        """Translate the errors a user must act on into ForML errors naming the URL."""
        try:
            yield
        except (FileExistsError, IsADirectoryError, NotADirectoryError):
            raise
        except Exception as err:
            if local_failure(err) and not self.on_local_disk:
                raise  # the local disk's (a download's target), for the caller to name: not the store's doing
            if isinstance(err, PermissionError):
                raise forml.InvalidError(
                    f'Access denied while trying to {action} {self.url_of(path)}: {self.denied_hint} '
                    f'({self._reason(err)})'
                ) from None
            translated = self._translate(err, action, path)
            if translated is None:
                raise
            raise translated from (None if isinstance(translated, forml.InvalidError | forml.MissingError) else err)

    def _translate(self, err: Exception, action: str, path: str) -> BaseException | None:
        """The backend's own translation of an error (``None``: let it pass unchanged)."""
        return None

    def _reason(self, err: BaseException) -> str:
        """A short reason for a message (the backend's error code where it has one)."""
        return str(err)

    # listing ------------------------------------------------------------------------------------------
    def listdir(self, prefix: str) -> list[Entry]:
        """The objects directly under ``prefix`` (a missing prefix lists empty; a missing bucket raises)."""
        with self._boundary('list', prefix):
            try:
                found = self.fs.ls(prefix, detail=True)
            except FileNotFoundError:
                return []
            return [_entry(e['name'], e) for e in found if e.get('type') == 'file']

    def walk(self, prefix: str) -> typing.Iterator[tuple[str, Entry]]:
        """Every object below ``prefix`` (recursive), as (path, entry); for operator tools, not for ForML calls."""
        with self._boundary('list', prefix):
            try:
                found = self.fs.find(prefix, detail=True)
            except FileNotFoundError:
                return
            for path, info in found.items():
                path = path.lstrip('/') if not path.startswith(self.root) else path
                yield path, _entry(path, info)

    # reading ------------------------------------------------------------------------------------------
    def read(self, path: str) -> bytes:
        """The whole object (``FileNotFoundError`` if missing)."""
        with self._boundary('read', path):
            return self.fs.cat_file(path)

    def download(
        self, path: str, target: pathlib.Path, size: int | None = None, sink: digest.Sink | None = None
    ) -> str | None:
        """Download the object to a local file (``size``, where known, lets a backend fetch it in parallel).

        Returns the sha256 of the file if the backend hashed it while writing it (None: the caller hashes it); a
        backend that hashes the file as it lands hashes it in the buffer a reader attaches to ``sink`` (from then on),
        where given, and tells the sink when every byte has landed, before the hash is done; one that returns None
        ignores ``sink``.
        """
        with self._boundary('download', path):
            self.fs.get_file(path, str(target))
        return None

    def head(self, path: str) -> tuple[int, dict[str, str]]:
        """Size and user metadata of an object (``FileNotFoundError`` if missing)."""
        with self._boundary('inspect', path):
            return int(self.fs.info(path)['size']), {}

    def exists(self, path: str) -> bool:
        try:
            self.head(path)
        except FileNotFoundError:
            return False
        return True

    # writing ------------------------------------------------------------------------------------------
    def write(self, path: str, data: Data, *, tags: Labels = None, metadata: Labels = None) -> None:
        """Store the object whole or not at all (bytes, or a local file to upload); overwrites.

        ``tags`` and ``metadata`` are stored where the backend keeps them (see the capability flags) and ignored
        elsewhere: integrity comes from the markers, and lifecycle expiry needs tags anyway.
        """
        with self._boundary('write', path):
            self.fs.pipe_file(path, data.read_bytes() if isinstance(data, pathlib.Path) else data)

    def create(self, path: str, data: bytes) -> None:
        """Create the object exclusively: ``FileExistsError`` if it exists, and then nothing is written."""
        raise NotImplementedError

    # compare-and-swap ------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[bytes, str]:
        """The whole object and its version, read together, for a later :meth:`replace` (``FileNotFoundError``)."""
        raise NotImplementedError

    def replace(self, path: str, data: bytes, version: str | None) -> None:
        """Compare-and-swap: store ``data`` only if the object is still at ``version`` (from :meth:`get`), or, with
        ``version=None``, only if it does not exist; :class:`Changed` (a ``FileExistsError``) otherwise, and then
        nothing is written."""
        if not self.conditional_write:
            raise forml.InvalidError(
                f'{self.url} cannot update an object only if it is unchanged ({self.protocol} store): aliases and '
                'other compare-and-swap updates need s3://, gs://, az://, file:// or memory://'
            )
        raise NotImplementedError

    def verify_exclusive_create(self) -> None:
        """Make sure ``create`` really is exclusive on this store's server before the first commit relies on it
        (``forml.InvalidError`` if not). A no-op where the backend's own code guarantees it; a backend whose
        guarantee depends on the server checks it once per endpoint and process."""

    def delete(self, path: str) -> None:
        """Delete an object (missing is fine)."""
        with self._boundary('delete', path), contextlib.suppress(FileNotFoundError):
            self.fs.rm_file(path)

    def delete_many(self, paths: typing.Iterable[str]) -> None:
        """Delete objects (missing ones are fine): in batches where the backend has a batch delete, else in
        parallel."""
        paths = list(paths)
        if len(paths) <= 1:
            for path in paths:
                self.delete(path)
            return
        with concurrent.futures.ThreadPoolExecutor(DELETE_WORKERS, thread_name_prefix='forml-s3-delete') as pool:
            list(pool.map(self.delete, paths))  # the first failure is raised

    def delete_if_unchanged(self, path: str, version: str) -> bool:
        """Delete the object if it is still ``version`` (its listing's :attr:`Entry.version`); ``False`` if it
        changed. Unconditional where the backend has no conditional delete (see :attr:`conditional_delete`)."""
        self.delete(path)
        return True

    # object tags --------------------------------------------------------------------------------------
    def set_tags(self, path: str, tags: typing.Mapping[str, str]) -> None:
        """Replace the object's tags (an empty mapping clears them); a no-op where objects carry none."""

    def get_tags(self, path: str) -> dict[str, str]:
        """The object's tags (empty where objects carry none)."""
        return {}

    # bucket-level features (lifecycle and its preview) -------------------------------------------------------
    @property
    def bucket(self) -> str:
        """The bucket (container) of the store; ``forml.InvalidError`` where it has no lifecycle rules."""
        if not self.lifecycle:
            raise forml.InvalidError(
                f'{self.url} has no bucket lifecycle rules forml-s3 can manage ({self.protocol} store): '
                f'{self.lifecycle_advice}'
            )
        return self.root.partition('/')[0]

    def lifecycle_rules(self) -> list[dict[str, typing.Any]]:
        """The bucket's lifecycle rules (S3 ``GetBucketLifecycleConfiguration`` shape; none: empty)."""
        _ = self.bucket
        return []

    def set_lifecycle_rules(self, rules: list[dict[str, typing.Any]]) -> None:
        """Replace the bucket's lifecycle configuration (no rules deletes it)."""
        _ = self.bucket

    def multipart_uploads(self, prefix: str) -> list[dict[str, typing.Any]]:
        """Incomplete multipart uploads under ``prefix`` (``Key``, ``UploadId``, ``Initiated``); none elsewhere."""
        return []

    def abort_upload(self, path: str, upload_id: str) -> None:
        """Abort an incomplete multipart upload (its parts go with it); gone already is fine."""
        raise NotImplementedError(f'{self.url} has no multipart uploads')

    def versions(self, prefix: str) -> list[dict[str, typing.Any]]:
        """Every object version and delete marker under ``prefix`` (S3 ``ListObjectVersions`` shape)."""
        _ = self.bucket
        return []


LOCAL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES})
"""What a local disk answers when it cannot take a write: full, over quota, over the file size limit, read-only, not
writable by this user. Storage clients never raise these for the store's own errors (s3fs maps S3's error codes to
other numbers, and a denied request to a ``PermissionError`` without one)."""


def local_failure(err: BaseException) -> bool:
    """Whether an error is the local disk refusing a write (see :data:`LOCAL_ERRNOS`)."""
    return isinstance(err, OSError) and err.errno in LOCAL_ERRNOS


def content_version(data: bytes) -> str:
    """A version that changes whenever the content does (where the store keeps no reliable version of its own)."""
    return hashlib.sha256(data).hexdigest()


def _entry(path: str, info: typing.Mapping[str, typing.Any]) -> Entry:
    """A listing entry from fsspec's ``info`` dictionary."""
    return Entry(path.rstrip('/').rsplit('/', 1)[-1], int(info.get('size') or 0), version_of(info), modified(info))


def version_of(info: typing.Mapping[str, typing.Any]) -> str:
    """The version identity of an object from fsspec's ``info`` (ETag, else size and modification time)."""
    for field in ('ETag', 'etag', 'generation', 'mtime', 'created', 'LastModified', 'last_modified'):
        if info.get(field):
            return f'{info.get("size")}-{info[field]}'
    return str(info.get('size'))


def modified(info: typing.Mapping[str, typing.Any]) -> float | None:
    """Modification time of a listing entry (S3 ``LastModified``; fsspec ``mtime``/``created``), epoch seconds."""
    for field in ('LastModified', 'last_modified', 'mtime', 'updated', 'created'):
        value = info.get(field)
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = datetime.datetime.fromisoformat(value.replace('Z', '+00:00'))
        if isinstance(value, datetime.datetime):
            return (value if value.tzinfo else value.replace(tzinfo=datetime.UTC)).timestamp()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None
