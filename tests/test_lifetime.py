"""A child started with ``die_with_parent`` ends when its parent is SIGKILLed; one started without it outlives it
(the control: what a killed demo or test run used to leave behind)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='PR_SET_PDEATHSIG is Linux only')

PARENT = """
import subprocess, sys
from forml_s3.demo.lifetime import die_with_parent
child = subprocess.Popen(['sleep', '600'], preexec_fn=die_with_parent if sys.argv[1] == 'tied' else None)
print(child.pid, flush=True)
sys.stdin.read()
"""


def alive(pid: int) -> bool:
    """Running, not a zombie waiting for a reaper."""
    try:
        stat = pathlib.Path(f'/proc/{pid}/stat').read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(')')[2].split()[0] != 'Z'


def orphan(mode: str) -> int:
    """The pid of the child of a parent SIGKILLed right after it started the child."""
    parent = subprocess.Popen(
        [sys.executable, '-c', PARENT, mode], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait(10)
    parent.stdin.close()
    parent.stdout.close()
    return child


def test_a_tied_child_ends_with_its_killed_parent():
    child = orphan('tied')
    deadline = time.monotonic() + 10
    while alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(child)


def test_an_untied_child_outlives_its_killed_parent():
    child = orphan('untied')
    try:
        time.sleep(0.5)
        assert alive(child)
    finally:
        os.kill(child, signal.SIGKILL)
