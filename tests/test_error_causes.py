"""One line per cause, naming what to fix, through the real ``forml`` and ``forml-s3`` commands: an endpoint that
cannot be reached fails fast and says it is retrying meanwhile; missing credentials, an unknown profile, access
denied, a missing bucket and a refused (4xx) request each get their own message, and "retries exhausted" only
follows retries.

Each cause is produced for real: a closed port on 127.0.0.1, an environment without credentials or with an
``AWS_PROFILE`` the (empty) AWS config files lack, moto enforcing IAM against unknown keys, a bucket nobody made,
and a 400 answered by the embedded endpoint's fault injection."""

import os
import pathlib
import socket
import subprocess
import sys
import threading
import time
import uuid

import forml
import pytest

from forml_s3 import demo, storage
from forml_s3.registry import Registry
from forml_s3.storage import reach

from .helpers import PROJECT, run_cli, s3_options

FORML_S3 = str(pathlib.Path(sys.executable).with_name('forml-s3'))
FAIL_WITHIN = 10.0
"""Seconds from the first failed connection to the command's end (botocore's defaults took 13 to 31 s, silently)."""


def closed_port() -> str:
    """An endpoint on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return f'http://127.0.0.1:{sock.getsockname()[1]}'


def run_timed(command: list[str], env: dict[str, str], cwd: pathlib.Path) -> tuple[int, str, list[tuple[float, str]]]:
    """Run a command; its exit code, stdout and each stderr line with the moment it arrived (monotonic clock; the
    last entry is the moment the command ended)."""
    process = subprocess.Popen(
        command, env={**env, 'PYTHONUNBUFFERED': '1'}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    lines: list[tuple[float, str]] = []
    reader = threading.Thread(target=lambda: lines.extend((time.monotonic(), line) for line in process.stderr))
    reader.start()
    stdout = process.stdout.read()
    code = process.wait(timeout=120)
    ended = time.monotonic()
    reader.join()
    return code, stdout, [*lines, (ended, '')]


def no_aws(tmp_path: pathlib.Path, **env: str) -> dict[str, str]:
    """The environment with no AWS credentials anywhere (empty config files, no instance metadata) plus ``env``."""
    empty = tmp_path / 'aws-empty'
    empty.write_text('')
    clean = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    return {
        **clean,
        'AWS_CONFIG_FILE': str(empty),
        'AWS_SHARED_CREDENTIALS_FILE': str(empty),
        'AWS_EC2_METADATA_DISABLED': 'true',  # no machine here has an instance metadata service to ask
        **env,
    }


def assert_fails_fast(code: int, lines: list[tuple[float, str]], endpoint: str) -> str:
    """Two announced retries, then one line naming the endpoint, all within FAIL_WITHIN seconds of the first."""
    retrying = [(t, line) for t, line in lines if f'Cannot connect to {endpoint}' in line and 'retrying' in line]
    said = ''.join(line for _, line in lines)
    assert [line.rsplit('retrying', 1)[1].strip() for _, line in retrying] == ['(1 of 2)', '(2 of 2)'], said
    final = [line for _, line in lines if f'Cannot connect to the S3 endpoint {endpoint} ' in line]
    assert len(final) == 1 and 'check endpoint_url' in final[0] and '2 retries' in final[0], said
    assert lines[-1][0] - retrying[0][0] < FAIL_WITHIN, said
    assert 'Traceback' not in said, said
    return final[0]


def test_unreachable_endpoint_fails_fast_and_says_so(tmp_path):
    endpoint = closed_port()
    env = no_aws(tmp_path, AWS_ACCESS_KEY_ID='test', AWS_SECRET_ACCESS_KEY='test', AWS_DEFAULT_REGION='us-east-1')
    home = tmp_path / 'home'
    demo.render_config(home, registry_url='s3://bucket/forml', storage_options={'endpoint_url': endpoint})

    code, out, lines = run_timed([*demo.forml_command(), 'model', 'list'], demo.forml_env(home, env), home)
    final = assert_fails_fast(code, lines, endpoint)
    assert 'while trying to list s3://bucket/forml' in final and out.strip() == ''  # ForML exits 0 on its errors

    code, out, lines = run_timed([FORML_S3, 'ls', 's3://bucket/forml', '-o', f'endpoint_url={endpoint}'], env, tmp_path)
    final = assert_fails_fast(code, lines, endpoint)
    assert code == 2 and final.startswith('Error: Cannot connect') and out == ''


@pytest.fixture
def without_aws(tmp_path, monkeypatch):
    """This process's environment with no AWS credentials anywhere (see :func:`no_aws`), and no S3 client made before
    (a cached file system would keep the credentials it found)."""
    for name in [n for n in os.environ if n.startswith('AWS_')]:
        monkeypatch.delenv(name)
    for name, value in no_aws(tmp_path).items():
        if name.startswith('AWS_'):
            monkeypatch.setenv(name, value)
    reach.S3FileSystem.clear_instance_cache()
    yield tmp_path / 'aws-empty'
    reach.S3FileSystem.clear_instance_cache()


def test_no_credentials_and_unknown_profile_name_what_to_set(s3server, bucket, without_aws, monkeypatch):
    ls = ['ls', f's3://{bucket}/forml', '-o', f'endpoint_url={s3server.endpoint}', '-o', 'region=us-east-1']
    none = run_cli(*ls)
    assert none.exit_code == 2
    assert none.stderr.strip() == (
        f'Error: No AWS credentials to list s3://{bucket}/forml (Unable to locate credentials): set AWS_PROFILE, or '
        'AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or the storage options key and secret (anon = true for a '
        'public bucket)'
    )
    reach.S3FileSystem.clear_instance_cache()
    monkeypatch.setenv('AWS_PROFILE', 'no-such-profile')
    try:
        unknown = run_cli(*ls)
    finally:  # the bucket's teardown makes a client in this environment
        monkeypatch.delenv('AWS_PROFILE')
    assert unknown.exit_code == 2
    assert unknown.stderr.strip() == (
        f"Error: The AWS profile 'no-such-profile' (from AWS_PROFILE) is not in {without_aws} (while trying to list "
        f's3://{bucket}/forml): fix AWS_PROFILE, or add the profile (`aws configure --profile NAME`)'
    )


def test_wrong_keys_are_access_denied(s3server, embedded_server, bucket):
    previous = s3server.set_auth(0)  # moto checks every request's signature against IAM from now on
    try:
        denied = run_cli('ls', f's3://{bucket}/forml', *s3_options(s3server), '-o', 'key=AKIAUNKNOWNUNKNOWN00')
    finally:
        s3server.set_auth(previous)
    assert denied.exit_code == 2
    assert denied.stderr.strip() == (
        f'Error: Access denied while trying to list s3://{bucket}/forml: check the credentials (AWS_PROFILE, '
        'AWS_ACCESS_KEY_ID or storage_options key/secret) and the bucket policy (InvalidAccessKeyId)'
    )


def test_missing_bucket_is_named(s3server):
    missing = f'no-such-bucket-{uuid.uuid4().hex[:8]}'
    done = run_cli('ls', f's3://{missing}/forml', *s3_options(s3server))
    assert done.exit_code == 2
    assert done.stderr.strip() == (
        f"Error: Bucket '{missing}' does not exist (while trying to list s3://{missing}/forml): create it or fix the "
        'url in the config section'
    )


def test_a_refused_request_is_not_called_retries_exhausted(
    s3server, embedded_server, bucket, tmp_path, package_factory
):
    fault = s3server.inject(400, 'InvalidArgument', count=100, message='x-amz-checksum-crc32 is not supported')
    done = run_cli('ls', f's3://{bucket}/forml', *s3_options(s3server))
    assert fault.fired == 1  # never retried
    assert done.exit_code == 2 and done.stderr.startswith(
        f'Error: The S3 endpoint refused to list s3://{bucket}/forml (HTTP 400, InvalidArgument: x-amz-checksum-crc32 '
        'is not supported); not retried'
    ), done.stderr
    assert 'request_checksum_calculation = "when_required"' in done.stderr and 'retries exhausted' not in done.stderr
    s3server.clear_faults()

    registry = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'c')
    fault = s3server.inject(400, 'InvalidArgument', count=100, match=lambda c: c.method == 'PUT' and '.4ml' in c.path)
    with pytest.raises(forml.InvalidError, match=r'refused to write .*package-.*\.4ml \(HTTP 400'):
        registry.push(package_factory('0.1'))
    assert fault.fired == 1
    s3server.clear_faults()
    assert list(Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options()).releases(PROJECT)) == []
    stored = [o['Key'] for o in s3server.client().list_objects_v2(Bucket=bucket).get('Contents', [])]
    assert not [k for k in stored if k.startswith(f'forml/{PROJECT}/')], stored  # nothing half-written


def test_retries_exhausted_says_how_many(s3server, embedded_server, bucket):
    fault = s3server.inject(500, 'InternalError', count=100)
    done = run_cli('ls', f's3://{bucket}/forml', *s3_options(s3server), '-o', 'max_attempts=1', '-o', 'retries=1')
    s3server.clear_faults()
    assert fault.fired == 2 and done.exit_code == 2
    assert done.stderr.startswith(
        f'Error: Could not list s3://{bucket}/forml, retries exhausted (InternalError after 1 retries)'
    ), done.stderr


AZURITE_KEY = 'Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=='
"""Azurite's published development key (not a secret)."""
CLOUD = {
    'gs': ('gcsfs', lambda endpoint: {'endpoint_url': endpoint, 'token': 'anon', 'project': 'p'}),
    'az': (
        'adlfs',
        lambda endpoint: {
            'connection_string': f'DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AZURITE_KEY};'
            f'BlobEndpoint={endpoint}/devstoreaccount1;'
        },
    ),
}


@pytest.mark.parametrize('scheme', sorted(CLOUD))
def test_unreachable_gcs_and_azure_endpoints_fail_fast_too(scheme, caplog):
    """gcsfs retried a refused connection for 36 s and the Azure SDK for 86 s (measured), silently."""
    library, options = CLOUD[scheme]
    pytest.importorskip(library)
    endpoint = closed_port()
    store = storage.open_store(f'{scheme}://bucket/forml', {**options(endpoint), 'connect_retries': 1})
    with pytest.raises(forml.FailedError) as failed:
        store.listdir(store.root)
    said = [r.getMessage() for r in caplog.records if r.levelname == 'WARNING' and 'retrying' in r.getMessage()]
    assert len(said) == 1 and said[0].startswith(f'Cannot connect to {endpoint} ') and '(1 of 1)' in said[0], said
    store_name = {'gs': 'GCS', 'az': 'Azure'}[scheme]
    assert str(failed.value).startswith(
        f'Cannot connect to the {store_name} endpoint {endpoint} (while trying to list {scheme}://bucket/forml, '
        '1 retry): check '
    ), failed.value
