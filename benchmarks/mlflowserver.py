"""A local MLflow tracking server for ForML's MLflow registry provider.

One worker (the setting ForML's provider was tried with here), a SQLite backend store in a temporary directory,
and the artifact root on the benchmark's S3 endpoint with ``--no-serve-artifacts``: clients write and read
artifacts straight to and from S3 (boto3, ``MLFLOW_S3_ENDPOINT_URL``), so the endpoint's request log sees them
like every other provider's objects, and the tracking server carries only the REST calls.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import typing
import urllib.error
import urllib.request


def available() -> str | None:
    """Why the MLflow provider cannot run in this interpreter, or None if it can."""
    try:
        import mlflow  # noqa: F401
        from forml.provider.registry import mlflow as provider  # noqa: F401
    except Exception as err:  # any import failure means "not here"
        return f'mlflow is not importable here ({type(err).__name__}: {err}); run from .venv-bench'
    return None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(('127.0.0.1', 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def serve(workdir: pathlib.Path, artifact_root: str, env: typing.Mapping[str, str]) -> typing.Iterator[str]:
    """Run ``mlflow server`` (one worker) until the block ends; yields its URL.

    Args:
        workdir: Directory for the SQLite store and the server log.
        artifact_root: Default artifact root of new experiments, e.g. ``s3://bench-mlflow/artifacts``.
        env: Environment of the server (the S3 endpoint and credentials).
    """
    port = _free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log = (workdir / 'mlflow-server.log').open('wb')
    command = [
        sys.executable,
        '-m',
        'mlflow',
        'server',
        '--host',
        '127.0.0.1',
        '--port',
        str(port),
        '--workers',
        '1',
        '--backend-store-uri',
        f'sqlite:///{workdir / "mlflow.db"}',
        '--default-artifact-root',
        artifact_root,
        '--no-serve-artifacts',
    ]
    # its own process group: stopping it must take the worker processes down too
    process = subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}, start_new_session=True
    )
    url = f'http://127.0.0.1:{port}'
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError(f'mlflow server exited ({process.returncode}); see {log.name}')
            try:
                with urllib.request.urlopen(f'{url}/health', timeout=2) as response:  # loopback
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f'mlflow server did not come up in 180 s; see {log.name}')
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()
