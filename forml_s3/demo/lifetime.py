"""Child processes that end with the process that started them, even when it is killed (SIGKILL included).

A ``preexec_fn`` for ``subprocess.Popen`` of a long-running child (a gateway, an emulator): Linux's
``PR_SET_PDEATHSIG`` has the kernel SIGKILL the child when the thread that forked it ends, so a killed demo, test
run or soak leaves no server behind holding its port and CPU. A no-op elsewhere. Start such children from a thread
that lives as long as they should (the main thread, or the one that stops them).
"""

import contextlib
import ctypes
import signal
import sys
import typing

_PR_SET_PDEATHSIG = 1


def _prctl() -> typing.Any:
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL(None, use_errno=True).prctl
    return None


_PRCTL = _prctl() if sys.platform.startswith('linux') else None
"""libc's ``prctl``, looked up on import, before any fork (a child between fork and exec must not load libraries)."""


def die_with_parent() -> None:
    """``preexec_fn`` of a child process: the kernel SIGKILLs it when the thread that started it ends."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)
