"""Embedded S3 endpoint (moto) of ``forml-s3 demo`` and ``forml-s3 serve-s3``: no cloud account needed.

:class:`Server` runs moto's S3 server application in-process, in a background thread, on ``127.0.0.1`` with an
ephemeral port. Moto checks a write's condition (``If-None-Match: *``) and then stores, without a lock between the
two; the server serialises conditional writes (:class:`Serialised`) so that of racing exclusive creates exactly one
wins, as on S3.

Usage::

    with endpoint.Server() as server:
        server.create_bucket('forml')
        fs = s3fs.S3FileSystem(**server.storage_options())

A subprocess (the ``forml`` CLI, say) reaches the server through :meth:`Server.client_env`: botocore
honours ``AWS_ENDPOINT_URL``. Moto keeps its buckets **global per process**: every :class:`Server` started in one
process serves the same buckets, and they outlive :meth:`Server.stop`. Moto accepts any credentials.

Moto is the ``demo`` extra (``pip install 'forml-s3[demo]'``); :func:`missing` says so when it is absent. The
tests' server (``tests/embedded.py``) adds a request log and fault injection in front through :meth:`Server.wrap`.

``python -m forml_s3.demo.endpoint`` starts a server and prints its endpoint until Ctrl-C.
"""

from __future__ import annotations

import argparse
import collections.abc
import importlib.util
import logging
import signal
import threading
import typing

if typing.TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

LOGGER = logging.getLogger(__name__)

HOST = '127.0.0.1'
REGION = 'us-east-1'
ACCESS_KEY = 'testing'
SECRET_KEY = 'testing'

T = typing.TypeVar('T')


def missing() -> str | None:
    """What to install when moto (the ``demo`` extra) is absent; ``None`` when the endpoint can run."""
    if importlib.util.find_spec('moto') is None:
        return "the embedded S3 endpoint needs moto, the demo extra: pip install 'forml-s3[demo]'"
    return None


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


def started(value: T | None) -> T:
    """``value``, set once the server has started (``RuntimeError`` before)."""
    if value is None:
        raise RuntimeError('Server not started')
    return value


class Serialised:
    """WSGI middleware serialising conditional writes: moto checks the condition, then stores, unlocked, so two
    racing exclusive creates could both win."""

    def __init__(self, app: WSGIApplication):
        self.app = app
        self._lock = threading.Lock()

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> collections.abc.Iterable[bytes]:
        if environ.get('REQUEST_METHOD') in ('PUT', 'POST') and (
            environ.get('HTTP_IF_NONE_MATCH') or environ.get('HTTP_IF_MATCH')
        ):
            with self._lock:
                return self.app(environ, start_response)
        return self.app(environ, start_response)


class Server:
    """Moto's S3 server in a background thread on ``127.0.0.1`` (ephemeral port by default).

    Moto's state is global per process: see the module docstring.

    Args:
        port: TCP port to bind on ``127.0.0.1``; 0 picks a free one.
        verbose: Log every request line (werkzeug's access log) when true.
    """

    def __init__(self, port: int = 0, *, verbose: bool = False):
        self._requested_port = port
        self._verbose = verbose
        self._server: typing.Any = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        """The WSGI application to serve in front of moto's (called once by :meth:`start`); this one serves it as is."""
        return app

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

        app = self.wrap(Serialised(DomainDispatcherApplication(create_backend_app)))
        server = make_server(HOST, self._requested_port, app, threaded=True, request_handler=Handler)
        server.daemon_threads = True
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
        return started(self._port)

    @property
    def endpoint(self) -> str:
        """The endpoint URL, ``http://127.0.0.1:<port>``."""
        return f'http://{HOST}:{self.port}'

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
    if why := missing():
        raise SystemExit(why)
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
