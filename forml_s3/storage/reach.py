"""Fail fast, and say so, when the S3 endpoint cannot be reached.

botocore retries a refused or timed-out connection like any other failure: with the standard retry mode and
five retries that is 13 to 31 s of silence before a command fails, and minutes against an address that drops
packets (its connect timeout is 60 s). Here a failure to connect is retried :data:`CONNECT_RETRIES` times (the
storage option ``connect_retries``), each retry announced by a warning naming the endpoint, after a connect timeout
of :data:`CONNECT_TIMEOUT` seconds (``connect_timeout``). Throttling, 5xx answers and connections dropped after
they were made keep botocore's retries (``max_attempts``): the endpoint is there, just struggling.

The rule is a ``needs-retry`` handler registered first on each client s3fs creates (:class:`S3FileSystem`):
it answers ``False`` ("do not retry") for a connection failure past its budget, and nothing otherwise, leaving the
delay to botocore's own retry handler.
"""

import logging
import typing
import urllib.parse

import s3fs

LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection to the endpoint (botocore's default is 60)."""
CONNECT_RETRIES = 2
"""Retries of a request whose connection could not be made (refused, unresolvable, timed out)."""


def unreachable(err: BaseException | None) -> bool:
    """Whether an error means no connection to the endpoint could be made (nothing was sent)."""
    from botocore import exceptions

    return isinstance(err, exceptions.EndpointConnectionError | exceptions.ConnectTimeoutError)


def endpoint_of(err: BaseException) -> str:
    """The endpoint (scheme, host and port) a connection failure names."""
    url = urllib.parse.urlsplit(str(getattr(err, 'kwargs', {}).get('endpoint_url') or ''))
    return f'{url.scheme}://{url.netloc}' if url.netloc else 'the S3 endpoint'


class Unreachable(Exception):
    """No connection to the endpoint could be made, its retries spent (raised where the client has no such error)."""

    def __init__(self, endpoint: str):
        super().__init__(f'Cannot connect to {endpoint}')
        self.endpoint = endpoint


def message(
    endpoint: str,
    where: str,
    retries: int,
    store: str = 'S3',
    setting: str = 'endpoint_url (or AWS_ENDPOINT_URL)',
    tuning: str = 'connect_retries and connect_timeout',
) -> str:
    """The one line saying that the endpoint could not be reached, and what to check."""
    tried = f', {retries} {"retry" if retries == 1 else "retries"}' if retries else ''
    return (
        f'Cannot connect to the {store} endpoint {endpoint} (while trying to {where}{tried}): check {setting} and '
        f'that the server is up and reachable from here; the registry is unchanged by this step (how long to try: '
        f'storage options {tuning})'
    )


def retrying(endpoint: str, reason: str, attempt: int, retries: int) -> None:
    """Say that a connection failed and is retried."""
    LOGGER.warning('Cannot connect to %s (%s): retrying (%d of %d)', endpoint, reason, attempt, retries)


def install(events: typing.Any, retries: int) -> None:
    """Limit the retries of failed connections to ``retries`` on a client's event system (once per client)."""

    def needs_retry(attempts: int, caught_exception: BaseException | None = None, **_: typing.Any) -> bool | None:
        if not unreachable(caught_exception):
            return None  # botocore's retry handler decides
        if attempts > retries:
            return False
        retrying(endpoint_of(caught_exception), type(caught_exception).__name__, attempts, retries)
        return None

    events.register_first('needs-retry.s3', needs_retry, unique_id='forml-s3-connect-retries')


class S3FileSystem(s3fs.S3FileSystem):
    """s3fs's file system whose clients retry failed connections only ``connect_retries`` times (announced)."""

    def __init__(self, *args: typing.Any, connect_retries: int = CONNECT_RETRIES, **kwargs: typing.Any):
        if isinstance(connect_retries, bool) or not isinstance(connect_retries, int) or connect_retries < 0:
            import forml

            raise forml.InvalidError(
                f'Invalid storage option connect_retries={connect_retries!r}: expected a whole number >= 0'
            )
        super().__init__(*args, **kwargs)
        self.connect_retries = connect_retries

    async def set_session(self, refresh: bool = False, kwargs: typing.Mapping[str, typing.Any] = {}) -> typing.Any:  # noqa: B006 - s3fs's signature
        client = await super().set_session(refresh, kwargs)
        install(client.meta.events, self.connect_retries)
        return client

    _connect = set_session
