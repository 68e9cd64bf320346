"""One function maps the user's ``storage_options`` to S3 client arguments (the place to look for "which
option does what").

Everything s3fs's ``S3FileSystem`` accepts passes through unchanged (``endpoint_url``, ``key``/``secret``,
``profile``, ``client_kwargs``, ``config_kwargs``, ``s3_additional_kwargs``, ...). On top of that these
conveniences are understood (all optional):

========================================  ==========================================================
``region``                                 ``client_kwargs.region_name``
``retry_mode`` / ``max_attempts``          botocore retry policy (throttling, 5xx, dropped connections);
                                           ``max_attempts`` counts retries after the first try (botocore's
                                           meaning); default ``retry_mode = "standard"``, ``max_attempts = 5``
``connect_timeout`` / ``read_timeout``     botocore timeouts in seconds
``connect_retries``                        retries of a connection that could not be made (default 2, announced)
``request_checksum_calculation``           botocore >= 1.36 default checksums: set ``"when_required"`` for
``response_checksum_validation``           S3-compatible stores that reject them (MinIO, R2; boto3 issue 4398)
``sse`` = "AES256" | "aws:kms"             server-side encryption of every object written
``sse_kms_key_id``                         the KMS key for ``sse = "aws:kms"``
``max_pool_connections``                   HTTP connection pool size (default 32)
``retries``                                s3fs's own retry count around each botocore call (default 5)
========================================  ==========================================================

Listings are never served from s3fs's listings cache (``use_listings_cache=False``): the registry keeps its
own short-lived listing cache, invalidated on its own writes. ``AWS_ENDPOINT_URL`` and the rest of the AWS
environment are honoured by botocore as usual, since nothing here forces an endpoint. Mapping options also
installs :mod:`forml_s3.storage.redact`'s filter on the S3 libraries' loggers, so their DEBUG output never shows the
credentials.
"""

import copy
import typing

import forml

from .. import settings
from . import redact

DEFAULT_RETRIES = {'mode': 'standard', 'max_attempts': 5}
DEFAULT_POOL = 32
SSE_MODES = ('AES256', 'aws:kms')

_CONFIG_KEYS = ('connect_timeout', 'read_timeout', 'request_checksum_calculation', 'response_checksum_validation')

CHECKSUM_POLICIES = ('when_supported', 'when_required')
CONVENIENCES: dict[str, tuple[typing.Any, tuple[str, ...]]] = {
    'region': (str, ()),
    'retry_mode': (str, ('legacy', 'standard', 'adaptive')),
    'max_attempts': (int, ()),
    'connect_timeout': (float, ()),
    'connect_retries': (int, ()),
    'read_timeout': (float, ()),
    'request_checksum_calculation': (str, CHECKSUM_POLICIES),
    'response_checksum_validation': (str, CHECKSUM_POLICIES),
    'sse': (str, SSE_MODES),
    'sse_kms_key_id': (str, ()),
    'max_pool_connections': (int, ()),
    'retries': (int, ()),
}
"""The options forml-s3 adds on S3: each one's type and, where it is a choice, the accepted values."""
_TABLES = ('client_kwargs', 'config_kwargs', 's3_additional_kwargs')
_STRINGS = ('endpoint_url', 'key', 'secret', 'token', 'profile')
_LISTING_CACHE = ('use_listings_cache', 'listings_expiry_time', 'max_paths', 'skip_instance_cache')
"""What fsspec's file system base takes from the options s3fs passes on."""


def check_s3(storage_options: typing.Mapping[str, typing.Any]) -> None:
    """Refuse, in one line, an S3 storage option no layer takes (s3fs, its aiobotocore session, fsspec's listing
    cache, forml-s3's conveniences), or one of the wrong type or value, before any client is made: unchecked, a
    typo reaches ``AioSession.__init__`` as a ``TypeError`` at the first request.

    Raises:
        settings.Invalid: Naming the option, the nearest accepted one and all of them.
    """
    if not isinstance(storage_options, typing.Mapping):
        raise settings.wrong_type('setting', 'storage_options', storage_options, typing.Mapping)
    hints = {**{k: t for k, (t, _) in CONVENIENCES.items()}, **dict.fromkeys(_TABLES, typing.Mapping)}
    hints.update(dict.fromkeys(_STRINGS, str | None))
    accepted = sorted({*hints, *_LISTING_CACHE, *_s3fs_arguments()})
    for key, value in storage_options.items():
        if key not in accepted:
            raise settings.unknown('storage option', key, accepted)
        hint = hints.get(key) or _default_type(key)
        if hint is not None and not settings.matches(value, hint):
            raise settings.wrong_type('storage option', key, value, hint)
        choices = CONVENIENCES.get(key, (None, ()))[1]
        if choices and value not in choices:
            raise settings.Invalid(
                f'Invalid storage option {key} = {value!r}: {settings.suggest(value, choices)}(expected one of '
                f'{", ".join(choices)})'
            )


def _s3fs_arguments() -> list[str]:
    """The keywords ``S3FileSystem`` takes by name, and those it hands to its ``AioSession`` (``profile``, ...)."""
    import inspect

    import aiobotocore.session  # lazy: only when an S3 store is opened
    import s3fs

    names = []
    for function in (s3fs.S3FileSystem.__init__, aiobotocore.session.AioSession.__init__):
        names += [p.name for p in inspect.signature(function).parameters.values() if p.kind is p.KEYWORD_ONLY
                  or (p.kind is p.POSITIONAL_OR_KEYWORD and p.name != 'self')]  # fmt: skip
    return names


def _default_type(key: str) -> type | None:
    """The type of an ``S3FileSystem`` keyword whose default says it (``anon=False``: bool), else ``None``."""
    import inspect

    import s3fs

    param = inspect.signature(s3fs.S3FileSystem.__init__).parameters.get(key)
    default = None if param is None else param.default
    return type(default) if isinstance(default, bool | int) else None


def s3_kwargs(storage_options: typing.Mapping[str, typing.Any]) -> dict[str, typing.Any]:
    """``S3FileSystem`` keyword arguments for the given user ``storage_options`` (``retries`` excluded: it is
    an attribute of the file system, see :func:`s3fs_retries`)."""
    redact.install(_secret_values(storage_options))
    options = copy.deepcopy(dict(storage_options))
    options.pop('retries', None)
    config = dict(options.pop('config_kwargs', None) or {})
    client = dict(options.pop('client_kwargs', None) or {})
    additional = dict(options.pop('s3_additional_kwargs', None) or {})

    if 'region' in options:
        client.setdefault('region_name', options.pop('region'))
    retries = dict(config.get('retries') or DEFAULT_RETRIES)
    if 'retry_mode' in options:
        retries['mode'] = options.pop('retry_mode')
    if 'max_attempts' in options:
        retries['max_attempts'] = int(options.pop('max_attempts'))
    config['retries'] = retries
    for key in _CONFIG_KEYS:
        if key in options:
            config[key] = options.pop(key)
    config.setdefault('max_pool_connections', options.pop('max_pool_connections', DEFAULT_POOL))

    sse = options.pop('sse', None)
    kms_key = options.pop('sse_kms_key_id', None)
    if sse is not None:
        if sse not in SSE_MODES:
            raise forml.InvalidError(f'Invalid storage option sse={sse!r}: expected one of {", ".join(SSE_MODES)}')
        additional['ServerSideEncryption'] = sse
    if kms_key:
        if sse != 'aws:kms':
            raise forml.InvalidError('Storage option sse_kms_key_id needs sse = "aws:kms"')
        additional['SSEKMSKeyId'] = kms_key

    options.setdefault('use_listings_cache', False)
    options['config_kwargs'] = config
    if client:
        options['client_kwargs'] = client
    if additional:
        options['s3_additional_kwargs'] = additional
    return options


def s3fs_retries(storage_options: typing.Mapping[str, typing.Any]) -> int | None:
    """s3fs's own retry count if the user set one (s3fs has no constructor argument for it)."""
    retries = storage_options.get('retries')
    if retries is None:
        return None
    if not isinstance(retries, int) or retries < 1:
        raise forml.InvalidError(f'Invalid storage option retries={retries!r}: expected a whole number >= 1')
    return retries


SECRET_KEYS = ('key', 'secret', 'token', 'aws_access_key_id', 'aws_secret_access_key', 'aws_session_token')


def _secret_values(storage_options: typing.Mapping[str, typing.Any]) -> list[typing.Any]:
    """The credential values set anywhere in ``storage_options`` (for :mod:`forml_s3.storage.redact` to mask)."""
    found = []
    for key, value in storage_options.items():
        if isinstance(value, typing.Mapping):
            found += _secret_values(value)
        elif str(key).lower() in SECRET_KEYS and value:
            found.append(value)
    return found


def redacted(storage_options: typing.Mapping[str, typing.Any]) -> dict[str, typing.Any]:
    """A copy safe to log or show: credential values replaced by ``***``."""

    def scrub(value: typing.Any) -> typing.Any:
        if isinstance(value, typing.Mapping):
            return {k: '***' if str(k).lower() in SECRET_KEYS else scrub(v) for k, v in value.items()}
        return value

    return scrub(storage_options)
