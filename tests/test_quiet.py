"""No noise around the real work: operator commands leave no ``forml-s3.log`` behind, and a process logging at
INFO (as every ``forml`` command does, by ForML's logging config) is not told where botocore found credentials."""

import os
import pathlib
import subprocess
import sys

from .test_concurrency import ROOT

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr)  # what ForML's logging.ini gives every forml command
from forml_s3.registry import Registry
print(list(Registry(sys.argv[1], cache_dir=sys.argv[2]).projects()))
"""


def test_no_credentials_chatter_at_info(s3server, bucket, tmp_path):
    env = {**os.environ, **s3server.client_env()}  # credentials from the environment, as in the report
    done = subprocess.run(
        [sys.executable, '-c', SCRIPT, f's3://{bucket}/forml', str(tmp_path / 'cache')],
        env=env, cwd=ROOT, capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.strip() == '[]', done.stderr
    assert 'Found credentials' not in done.stderr, done.stderr


def test_operator_commands_leave_no_log_file(tmp_path):
    cli = [str(pathlib.Path(sys.executable).with_name('forml-s3'))]
    done = subprocess.run(
        [*cli, 'ls', (tmp_path / 'registry').as_uri()], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert 'Traceback' not in done.stderr, done.stderr
    assert not (tmp_path / 'forml-s3.log').exists()
    (tmp_path / 'forml-s3.log').write_text('an existing log\\n')  # one the user keeps is left alone
    subprocess.run([*cli, 'ls', (tmp_path / 'registry').as_uri()], cwd=tmp_path, capture_output=True, check=False)
    assert (tmp_path / 'forml-s3.log').read_text() == 'an existing log\\n'
