"""A small HTTP proxy in front of the S3 endpoint that makes interleavings deterministic: it can hold one request
until released, or keep answering matching requests with the first answer it got (a stale view) until thawed; it
can also answer in a server's own dialect (``rewrite``) and keeps the requests it saw (``seen``)."""

import http.client
import http.server
import threading
import typing
import urllib.parse

Match = typing.Callable[[str, str], bool]
"""A predicate over (HTTP method, request path with its query)."""
Rewrite = typing.Callable[[str, str, bytes], bytes]
"""The body a client gets for (HTTP method, request path with its query, the upstream's body)."""


class Proxy(http.server.ThreadingHTTPServer):
    """Forwards every request to ``upstream``, on 127.0.0.1 at an ephemeral port (``endpoint``).

    Args:
        upstream: The S3 endpoint, e.g. ``http://127.0.0.1:5000``.
        hold: The first request matching it waits (``held`` is set) until ``release`` is set.
        freeze: Requests matching it get the answer the first of them got, until ``thaw`` is set.
        rewrite: Changes each upstream answer's body before it is sent on.
    """

    daemon_threads = True

    def __init__(
        self, upstream: str, hold: Match | None = None, freeze: Match | None = None, rewrite: Rewrite | None = None
    ):
        self.upstream = urllib.parse.urlsplit(upstream)
        self.rewrite = rewrite
        self.seen: list[tuple[str, str]] = []
        """(method, path with query) of every request received, in order."""
        self.hold, self.held, self.release = hold, threading.Event(), threading.Event()
        self.freeze, self.thaw, self.frozen = freeze, threading.Event(), None
        self.replayed = 0
        super().__init__(('127.0.0.1', 0), _Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f'http://127.0.0.1:{self.server_address[1]}'

    def __enter__(self) -> 'Proxy':
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.thaw.set()
        self.shutdown()
        self.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'

    def log_message(self, *args: typing.Any) -> None:
        pass

    def _forward(self) -> None:
        proxy: Proxy = self.server  # type: ignore[assignment]
        body = self.rfile.read(int(self.headers.get('Content-Length') or 0))
        proxy.seen.append((self.command, self.path))
        if proxy.hold and not proxy.held.is_set() and proxy.hold(self.command, self.path):
            proxy.held.set()
            proxy.release.wait(120)
        freezing = bool(proxy.freeze and not proxy.thaw.is_set() and proxy.freeze(self.command, self.path))
        if freezing and proxy.frozen is not None:
            proxy.replayed += 1
            self._answer(*proxy.frozen)
            return
        upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
        headers = {k: v for k, v in self.headers.items() if k.lower() != 'expect'}
        upstream.request(self.command, self.path, body, headers)
        response = upstream.getresponse()
        data = response.read()
        if proxy.rewrite:
            data = proxy.rewrite(self.command, self.path, data)
        answer = (response.status, response.reason, response.getheaders(), data)
        upstream.close()
        if freezing:
            proxy.frozen = answer
        self._answer(*answer)

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes) -> None:
        self.send_response(status, reason)
        for name, value in headers:
            if name.lower() in ('transfer-encoding', 'connection'):
                continue
            if name.lower() == 'content-length' and self.command != 'HEAD':
                continue  # sent below, for the body as read
            self.send_header(name, value)
        if self.command != 'HEAD':
            self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def listing(prefix: str) -> Match:
    """Matches a ListObjectsV2 request for exactly ``prefix``."""

    def match(method: str, path: str) -> bool:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(path).query)
        return method == 'GET' and 'list-type' in query and query.get('prefix') == [prefix]

    return match
