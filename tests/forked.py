"""Worker processes (``python -m tests.workers ...``) forked from a server that has imported ForML once.

Each racer is a process of its own, with its own registry, connections and cache, killed with real signals, as
before; only its start is cheaper. Importing ForML costs about 2 s of CPU (it imports scikit-learn and pandas),
which a crowd of 8 racers per test paid 8 times on the CI's 2 cores: here a ``multiprocessing`` forkserver imports
the worker modules once per test process and forks each racer from it. :class:`Forked` answers what the tests ask
of a ``subprocess.Popen`` (``pid``, ``poll``, ``wait``, ``communicate``, ``kill``, ``stdout``/``stderr`` with
``read``); the racer's output goes to files, read when asked for.
"""

import atexit
import multiprocessing
import os
import pathlib
import runpy
import subprocess
import sys
import threading

PRELOAD = ['tests.workers', 'tests.cloud_workers']
"""What the forkserver imports once (an import it cannot do is left to each racer)."""

_CONTEXT = multiprocessing.get_context('forkserver')
_CONTEXT.set_forkserver_preload(PRELOAD)


def _run(module: str, argv: list[str], cwd: str, env: dict[str, str], out: str, err: str) -> None:
    """The racer's body: ``python -m module *argv`` with its output in files and the caller's environment."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(target, fd)
        os.close(target)
    sys.argv = [module, *argv]
    try:
        runpy.run_module(module, run_name='__main__', alter_sys=True)
    finally:  # what an interpreter does at exit, in its order: threads' exit hooks, then atexit's
        sys.stdout.flush()
        threading._shutdown()
        atexit._run_exitfuncs()


class _Output:
    def __init__(self, path: pathlib.Path):
        self.path = path

    def read(self) -> str:
        return self.path.read_text(errors='replace') if self.path.exists() else ''


class Forked:
    """A racer running ``python -m module *args`` in ``cwd``, forked from the forkserver, its output in the
    folder ``output`` (made here)."""

    def __init__(self, module: str, *args: str, cwd: pathlib.Path | str, output: pathlib.Path):
        self.args = [sys.executable, '-m', module, *args]
        output.mkdir(parents=True, exist_ok=True)
        self.stdout, self.stderr = _Output(output / 'stdout'), _Output(output / 'stderr')
        self.returncode: int | None = None
        self._process = _CONTEXT.Process(
            target=_run,
            args=(module, list(args), str(cwd), dict(os.environ), str(self.stdout.path), str(self.stderr.path)),
            name=f'{module} {args[0] if args else ""}',
        )
        self._process.start()
        self.pid = self._process.pid

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout.read(), self.stderr.read()

    def send_signal(self, signal: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal)

    def kill(self) -> None:
        if self.poll() is None:
            self._process.kill()

    def terminate(self) -> None:
        if self.poll() is None:
            self._process.terminate()
