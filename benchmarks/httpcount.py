"""Counts the HTTP requests (and body bytes) a process sends through ``requests`` - the MLflow client's REST calls.

The S3 endpoint logs every S3 request itself, but the MLflow provider also talks to its tracking server over
HTTP; those calls are counted here, inside the client process, by wrapping ``requests``' transport adapter.
(MLflow's S3 artifact transfers go through boto3, not ``requests``, so nothing is counted twice.)

A process that cannot be patched from the inside (the ``forml`` CLI) gets the same counter through
``sitecustomize``: :func:`sitecustomize_dir` makes a directory to put on ``PYTHONPATH``; the counter then
writes its totals as JSON to ``$BENCH_HTTPCOUNT_FILE`` when the process exits.
"""

import atexit
import json
import os
import pathlib
import threading
import typing

ENV_FILE = 'BENCH_HTTPCOUNT_FILE'

_lock = threading.Lock()
_totals = {'requests': 0, 'bytes': 0}
_installed = False


def install() -> None:
    """Wrap ``requests.adapters.HTTPAdapter.send`` to count requests and request/response body bytes."""
    global _installed  # one patch per process
    if _installed:
        return
    from requests import adapters

    original = adapters.HTTPAdapter.send

    def send(self: typing.Any, request: typing.Any, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        response = original(self, request, *args, **kwargs)
        sent = len(request.body or b'') if isinstance(request.body, bytes | str) else 0
        # a streamed response is not read here (that would change what the client does): its header says the size
        length = response.headers.get('Content-Length')
        received = int(length) if length and length.isdigit() else 0
        with _lock:
            _totals['requests'] += 1
            _totals['bytes'] += sent + received
        return response

    adapters.HTTPAdapter.send = send
    _installed = True


def totals() -> dict[str, int]:
    """Requests and bytes counted so far."""
    with _lock:
        return dict(_totals)


def reset() -> None:
    """Start counting from zero (at the start of the measured region)."""
    with _lock:
        _totals.update(requests=0, bytes=0)


def _dump(path: str) -> None:
    pathlib.Path(path).write_text(json.dumps(totals()))


def install_from_env() -> None:
    """Install and dump the totals at exit if ``$BENCH_HTTPCOUNT_FILE`` is set (called by ``sitecustomize``)."""
    path = os.environ.get(ENV_FILE)
    if path:
        install()
        atexit.register(_dump, path)


def sitecustomize_dir(parent: pathlib.Path) -> pathlib.Path:
    """A directory holding a ``sitecustomize.py`` that installs the counter in any Python process started with it
    on ``PYTHONPATH`` (and ``$BENCH_HTTPCOUNT_FILE`` set)."""
    folder = parent / 'httpcount-site'
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'sitecustomize.py').write_text('from benchmarks import httpcount\nhttpcount.install_from_env()\n')
    return folder
