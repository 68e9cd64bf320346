"""A fault-injecting HTTP proxy for the soak: sits between clients and an object store's server on ``127.0.0.1``.

Every request is forwarded to the upstream server unless the proxy, drawing from one seeded random generator,
decides to fail it. Faults come in two families, because they mean different things to a client:

* **before** the server sees the request (nothing happened): an error response (``500``, ``503``, and the
  store's "slow down": S3's ``503 SlowDown``, GCS's ``429 rateLimitExceeded``, Azure's ``503 ServerBusy``), in the
  store's own error format (:data:`DIALECTS`: S3's XML body, the GCS JSON API's JSON body, Azure's XML body with
  its ``x-ms-error-code`` header), or the connection reset while the request is being received (mid-request);
* **after** the server has applied it (something happened, the client cannot know): a ``500 InternalError``
  instead of the real answer, the connection reset before any response byte or in the middle of the body, or
  the body truncated (headers promise the full length, the connection closes early).

A delay (the response held back for up to a second) is drawn on its own. The proxy speaks plain HTTP/1.1 with
keep-alive, answers ``Expect: 100-continue`` itself, and reads request bodies by ``Content-Length`` or chunked
encoding; one thread per client connection, one upstream connection per client connection. A ``Location``
header naming the upstream server (a GCS resumable upload's session URL) is rewritten to name the proxy, so the
rest of the upload comes through it too.

With many clients the order in which requests draw from the generator depends on scheduling, so a seed replays
the same fault mix and rates, not the same fault on the same request.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import http.client
import json
import random
import socket
import socketserver
import struct
import threading
import time
import typing

ERRORS = {
    'error-500': (500, 'InternalError', 'We encountered an internal error. Please try again.'),
    'error-503': (503, 'ServiceUnavailable', 'Service is unable to handle request.'),
    'slowdown': (503, 'SlowDown', 'Please reduce your request rate.'),
}
"""The injected error responses by fault kind: status, S3 error code, message."""
DIALECTS = ('s3', 'gcs', 'azure')
"""The error formats the proxy speaks (the clients parse them: a wrong one is a different failure)."""
_GCS_ERRORS = {
    'error-500': (500, 'backendError'),
    'error-503': (503, 'backendError'),
    'slowdown': (429, 'rateLimitExceeded'),
}
_AZURE_ERRORS = {
    'error-500': (500, 'InternalError'),
    'error-503': (503, 'ServerBusy'),
    'slowdown': (503, 'ServerBusy'),
}
BEFORE = (*ERRORS, 'reset-request')
"""Faults injected before the request reaches the server."""
AFTER = ('error-after', 'reset-response', 'reset-body', 'truncate')
"""Faults injected after the server has applied the request."""
KINDS = (*BEFORE, *AFTER, 'delay')
HOP_BY_HOP = {'connection', 'keep-alive', 'transfer-encoding', 'expect', 'proxy-connection', 'te', 'upgrade'}


@dataclasses.dataclass(frozen=True)
class Rates:
    """Probability of each fault per request (the rest is forwarded untouched)."""

    before: float = 0.03
    """Of a fault before the server sees the request (split evenly among :data:`BEFORE`)."""
    after: float = 0.02
    """Of a fault after the server applied it (split evenly among :data:`AFTER`)."""
    delay: float = 0.03
    """Of a delayed response (independent of the others)."""
    max_delay: float = 1.0


class Proxy:
    """The proxy on ``127.0.0.1`` (ephemeral port), forwarding to ``upstream`` (``http://host:port``)."""

    def __init__(
        self,
        upstream: str,
        seed: int,
        rates: Rates = Rates(),
        force: typing.Callable[[str, str], str | None] | None = None,
        dialect: str = 's3',
    ):
        if dialect not in DIALECTS:
            raise ValueError(f'dialect must be one of {DIALECTS}, not {dialect!r}')
        host, _, port = upstream.removeprefix('http://').rstrip('/').partition(':')
        self.upstream = (host, int(port or 80))
        self.dialect = dialect
        self.rates = rates
        self.force = force
        """Given a request's method and target, a fault kind to inject for certain (tests), or None to draw."""
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self.faults: collections.Counter[str] = collections.Counter()
        self.requests: collections.Counter[str] = collections.Counter()
        self.enabled = True
        proxy = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                proxy._serve(self.request)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 128

        self._server = Server(('127.0.0.1', 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, name='chaos-proxy', daemon=True)

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self._server.server_address[1]}'

    def start(self) -> Proxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Proxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, typing.Any]:
        with self._lock:
            return {'requests': dict(self.requests), 'faults': dict(self.faults)}

    # decisions --------------------------------------------------------------------------------------------
    def _draw(self, method: str, target: str) -> tuple[str | None, float]:
        """The fault for one request (or None) and its delay in seconds (0: none)."""
        with self._lock:
            if self.force and (forced := self.force(method, target)):
                return forced, 0.0
            if not self.enabled:
                return None, 0.0
            roll, delay = self._random.random(), self._random.random()
            kind = None
            if roll < self.rates.before:
                kind = BEFORE[int(roll / self.rates.before * len(BEFORE)) % len(BEFORE)]
            elif roll < self.rates.before + self.rates.after:
                kind = AFTER[int((roll - self.rates.before) / self.rates.after * len(AFTER)) % len(AFTER)]
            seconds = self._random.uniform(0.05, self.rates.max_delay) if delay < self.rates.delay else 0.0
            return kind, seconds

    def _count(self, kind: str) -> None:
        with self._lock:
            self.faults[kind] += 1

    # serving ----------------------------------------------------------------------------------------------
    def _serve(self, client: socket.socket) -> None:
        upstream: http.client.HTTPConnection | None = None
        reader = client.makefile('rb')
        try:
            while True:
                request = _read_head(reader)
                if request is None:
                    return
                method, target, headers = request
                with self._lock:
                    self.requests[method] += 1
                kind, delay = self._draw(method, target)
                if kind == 'reset-request':
                    _read_some_body(reader, client, headers)
                    self._count(kind)
                    _reset(client)
                    return
                if headers.get('expect', '').lower() == '100-continue':
                    client.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
                body = _read_body(reader, headers)
                if kind in ERRORS:
                    self._count(kind)
                    client.sendall(self._error(kind))
                    continue
                if upstream is None:
                    upstream = http.client.HTTPConnection(*self.upstream, timeout=120)
                try:
                    status, reason, response_headers, payload = _forward(upstream, method, target, headers, body)
                except (OSError, http.client.HTTPException):
                    upstream.close()
                    upstream = None
                    client.sendall(self._error('bad-gateway'))
                    continue
                response_headers = self._relocated(response_headers)
                if delay:
                    self._count('delay')
                    time.sleep(delay)
                if kind == 'error-after':
                    self._count(kind)
                    client.sendall(self._error('error-500'))
                    continue
                if kind == 'reset-response':
                    self._count(kind)
                    _reset(client)
                    return
                head = _response_head(status, reason, response_headers, len(payload), method)
                if kind in ('reset-body', 'truncate') and len(payload) > 1:
                    self._count(kind)
                    client.sendall(head + payload[: len(payload) // 2])
                    if kind == 'reset-body':
                        _reset(client)
                    else:
                        client.shutdown(socket.SHUT_RDWR)
                        client.close()
                    return
                client.sendall(head + (b'' if method == 'HEAD' else payload))
        except (OSError, ValueError):
            return
        finally:
            if upstream is not None:
                upstream.close()
            with contextlib.suppress(OSError):
                reader.close()

    def _relocated(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The response headers with a ``Location`` at the upstream server pointing at the proxy instead."""
        upstream = f'{self.upstream[0]}:{self.upstream[1]}'
        proxy = self.endpoint.removeprefix('http://')
        return [(n, v.replace(upstream, proxy) if n.lower() == 'location' else v) for n, v in headers]

    def _error(self, kind: str) -> bytes:
        """An injected error response of ``kind`` (or ``bad-gateway``) in the format of the proxy's store."""
        status, code, message = ERRORS.get(kind, (502, 'BadGateway', 'Upstream connection failed.'))
        if self.dialect == 'gcs':
            status, reason = _GCS_ERRORS.get(kind, (status, 'badGateway'))
            error = {'code': status, 'message': message, 'errors': [{'reason': reason, 'message': message}]}
            return _response(status, 'application/json; charset=UTF-8', json.dumps({'error': error}).encode())
        extra = ()
        if self.dialect == 'azure':
            status, code = _AZURE_ERRORS.get(kind, (status, code))
            extra = (('x-ms-error-code', code),)
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<Error><Code>{code}</Code><Message>{message}</Message><RequestId>chaos</RequestId></Error>'
        ).encode()
        return _response(status, 'application/xml', body, extra)


def _read_head(reader: typing.BinaryIO) -> tuple[str, str, dict[str, str]] | None:
    """Request line and headers (lower-cased names), or None at the end of the connection."""
    line = reader.readline(65536)
    while line in (b'\r\n', b'\n'):
        line = reader.readline(65536)
    if not line:
        return None
    method, target, _ = line.decode('latin-1').split(' ', 2)
    headers: dict[str, str] = {}
    order: list[tuple[str, str]] = []
    while True:
        raw = reader.readline(65536)
        if raw in (b'\r\n', b'\n', b''):
            break
        name, _, value = raw.decode('latin-1').partition(':')
        headers[name.strip().lower()] = value.strip()
        order.append((name.strip(), value.strip()))
    headers['\0order'] = order  # type: ignore[assignment] - original spelling and order, for forwarding
    return method, target, headers


def _read_body(reader: typing.BinaryIO, headers: dict[str, typing.Any]) -> bytes:
    if headers.get('transfer-encoding', '').lower() == 'chunked':
        chunks = []
        while True:
            size = int(reader.readline(1024).split(b';')[0].strip() or b'0', 16)
            if size == 0:
                while reader.readline(1024) not in (b'\r\n', b'\n', b''):
                    pass
                return b''.join(chunks)
            chunks.append(_exactly(reader, size))
            reader.readline(1024)
    return _exactly(reader, int(headers.get('content-length') or 0))


def _exactly(reader: typing.BinaryIO, size: int) -> bytes:
    data = reader.read(size) if size else b''
    if len(data) != size:
        raise ValueError('client closed mid-body')
    return data


def _read_some_body(reader: typing.BinaryIO, client: socket.socket, headers: dict[str, typing.Any]) -> None:
    """Take part of the request body (if any) before resetting: the client is cut off mid-request."""
    length = int(headers.get('content-length') or 0)
    if headers.get('expect', '').lower() == '100-continue' and length:
        client.sendall(b'HTTP/1.1 100 Continue\r\n\r\n')
    if length:
        with contextlib.suppress(OSError):
            reader.read(min(length // 2, 1 << 20))


def _forward(
    upstream: http.client.HTTPConnection, method: str, target: str, headers: dict[str, typing.Any], body: bytes
) -> tuple[int, str, list[tuple[str, str]], bytes]:
    upstream.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
    for name, value in headers['\0order']:
        if name.lower() not in HOP_BY_HOP and name.lower() != 'content-length':
            upstream.putheader(name, value)
    if body or method in ('PUT', 'POST'):
        upstream.putheader('Content-Length', str(len(body)))
    upstream.endheaders(body or None)
    response = upstream.getresponse()
    payload = response.read()
    return response.status, response.reason, response.getheaders(), payload


def _response_head(status: int, reason: str, headers: list[tuple[str, str]], length: int, method: str) -> bytes:
    lines = [f'HTTP/1.1 {status} {reason}']
    for name, value in headers:
        if name.lower() not in HOP_BY_HOP and name.lower() != 'content-length':
            lines.append(f'{name}: {value}')
    if method != 'HEAD' or length:
        lines.append(f'Content-Length: {length}')
    else:
        lines.extend(f'{n}: {v}' for n, v in headers if n.lower() == 'content-length')
    lines.append('Connection: keep-alive')
    return ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1')


def _response(status: int, content_type: str, body: bytes, extra: typing.Iterable[tuple[str, str]] = ()) -> bytes:
    reason = http.client.responses.get(status, 'Error')
    head = [f'HTTP/1.1 {status} {reason}', f'Content-Type: {content_type}', f'Content-Length: {len(body)}']
    head += [f'{name}: {value}' for name, value in extra]
    return ('\r\n'.join([*head, 'Connection: keep-alive']) + '\r\n\r\n').encode() + body


def _reset(client: socket.socket) -> None:
    """Close with RST instead of FIN: the peer sees 'connection reset'."""
    with contextlib.suppress(OSError):
        client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))
        client.close()
