"""The tests' S3 endpoint: the demo's embedded moto server (:mod:`forml_s3.demo.endpoint`) plus what only the tests
and the benchmarks need. :class:`Server` adds a small WSGI middleware that

* records every request (method, path, query string, bytes received, bytes sent, status), and
* injects faults on demand: S3 error responses (``503 SlowDown`` by default) or a dropped connection, and
* can play a server that ignores ``If-None-Match`` on writes to chosen buckets (:meth:`Server.ignore_if_none_match`),

and moto's own controls: :meth:`Server.reset` and IAM enforcement (:meth:`Server.set_auth`).

Usage::

    with embedded.Server() as server:
        server.create_bucket('forml')
        fs = s3fs.S3FileSystem(**server.storage_options())
        ...
        assert server.count(method='GET', query_contains='list-type=2') == 1

It is test machinery, so it lives beside the tests, not in the product; ``benchmarks`` imports it too (for its
request counts), so there is one recording server, and neither ships in the wheel.

Moto keeps its backends (buckets, objects, IAM users) **global per process**: every :class:`Server`
started in one process serves the same buckets, and they outlive :meth:`Server.stop`. Call
:meth:`Server.reset` (moto's ``POST /moto-api/reset``) to start from empty; it resets *all* moto
backends of the process, IAM included.

Moto accepts any credentials by default. :meth:`Server.set_auth` turns IAM enforcement on (moto's
``INITIAL_NO_AUTH_ACTION_COUNT``, a process-wide setting too), after a given number of free requests.
"""

from __future__ import annotations

import collections.abc
import contextlib
import dataclasses
import json
import socket
import threading
import time
import typing
import urllib.request
from xml.sax import saxutils

from forml_s3.demo import endpoint

if typing.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

REGION = endpoint.REGION
"""The region of the server's buckets (the demo endpoint's)."""

CONTROL_HEADER = 'X-Forml-S3-Control'
"""Requests carrying this header (the server's own control calls) are neither recorded nor faulted."""

_CONTROL_ENVIRON = 'HTTP_' + CONTROL_HEADER.upper().replace('-', '_')

_MESSAGES = {
    'SlowDown': 'Please reduce your request rate.',
    'InternalError': 'We encountered an internal error. Please try again.',
    'ServiceUnavailable': 'Service is unable to handle request.',
    'AccessDenied': 'Access Denied',
    'PreconditionFailed': 'At least one of the pre-conditions you specified did not hold',
    'NoSuchKey': 'The specified key does not exist.',
    'NoSuchBucket': 'The specified bucket does not exist',
}


@dataclasses.dataclass(frozen=True)
class Call:
    """What a fault's ``match`` predicate sees of an incoming request (before it is served)."""

    method: str
    path: str
    """The URL path, percent-decoded (``/bucket/key``)."""
    query: str
    """The raw (still percent-encoded) query string."""
    headers: collections.abc.Mapping[str, str]
    """Request headers, names lower-cased."""


@dataclasses.dataclass(frozen=True)
class RequestRecord:
    """One request as served (or faulted) by the server."""

    method: str
    path: str
    """The URL path, percent-decoded (``/bucket/key``)."""
    query: str
    """The raw (still percent-encoded) query string."""
    bytes_in: int
    """The request's ``Content-Length`` (0 when absent)."""
    bytes_out: int
    """Length of the response body actually produced."""
    status: int
    """HTTP status sent; 0 for a dropped connection."""
    fault: str | None = None
    """The injected fault that answered the request (an S3 error code or ``'drop'``), if any."""
    range: str | None = None
    """The request's ``Range`` header (ranged GETs), if any."""


@dataclasses.dataclass
class Fault:
    """An injected fault: the next ``remaining`` requests matching ``match`` fail this way."""

    status: int
    code: str
    message: str
    remaining: int
    match: collections.abc.Callable[[Call], bool] | None = None
    drop: bool = False
    delay: float = 0.0
    fired: int = 0
    """How many requests this fault has answered so far."""

    def matches(self, call: Call) -> bool:
        """Whether this fault applies to ``call``."""
        return self.remaining > 0 and (self.match is None or bool(self.match(call)))


class _CountingBody:
    """Response iterable that counts the bytes it passes on, without buffering them.

    The record is made *before* the last chunk is handed to the server (one chunk of look-ahead), so a client that
    has received the whole response always finds its request recorded. ``close()`` records a response cut short.
    """

    def __init__(
        self,
        body: collections.abc.Iterable[bytes],
        done: collections.abc.Callable[[int], None],
    ):
        self._body = body
        self._done: collections.abc.Callable[[int], None] | None = done
        self._sent = 0

    def _finish(self) -> None:
        done, self._done = self._done, None
        if done is not None:
            done(self._sent)

    def __iter__(self) -> collections.abc.Iterator[bytes]:
        chunks = iter(self._body)
        previous = next(chunks, None)
        while previous is not None:
            current = next(chunks, None)
            self._sent += len(previous)
            if current is None:
                self._finish()
            yield previous
            previous = current
        self._finish()

    def close(self) -> None:
        try:
            close = getattr(self._body, 'close', None)
            if close is not None:
                close()
        finally:
            self._finish()


def _status_code(status: str) -> int:
    try:
        return int(status.split(None, 1)[0])
    except (ValueError, IndexError):
        return 0


def _decode_path(environ: WSGIEnvironment) -> str:
    # PEP 3333 hands the path over as latin-1 decoded bytes.
    raw = environ.get('PATH_INFO', '')
    try:
        return raw.encode('latin-1').decode('utf-8')
    except (UnicodeEncodeError, UnicodeDecodeError):
        return raw


def _content_length(environ: WSGIEnvironment) -> int:
    try:
        return max(int(environ.get('CONTENT_LENGTH') or 0), 0)
    except ValueError:
        return 0


class Middleware:
    """WSGI middleware recording every request and injecting faults (thread-safe)."""

    def __init__(self, app: WSGIApplication):
        self.app = app
        self._lock = threading.Lock()
        self._records: list[RequestRecord] = []
        self._faults: list[Fault] = []
        self._sequence = 0
        self.ignoring_if_none_match: set[str] = set()
        """Buckets whose writes lose their ``If-None-Match`` header before moto sees it."""

    # --- accounting ---------------------------------------------------------------------------------------------
    def _record(self, call: Call, bytes_in: int, bytes_out: int, status: int, fault: str | None = None) -> None:
        record = RequestRecord(
            call.method, call.path, call.query, bytes_in, bytes_out, status, fault, call.headers.get('range')
        )
        with self._lock:
            self._records.append(record)

    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the records so far, in order of completion."""
        with self._lock:
            return list(self._records)

    def reset_counts(self) -> None:
        """Forget the records so far."""
        with self._lock:
            self._records.clear()

    # --- faults -------------------------------------------------------------------------------------------------
    def add_fault(self, fault: Fault) -> None:
        """Queue a fault; faults are tried in the order they were added."""
        with self._lock:
            self._faults.append(fault)

    def clear_faults(self) -> None:
        """Drop every pending fault."""
        with self._lock:
            self._faults.clear()

    def _take_fault(self, call: Call) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(call):
                    fault.remaining -= 1
                    fault.fired += 1
                    if fault.remaining <= 0:
                        self._faults.remove(fault)
                    self._sequence += 1
                    return fault
        return None

    @staticmethod
    def _call(environ: WSGIEnvironment) -> Call:
        headers = {
            key[5:].replace('_', '-').lower(): value for key, value in environ.items() if key.startswith('HTTP_')
        }
        for key in ('CONTENT_TYPE', 'CONTENT_LENGTH'):
            if environ.get(key):
                headers[key.replace('_', '-').lower()] = environ[key]
        return Call(environ.get('REQUEST_METHOD', ''), _decode_path(environ), environ.get('QUERY_STRING', ''), headers)

    @staticmethod
    def _drain(environ: WSGIEnvironment, size: int) -> None:
        stream = environ['wsgi.input']
        while size > 0:
            chunk = stream.read(min(size, 1 << 20))
            if not chunk:
                break
            size -= len(chunk)

    def _fail(self, fault: Fault, call: Call, environ: WSGIEnvironment, start_response: StartResponse) -> list[bytes]:
        bytes_in = _content_length(environ)
        if fault.delay:
            time.sleep(fault.delay)
        if fault.drop:
            # Read the request first, so the client sees "connection closed without a response" rather than a
            # broken pipe mid-upload; then shut the socket down and let werkzeug treat it as a dropped connection.
            self._drain(environ, bytes_in)
            self._record(call, bytes_in, 0, 0, 'drop')
            sock = environ.get('werkzeug.socket')
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            raise ConnectionAbortedError('forml-s3 test server: injected connection drop')
        request_id = f'FORMLS3FAULT{self._sequence:08d}'
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Error><Code>{saxutils.escape(fault.code)}</Code><Message>{saxutils.escape(fault.message)}</Message>'
            f'<Resource>{saxutils.escape(call.path)}</Resource><RequestId>{request_id}</RequestId></Error>'
        ).encode()
        if call.method == 'HEAD':
            body = b''
        start_response(
            f'{fault.status} {fault.code}',
            [
                ('Content-Type', 'application/xml'),
                ('Content-Length', str(len(body))),
                ('x-amz-request-id', request_id),
            ],
        )
        self._record(call, bytes_in, len(body), fault.status, fault.code)
        return [body]

    # --- WSGI ---------------------------------------------------------------------------------------------------
    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> collections.abc.Iterable[bytes]:
        if environ.get(_CONTROL_ENVIRON):
            return self.app(environ, start_response)
        call = self._call(environ)
        fault = self._take_fault(call) if self._faults else None
        if fault is not None:
            return self._fail(fault, call, environ, start_response)

        status: list[int] = [0]

        def recording_start_response(code: str, headers: typing.Any, exc_info: typing.Any = None) -> typing.Any:
            status[0] = _status_code(code)
            return start_response(code, headers, exc_info)

        bytes_in = _content_length(environ)
        if call.method in ('PUT', 'POST') and call.path.split('/')[1] in self.ignoring_if_none_match:
            environ = {k: v for k, v in environ.items() if k != 'HTTP_IF_NONE_MATCH'}

        def done(sent: int) -> None:
            self._record(call, bytes_in, sent, status[0])

        try:
            body = self.app(environ, recording_start_response)
        except Exception:
            self._record(call, bytes_in, 0, 500)
            raise
        return _CountingBody(body, done)


class Server(endpoint.Server):
    """The demo's embedded moto server with a request log (:attr:`requests`, :meth:`count`), injectable faults
    (:meth:`inject`) and moto's controls (:meth:`reset`, :meth:`set_auth`).

    Args:
        port: TCP port to bind on ``127.0.0.1``; 0 picks a free one.
        verbose: Log every request line (werkzeug's access log) when true.
    """

    def __init__(self, port: int = 0, *, verbose: bool = False):
        super().__init__(port, verbose=verbose)
        self._middleware: Middleware | None = None

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        """Put the recording and faulting middleware in front of the served application."""
        self._middleware = Middleware(app)
        return self._middleware

    @property
    def _mw(self) -> Middleware:
        return endpoint.started(self._middleware)

    # --- accounting ---------------------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RequestRecord]:
        """A copy of the request records so far (the server's own control calls excluded)."""
        return self._mw.requests

    def reset_counts(self) -> None:
        """Forget the request records so far."""
        self._mw.reset_counts()

    def count(
        self,
        method: str | None = None,
        path_prefix: str | None = None,
        query_contains: str | None = None,
    ) -> int:
        """Number of recorded requests matching all the given criteria.

        Args:
            method: HTTP method (case-insensitive), e.g. ``'PUT'``.
            path_prefix: Prefix of the decoded URL path, e.g. ``'/bucket/root/'``.
            query_contains: Substring of the raw query string, e.g. ``'list-type=2'``, ``'tagging'``, ``'uploads'``.
        """
        method = method.upper() if method else None
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method)
            and (path_prefix is None or r.path.startswith(path_prefix))
            and (query_contains is None or query_contains in r.query)
        )

    # --- faults -------------------------------------------------------------------------------------------------
    def inject(
        self,
        status: int = 503,
        code: str = 'SlowDown',
        count: int = 1,
        match: collections.abc.Callable[[Call], bool] | None = None,
        *,
        message: str | None = None,
        drop: bool = False,
        delay: float = 0.0,
    ) -> Fault:
        """Make the next ``count`` requests matching ``match`` fail.

        The failing requests never reach moto: they get ``status`` with an S3 XML error body
        (``<Error><Code>code</Code><Message>...</Message>...</Error>``), or, with ``drop=True``, the server reads the
        request and closes the connection without any response. Faults are tried in the order injected.

        Args:
            status: HTTP status of the error response.
            code: S3 error code (``SlowDown``, ``InternalError``, ``AccessDenied``, ...).
            count: How many matching requests fail.
            match: Predicate over the incoming :class:`Call`; ``None`` matches every request.
            message: Error message; a stock S3 message for the code by default.
            drop: Close the connection without a response instead of answering.
            delay: Seconds to wait before failing (for timeout tests).

        Returns:
            The queued :class:`Fault` (its ``fired`` counts the requests it has answered).
        """
        if count < 1:
            raise ValueError('count must be positive')
        fault = Fault(
            status=status,
            code=code,
            message=message if message is not None else _MESSAGES.get(code, code),
            remaining=count,
            match=match,
            drop=drop,
            delay=delay,
        )
        self._mw.add_fault(fault)
        return fault

    def clear_faults(self) -> None:
        """Drop every pending injected fault."""
        self._mw.clear_faults()

    def ignore_if_none_match(self, bucket: str, ignore: bool = True) -> None:
        """Play a server without conditional writes for ``bucket``: its PUTs and POSTs lose ``If-None-Match`` before
        moto sees them, so an exclusive create overwrites (what some S3-compatible servers have shipped)."""
        if ignore:
            self._mw.ignoring_if_none_match.add(bucket)
        else:
            self._mw.ignoring_if_none_match.discard(bucket)

    # --- moto state ---------------------------------------------------------------------------------------------
    def _control(self, path: str, data: bytes = b'') -> dict[str, typing.Any]:
        # text/plain: a form content type would make Flask consume the body moto reads as ``request.data``.
        headers = {CONTROL_HEADER: '1', 'Content-Type': 'text/plain'}
        request = urllib.request.Request(self.endpoint + path, data=data, method='POST', headers=headers)
        with urllib.request.urlopen(request, timeout=30) as response:  # our own loopback endpoint
            return json.loads(response.read() or b'{}')

    def reset(self) -> None:
        """Reset moto (``POST /moto-api/reset``): all buckets and objects go.

        Moto's backends are global per process, so this empties *every* moto backend of the process (IAM included),
        whichever server instance it is called on. Request records and faults are kept (see :meth:`reset_counts`).
        """
        self._control('/moto-api/reset')

    def set_auth(self, free_requests: float = 0) -> float:
        """Make moto enforce IAM credentials after ``free_requests`` more requests (``POST /moto-api/reset-auth``).

        Moto accepts any credentials by default (``float('inf')``). With enforcement on, every request must be
        signed with the keys of an IAM user (created while still free, or with the root keys below) whose policies
        allow the action. The setting is process-wide; restore it with ``set_auth(float('inf'))``.

        Returns:
            The previous setting.
        """
        answer = self._control('/moto-api/reset-auth', str(float(free_requests)).encode())
        return float(answer.get('PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT', 'inf'))
