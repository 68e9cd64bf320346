"""The code base stays ruff clean (lint and format), checked as part of the one test command."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).parent.parent
RUFF = shutil.which('ruff', path=str(pathlib.Path(sys.executable).parent)) or shutil.which('ruff')


@pytest.mark.skipif(RUFF is None, reason='ruff is not installed (pip install -e .[test])')
@pytest.mark.parametrize('command', [['check'], ['format', '--check']], ids=['lint', 'format'])
def test_ruff_clean(command):
    result = subprocess.run([RUFF, *command, str(ROOT)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / 'README.md').read_text().splitlines()
    ci = (ROOT / '.ci' / 'run').read_text()
    test_command = next(line for line in readme[:12] if 'pytest' in line).strip()
    assert test_command in ci
