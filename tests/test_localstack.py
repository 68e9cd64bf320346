"""A subset of the suite against LocalStack's S3 (not moto), which this module starts itself, without docker.

LocalStack 4.9 (``localstack-core`` from PyPI) runs in its own venv, ``.venv-localstack`` (its pins clash with the
project's boto3), created on first use from ``localstack/requirements.txt`` and reused while complete. It is started
through ``localstack/serve.py``: 127.0.0.1 only, an ephemeral port, every file it writes under this module's temporary
directory, no DNS server, nothing fetched at run time. The subset runs in a subprocess pytest with
``FORML_S3_TEST_ENDPOINT`` pointing at it; tests that need the embedded moto server skip themselves there.

If the venv cannot be installed (no package registry reachable) the test fails under ``CI=true`` and skips elsewhere.
"""

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET

import pytest

ROOT = pathlib.Path(__file__).parent.parent
VENV = ROOT / '.venv-localstack'
REQUIREMENTS = ROOT / 'localstack' / 'requirements.txt'
SERVE = ROOT / 'localstack' / 'serve.py'
STAMP = VENV / 'forml-s3-complete'

IN_CI = os.environ.get('CI', '').lower() in ('1', 'true', 'yes')
OFFLINE = re.compile(
    r'No matching distribution|Could not find a version|NewConnectionError|Failed to establish a new connection'
    r'|Temporary failure in name resolution|Name or service not known|Network is unreachable|ConnectTimeout'
    r'|Read timed out|ProxyError|Max retries exceeded'
)

# What runs against LocalStack: every test of these modules that talks to S3 (the memory:// and file:// variants of
# the backend-parametrized ones are deselected), including both 8-process races on one marker (test_concurrency).
SUBSET = (
    'tests/test_registry.py',
    'tests/test_concurrency.py',
    'tests/test_retention.py',
    'tests/test_transfers.py',
)
# Left out (they passed against LocalStack 4.9.2 when they were in the subset; the CI budget of 20 minutes on two
# cores went to the cloud emulators, the soak and the scale tests since): test_inventory, test_bad_input,
# test_security, test_selector, test_ops, test_packing. Also left out:
# * test_forml_model_apply_works_from_the_copy: passes against LocalStack, but runs the real ForML CLI (12 s here);
#   the CI budget goes to the races instead.
# * test_requests.py, test_faults.py: request counts and fault injection need the embedded server (they skip);
#   test_e2e.py: the ForML CLI and REST gateway end to end (minutes; passes against LocalStack too).
# No test is left out for a LocalStack quirk: every test of the suite that ran against LocalStack 4.9.2 here passed,
# except test_requests.py::test_listing_the_inventory_is_one_list, which calls the embedded server's reset_counts()
# without asking for the embedded_server fixture (a test bug: AttributeError on any other endpoint).
SELECT = 'not memory and not file and not forml_model_apply'
MIN_PASSED = 40  # of the 4 modules' S3 tests, those not needing the embedded server (request counts, faults)
MUST_PASS = (
    'test_racing_closes_of_one_generation_have_exactly_one_winner[s3]',
    'test_racing_pushes_of_one_version_have_exactly_one_winner[s3]',
    'test_closing_a_committed_generation_is_a_conflict_and_keeps_the_winner[s3]',
    'test_s3_objects_stay_tagged_uncommitted_until_their_marker',
    'test_a_large_state_truncated_in_the_bucket_is_corrupted_not_a_network_error[41943039]',
    'test_preview_of_noncurrent_versions_in_a_versioned_bucket',
)


def unavailable(message: str, output: str) -> None:
    """No LocalStack venv: a failure in CI, a skip elsewhere when the package registry is what is missing."""
    message = f'Cannot install LocalStack to run the S3 tests against it: {message}\n{output[-3000:]}'
    if IN_CI or not OFFLINE.search(output):
        pytest.fail(message, pytrace=False)
    pytest.skip(f'no package registry reachable? {message}')


def stamp() -> str:
    return f'{sys.version_info[:2]} {hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()}\n'


@contextlib.contextmanager
def venv_lock():
    """One session at a time creates the venv (two checkouts of the repo have two venvs and two locks)."""
    name = f'forml-s3-localstack-{hashlib.sha256(str(VENV).encode()).hexdigest()[:12]}.lock'
    with open(pathlib.Path(tempfile.gettempdir()) / name, 'w') as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@pytest.fixture(scope='module')
def localstack_python() -> pathlib.Path:
    """The LocalStack venv's interpreter: created (or recreated, if incomplete or stale), else reused."""
    python = VENV / 'bin' / 'python'
    with venv_lock():
        if STAMP.exists() and STAMP.read_text() == stamp() and python.exists():
            return python
        shutil.rmtree(VENV, ignore_errors=True)
        subprocess.run([sys.executable, '-m', 'venv', str(VENV)], check=True, capture_output=True)
        (VENV / '.gitignore').write_text('*\n')  # keeps git and ruff out of it, whatever the repo's .gitignore says
        env = {k: v for k, v in os.environ.items() if k not in ('PYTHONPATH', 'PYTHONHOME', 'VIRTUAL_ENV')}
        command = [str(python), '-m', 'pip', 'install', '--disable-pip-version-check', '--no-input', '--quiet']
        command += ['--timeout', '60', '--retries', '3', '-r', str(REQUIREMENTS)]
        try:
            done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
        except subprocess.TimeoutExpired as err:
            unavailable(f'pip install -r {REQUIREMENTS} into {VENV} timed out', str(err.stderr or ''))
        if done.returncode != 0:
            unavailable(f'pip install -r {REQUIREMENTS} into {VENV} failed ({done.returncode})', done.stderr)
        STAMP.write_text(stamp())
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def health(endpoint: str) -> dict:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    with opener.open(f'{endpoint}/_localstack/health', timeout=2) as response:
        return json.load(response)


def listening(pid: int) -> list[str]:
    """The local addresses (hex, as in /proc/net) of the process's listening TCP and bound UDP sockets."""
    inodes = set()
    for fd in pathlib.Path(f'/proc/{pid}/fd').iterdir():
        with contextlib.suppress(OSError):
            if match := re.fullmatch(r'socket:\[(\d+)\]', os.readlink(fd)):
                inodes.add(match.group(1))
    addresses = []
    for table in ('tcp', 'tcp6', 'udp', 'udp6'):
        for line in pathlib.Path(f'/proc/{pid}/net/{table}').read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if inode in inodes and (state == '0A' or table.startswith('udp')):
                addresses.append(f'{table} {local}')
    return addresses


LOOPBACK = {'0100007F', '00000000000000000000000001000000'}  # 127.0.0.1, ::1 as /proc/net/tcp{,6} write them


def start(python: pathlib.Path, root: pathlib.Path) -> tuple[subprocess.Popen, str, pathlib.Path]:
    """LocalStack on a free port, once its health endpoint says S3 is up and it listens on loopback only."""
    for _ in range(3):  # a free port can be taken before LocalStack binds it: then try another
        port = free_port()
        endpoint = f'http://127.0.0.1:{port}'
        log = root / f'localstack-{port}.log'
        env = {k: v for k, v in os.environ.items() if not k.startswith(('AWS_', 'PYTHON', 'VIRTUAL_ENV'))}
        process = subprocess.Popen(
            [str(python), str(SERVE), '--port', str(port), '--root', str(root / 'data')],
            cwd=root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log.open('w'),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f'LocalStack exited ({process.returncode}):\n{log.read_text()[-5000:]}', pytrace=False)
            if 'CannotListenError' in log.read_text():
                break  # the port was taken after free_port() found it free
            try:
                up = health(endpoint)['services'].get('s3') in ('available', 'running')
            except (OSError, ValueError):
                up = False
            if up:
                sockets = listening(process.pid)
                if not any(a.endswith(f':{port:04X}') for a in sockets):
                    break  # someone else answers on that port
                if not all(a.split()[1].split(':')[0] in LOOPBACK for a in sockets):
                    stop(process)
                    pytest.fail(f'LocalStack listens beyond the loopback interface: {sockets}', pytrace=False)
                return process, endpoint, log
            time.sleep(0.25)
        else:
            stop(process, grace=5)
            pytest.fail(f'LocalStack did not report S3 up within 120 s:\n{log.read_text()[-5000:]}', pytrace=False)
        stop(process, grace=5)
    pytest.fail('LocalStack could not bind a free port in 3 tries', pytrace=False)


def stop(process: subprocess.Popen, grace: float = 30) -> None:
    """SIGTERM to LocalStack's process group (it shuts down in a few seconds), SIGKILL if it does not.

    A LocalStack whose port was taken logs the error, says "Ready." and ignores SIGTERM: no grace for those."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)


@dataclasses.dataclass
class LocalStack:
    endpoint: str  # http://127.0.0.1:PORT
    log: pathlib.Path


@pytest.fixture(scope='module')
def localstack(localstack_python, tmp_path_factory) -> LocalStack:
    """LocalStack's S3, its log and its data under a temporary directory, stopped after the module."""
    root = tmp_path_factory.mktemp('localstack')
    process, endpoint, log = start(localstack_python, root)
    try:
        yield LocalStack(endpoint, log)
    finally:
        stop(process)


def summary(output: str) -> dict[str, int]:
    """The counts of pytest's closing line: ``112 passed, 9 skipped, 119 deselected, 2 warnings in 64.91s``."""
    lines = [line for line in output.splitlines() if re.search(r'\d+ (passed|failed|error).* in [\d.]+s', line)]
    assert lines, f'no pytest summary line in:\n{output[-5000:]}'
    return {word: int(n) for n, word in re.findall(r'(\d+) ([a-z]+)', lines[-1])}


def test_suite_subset_passes_against_localstack(localstack, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    env.update(
        FORML_S3_TEST_ENDPOINT=localstack.endpoint,
        AWS_ACCESS_KEY_ID='test',
        AWS_SECRET_ACCESS_KEY='test',
        AWS_DEFAULT_REGION='us-east-1',
    )
    report = tmp_path / 'junit.xml'
    command = [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-rfEs']
    command += [f'--basetemp={tmp_path / "basetemp"}', f'--junitxml={report}', *SUBSET, '-k', SELECT]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr

    counts = summary(output)
    assert done.returncode == 0 and not counts.get('failed') and not counts.get('errors'), output[-10000:]
    assert f'forml-s3 S3 endpoint: {localstack.endpoint}' in output, output[-3000:]
    assert counts.get('passed', 0) >= MIN_PASSED, f'{counts}\n{output[-5000:]}'

    cases = ET.parse(report).getroot().iter('testcase')  # a test that passed has no failure, error or skipped
    outcomes = {case.get('name'): [c for c in case if c.tag in ('failure', 'error', 'skipped')] for case in cases}
    missing = [name for name in MUST_PASS if name not in outcomes or outcomes[name]]
    assert not missing, f'did not run or did not pass against LocalStack: {missing}'
    skipped = {n: c[0].get('message', '') for n, c in outcomes.items() if c and c[0].tag == 'skipped'}
    unexpected = {n: reason for n, reason in skipped.items() if 'embedded moto server' not in reason}
    assert not unexpected, f'skipped against LocalStack for another reason than needing moto: {unexpected}'

    served = localstack.log.read_text()
    assert 'AWS s3.PutObject => 200' in served, f'LocalStack did not serve the subset:\n{served[-3000:]}'
