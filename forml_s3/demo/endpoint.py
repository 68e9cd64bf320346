"""Embedded S3 endpoint (moto) for the demo, the tests and the benchmarks.

:class:`Server` runs moto's S3 server application in-process, in a background thread, on
``127.0.0.1`` with an ephemeral port, behind a small WSGI middleware that

* records every request (method, path, query string, bytes received, bytes sent, status), and
* injects faults on demand: S3 error responses (``503 SlowDown`` by default) or a dropped connection, and
* can play a server that ignores ``If-None-Match`` on writes to chosen buckets (:meth:`Server.ignore_if_none_match`).

Usage::

    with embedded.Server() as server:
        server.create_bucket('forml')
        fs = s3fs.S3FileSystem(**server.storage_options())
        ...
        assert server.count(method='GET', query_contains='list-type=2') == 1

A subprocess (the ``forml`` CLI, say) reaches the server through :meth:`Server.client_env`: botocore
honours ``AWS_ENDPOINT_URL``.

Moto keeps its backends (buckets, objects, IAM users) **global per process**: every :class:`Server`
started in one process serves the same buckets, and they outlive :meth:`Server.stop`. Call
:meth:`Server.reset` (moto's ``POST /moto-api/reset``) to start from empty; it resets *all* moto
backends of the process, IAM included.

Moto accepts any credentials by default. :meth:`Server.set_auth` turns IAM enforcement on (moto's
``INITIAL_NO_AUTH_ACTION_COUNT``, a process-wide setting too), after a given number of free requests.

``python -m forml_s3.demo.endpoint`` starts a server and prints its endpoint until Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections.abc
import contextlib
import dataclasses
import json
import logging
import signal
import socket
import threading
import time
import typing
import urllib.request
from xml.sax import saxutils

if typing.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

LOGGER = logging.getLogger(__name__)

HOST = '127.0.0.1'
REGION = 'us-east-1'
ACCESS_KEY = 'testing'
SECRET_KEY = 'testing'

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


def client_env(endpoint: str) -> dict[str, str]:
    """Environment variables pointing an AWS SDK client (boto3, s3fs, the forml CLI) at ``endpoint``.

    Args:
        endpoint: The endpoint URL, e.g. ``http://127.0.0.1:5000``.

    Returns:
        Dummy credentials, the region and ``AWS_ENDPOINT_URL`` (honoured by botocore >= 1.31).
    """
    return {
        'AWS_ACCESS_KEY_ID': ACCESS_KEY,
        'AWS_SECRET_ACCESS_KEY': SECRET_KEY,
        'AWS_DEFAULT_REGION': REGION,
        'AWS_ENDPOINT_URL': endpoint,
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
        self._conditional = threading.Lock()
        """Serialises conditional writes (moto's own check-then-store is not atomic)."""
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
            raise ConnectionAbortedError('forml-s3 embedded server: injected connection drop')
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
            if environ.get('REQUEST_METHOD') in ('PUT', 'POST') and (
                environ.get('HTTP_IF_NONE_MATCH') or environ.get('HTTP_IF_MATCH')
            ):  # moto checks the condition, then stores, unlocked: two racing exclusive creates could both win
                with self._conditional:
                    body = self.app(environ, recording_start_response)
            else:
                body = self.app(environ, recording_start_response)
        except Exception:
            self._record(call, bytes_in, 0, 500)
            raise
        return _CountingBody(body, done)


class Server:
    """Moto's S3 server in a background thread on ``127.0.0.1`` (ephemeral port by default).

    Every request is recorded (:attr:`requests`, :meth:`count`) and faults can be injected (:meth:`inject`).
    Moto's state is global per process: see the module docstring and :meth:`reset`.

    Args:
        port: TCP port to bind on ``127.0.0.1``; 0 picks a free one.
        verbose: Log every request line (werkzeug's access log) when true.
    """

    def __init__(self, port: int = 0, *, verbose: bool = False):
        self._requested_port = port
        self._verbose = verbose
        self._server: typing.Any = None
        self._thread: threading.Thread | None = None
        self._middleware: Middleware | None = None
        self._port: int | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------------
    def start(self) -> Server:
        """Start serving (idempotent); returns self."""
        if self._server is not None:
            return self
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        verbose = self._verbose

        class Handler(MotoRequestHandler):
            def log_request(self, code: typing.Any = '-', size: typing.Any = '-') -> None:
                if verbose:
                    super().log_request(code, size)

        middleware = Middleware(DomainDispatcherApplication(create_backend_app))
        server = make_server(HOST, self._requested_port, middleware, threaded=True, request_handler=Handler)
        server.daemon_threads = True
        self._middleware = middleware
        self._server = server
        self._port = int(server.server_port)
        self._thread = threading.Thread(target=server.serve_forever, name=f'forml-s3-moto-{self._port}', daemon=True)
        self._thread.start()
        LOGGER.debug('embedded S3 server listening on %s', self.endpoint)
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent). Moto's state stays (it is per process)."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """Whether the server is serving."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound TCP port."""
        if self._port is None:
            raise RuntimeError('Server not started')
        return self._port

    @property
    def endpoint(self) -> str:
        """The endpoint URL, ``http://127.0.0.1:<port>``."""
        return f'http://{HOST}:{self.port}'

    @property
    def _mw(self) -> Middleware:
        if self._middleware is None:
            raise RuntimeError('Server not started')
        return self._middleware

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
        with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (our own loopback endpoint)
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

    # --- clients ------------------------------------------------------------------------------------------------
    def client_env(self) -> dict[str, str]:
        """Environment variables pointing AWS SDK clients of a subprocess at this server."""
        return client_env(self.endpoint)

    def storage_options(self, **extra: typing.Any) -> dict[str, typing.Any]:
        """``s3fs.S3FileSystem`` keyword arguments (dummy credentials) for this server; ``extra`` overrides."""
        return {
            'key': ACCESS_KEY,
            'secret': SECRET_KEY,
            'endpoint_url': self.endpoint,
            'client_kwargs': {'region_name': REGION},
            **extra,
        }

    def client(self, service: str = 's3', **kwargs: typing.Any) -> typing.Any:
        """A boto3 client for this server with dummy credentials in ``us-east-1``; ``kwargs`` override."""
        import boto3

        options: dict[str, typing.Any] = {
            'endpoint_url': self.endpoint,
            'region_name': REGION,
            'aws_access_key_id': ACCESS_KEY,
            'aws_secret_access_key': SECRET_KEY,
            **kwargs,
        }
        return boto3.client(service, **options)

    def create_bucket(self, name: str) -> str:
        """Create a bucket (boto3, dummy credentials, ``us-east-1``); returns its name."""
        self.client().create_bucket(Bucket=name)
        return name


def main(argv: collections.abc.Sequence[str] | None = None) -> None:
    """Start an embedded S3 server, print its endpoint and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(prog='python -m forml_s3.demo.endpoint', description=main.__doc__)
    parser.add_argument('-p', '--port', type=int, default=0, help='port on 127.0.0.1 (default: a free one)')
    parser.add_argument('-b', '--bucket', action='append', default=[], help='bucket to create (repeatable)')
    parser.add_argument('-v', '--verbose', action='store_true', help='log every request')
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO)
    with Server(args.port, verbose=args.verbose) as server:
        for bucket in args.bucket:
            server.create_bucket(bucket)
        print(f'Embedded S3 endpoint: {server.endpoint}', flush=True)
        for key, value in server.client_env().items():
            print(f'export {key}={value}', flush=True)
        print('Press Ctrl-C to stop.', flush=True)
        stopped = threading.Event()

        def stop(signum: int, frame: typing.Any) -> None:
            stopped.set()

        # Explicit handlers: SIGINT may be ignored in a background job, and SIGTERM should stop cleanly too.
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, stop)
        while not stopped.wait(1):
            pass
        print('Stopped.', flush=True)


if __name__ == '__main__':
    main()
