"""Two real ``forml-s3 lifecycle apply``/``remove`` processes for two registries of one bucket, deterministically
interleaved: one process talks to S3 through a proxy that holds its lifecycle write until the other process has
tried to change the configuration too. Neither loses the other's rules, and ``remove`` never deletes a
configuration holding another registry's rules."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

from forml_s3.ops import lifecycle

from .helpers import run_cli, s3_options
from .proxy import Proxy


def lifecycle_write(bucket: str):
    """Matches the PUT or DELETE of the bucket's lifecycle configuration."""
    return lambda method, path: method in ('PUT', 'DELETE') and path.startswith(f'/{bucket}?') and 'lifecycle' in path


def spawn(endpoint_url: str, *args: str, options: list[str]) -> subprocess.Popen:
    forml_s3 = pathlib.Path(sys.executable).with_name('forml-s3')
    options = [o if not o.startswith('endpoint_url=') else f'endpoint_url={endpoint_url}' for o in options]
    return subprocess.Popen(
        [str(forml_s3), 'lifecycle', *args, *options],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, 'AWS_ENDPOINT_URL': endpoint_url},
    )


def lock_attempts(server, bucket: str) -> int:
    return server.count('PUT', f'/{bucket}/{lifecycle.LOCK}')


def race(server, bucket: str, first: tuple[str, ...], second: tuple[str, ...]) -> list[subprocess.CompletedProcess]:
    """Run ``first`` through the holding proxy until it is about to write the configuration; then ``second``
    directly, until it has tried to take the lock (or, without a lock, has written); then let ``first`` write."""
    options = s3_options(server)
    with Proxy(server.endpoint, hold=lifecycle_write(bucket)) as proxy:
        # a long read timeout: a held write that timed out would be sent again past the hold, and the held one
        # delivered after the other process wrote (a network that late is what no lock can fence)
        one = spawn(proxy.endpoint, *first, options=[*options, '--option', 'read_timeout=600'])
        assert proxy.held.wait(60), one.communicate()
        attempts = lock_attempts(server, bucket)
        two = spawn(server.endpoint, *second, options=options)
        deadline = time.monotonic() + 60
        while lock_attempts(server, bucket) == attempts and two.poll() is None:  # blocked on the lock, or done
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.3)  # a second look at the lock: it still waits
        proxy.release.set()
        done = []
        for proc in (one, two):
            stdout, stderr = proc.communicate(timeout=120)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr))
        return done


def ids(server, bucket: str) -> set[str]:
    try:
        rules = server.client().get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']
    except Exception as err:
        assert 'NoSuchLifecycleConfiguration' in str(err)
        return set()
    return {r['ID'] for r in rules}


def team(name: str) -> set[str]:
    return {f'forml-s3:{name}/:{p}' for p in ('uncommitted', 'multipart', 'retired')}


@pytest.fixture
def server(embedded_server):
    return embedded_server


def test_two_applies_racing_keep_both_registries_rules(server, bucket):
    one, two = race(server, bucket, ('apply', f's3://{bucket}/team-a'), ('apply', f's3://{bucket}/team-b'))
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert ids(server, bucket) == team('team-a') | team('team-b')
    assert lifecycle.LOCK not in {o['Key'] for o in server.client().list_objects_v2(Bucket=bucket).get('Contents', [])}


def test_remove_racing_an_apply_never_deletes_the_other_registrys_rules(server, bucket):
    assert run_cli('lifecycle', 'apply', f's3://{bucket}/team-a', *s3_options(server)).exit_code == 0
    one, two = race(server, bucket, ('remove', f's3://{bucket}/team-a'), ('apply', f's3://{bucket}/team-b'))
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert ids(server, bucket) == team('team-b')

    # and the other way round: the apply held, the remove of the other registry waiting for the lock
    one, two = race(server, bucket, ('apply', f's3://{bucket}/team-a'), ('remove', f's3://{bucket}/team-b'))
    assert one.returncode == 0 and two.returncode == 0, (one.stderr, two.stderr)
    assert ids(server, bucket) == team('team-a')
    assert 'Removed 3 forml-s3 rules' in two.stderr and '(3 other rules kept)' in two.stderr
