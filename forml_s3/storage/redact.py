"""Keeps credentials out of the S3 client libraries' own DEBUG logs.

botocore logs every request it sends at DEBUG (``botocore.endpoint``: the ``Authorization`` header, whose
``Credential=`` names the access key id, and ``X-Amz-Security-Token``) and the canonical request it signs
(``botocore.auth``); aiobotocore, s3fs and urllib3 log URLs, which for presigned ones carry the same. A user
who turns on DEBUG logging to debug a registry would paste them into a ticket. :func:`install` puts a
:class:`Redacting` filter on those libraries' loggers: it rewrites such records before any handler sees them
(access key ids, session tokens and signatures become ``***``, as do the key, secret and token configured in
``storage_options``). It costs nothing unless DEBUG logging is on: a logger creates no record for a level it
does not log.
"""

import logging
import re
import threading
import typing

MASK = '***'
LIBRARIES = ('botocore', 'aiobotocore', 's3fs', 'urllib3', 'fsspec')
"""Logger name prefixes whose records are redacted."""
KNOWN = (
    'botocore.endpoint',
    'botocore.auth',
    'botocore.httpsession',
    'botocore.parsers',
    'botocore.hooks',
    'botocore.credentials',
    'botocore.utils',
    'aiobotocore.endpoint',
    'aiobotocore.httpsession',
    'aiobotocore.credentials',
    'urllib3.connectionpool',
    's3fs',
)
"""The loggers known to print requests or credentials (created here if not yet, so the filter is on them from
their first record)."""

PATTERNS = (
    # Authorization: AWS4-HMAC-SHA256 Credential=AKIA.../20261201/..., and X-Amz-Credential=AKIA...%2F... in URLs
    re.compile(r'(Credential=)([^/\s,\'"&%]+)'),
    # the session token as a header (dict repr or canonical request) or a query parameter
    re.compile(r'(x-amz-security-token[\'"]?\s*[:=]\s*b?[\'"]?)([^\s,\'"&]+)', re.IGNORECASE),
    # the request signature (useless alone, but replayable within its validity)
    re.compile(r'(Signature=)([0-9a-f]{16,})', re.IGNORECASE),
    re.compile(r'((?:aws_access_key_id|aws_secret_access_key|aws_session_token)[\'"]?\s*[:=]\s*[\'"]?)([^\s,\'"}]+)'),
)

_lock = threading.Lock()
_secrets: set[str] = set()


def scrub(text: str) -> str:
    """``text`` with access key ids, session tokens, signatures and every registered secret masked."""
    for pattern in PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    with _lock:
        secrets = sorted(_secrets, key=len, reverse=True)
    for secret in secrets:
        text = text.replace(secret, MASK)
    return text


class Redacting(logging.Filter):
    """Rewrites a record's message with its credentials masked (the record is kept, never dropped)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record is the logging module's to report, not ours
            return True
        clean = scrub(message)
        if clean != message:
            record.msg, record.args = clean, ()
        return True


FILTER = Redacting()


def install(secrets: typing.Iterable[typing.Any] = ()) -> None:
    """Put the filter on the S3 libraries' loggers (idempotent) and mask these configured values too.

    Filters on a logger apply only to the records created at that very logger, not to its children's, so the
    filter goes on each of them: the known ones (created if need be) and every other one existing by now.
    """
    with _lock:
        _secrets.update(s for s in map(str, secrets) if len(s) >= 4)  # a short value would mask innocent text
        names = set(KNOWN) | {name for name in logging.root.manager.loggerDict if name.split('.', 1)[0] in LIBRARIES}
    for name in names:
        logger = logging.getLogger(name)
        if FILTER not in logger.filters:
            logger.addFilter(FILTER)
