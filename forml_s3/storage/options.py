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

from . import redact

DEFAULT_RETRIES = {'mode': 'standard', 'max_attempts': 5}
DEFAULT_POOL = 32
SSE_MODES = ('AES256', 'aws:kms')

_CONFIG_KEYS = ('connect_timeout', 'read_timeout', 'request_checksum_calculation', 'response_checksum_validation')


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
