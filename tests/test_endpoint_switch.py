"""``FORML_S3_TEST_ENDPOINT`` runs the S3 tests against another endpoint (LocalStack, MinIO, AWS).

No LocalStack here (it needs a docker engine), so the other endpoint is a second moto server in its own
process: what matters is that the suite really talks to the endpoint it is given, and that tests needing the
embedded server's request log skip with a reason instead of failing.
"""

import os
import pathlib
import re
import subprocess
import sys

from forml_s3.demo.lifetime import die_with_parent

ROOT = pathlib.Path(__file__).parent.parent


def test_suite_runs_against_an_external_endpoint(tmp_path):
    server = subprocess.Popen(
        [sys.executable, '-m', 'forml_s3.demo.endpoint', '--verbose'],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / 'server.log').open('w'),
        text=True,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    try:
        first = server.stdout.readline()
        endpoint = re.search(r'(http://127\.0\.0\.1:\d+)', first).group(1)
        env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
        done = subprocess.run(
            [
                sys.executable,
                '-m',
                'pytest',
                '-p',
                'no:cacheprovider',
                '-rs',
                'tests/test_registry.py',
                'tests/test_requests.py',
                '-k',
                '(s3 and (round_trip or conflict or uncommitted or tagged or mount)) or listing_300 or second_mount',
            ],
            cwd=ROOT,
            env={**env, 'FORML_S3_TEST_ENDPOINT': endpoint},
            capture_output=True,
            text=True,
            timeout=300,
        )
    finally:
        server.terminate()
        server.wait(30)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert f'forml-s3 S3 endpoint: {endpoint}' in output
    assert re.search(r'\d+ passed', output), output
    assert 'needs the embedded moto server' in output, 'request-counting tests skip with their reason'
    served = (tmp_path / 'server.log').read_text()
    assert re.search(r'"PUT /test-[0-9a-f]{12}/forml/demo-proj/0\.1/generations/1\.json', served), served[-2000:]
