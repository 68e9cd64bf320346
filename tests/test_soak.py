"""The fault-injection soak (``python -m benchmarks.soak --short``) holds every invariant, and what it found stays
fixed: a marker create whose answer was lost is the writer's own commit, not a conflict."""

import json
import os
import pathlib
import subprocess
import sys
import threading
import time
import uuid

import botocore.exceptions
import pytest
from forml import project as prj

from benchmarks import chaos
from forml_s3.model import layout
from forml_s3.registry import Registry

from .helpers import PROJECT, commit, tag

ROOT = pathlib.Path(__file__).parent.parent


def once(kind: str, method: str, fragment: str):
    """A chaos rule: ``kind`` for the first request ``method`` to a target containing ``fragment``."""
    left = [1]

    def force(m: str, target: str) -> str | None:
        if m == method and fragment in target and left[0]:
            left[0] -= 1
            return kind
        return None

    force.left = left
    return force


@pytest.fixture
def proxied(s3server, bucket, tmp_path):
    """A registry reaching the test server through the chaos proxy (no random faults), and the proxy."""
    proxy = chaos.Proxy(s3server.endpoint, seed=0, rates=chaos.Rates(before=0, after=0, delay=0)).start()
    registry = Registry(
        f's3://{bucket}/forml',
        storage_options=s3server.storage_options(endpoint_url=proxy.endpoint),
        cache_dir=tmp_path / 'cache',
        staging=tmp_path / 'staging',
    )
    yield registry, proxy
    proxy.stop()


@pytest.mark.parametrize('kind', ['error-after', 'reset-response'])
def test_generation_marker_whose_answer_was_lost_is_committed_once(s3server, bucket, proxied, package_factory, kind):
    """Found by the soak: the server stored the marker, its answer was lost, the client's retry met the marker
    (412). The writer was told "committed by another writer" and its committed states were re-tagged uncommitted
    (the lifecycle rule would have expired them)."""
    registry, proxy = proxied
    registry.push(package_factory('0.1'))
    proxy.force = once(kind, 'PUT', '/generations/1.json')
    _, sids = commit(registry, 1, payloads=[b'a' * 100, b'b' * 2_000_000])
    assert proxy.force.left == [0] and proxy.stats()['faults'] == {kind: 1}
    assert [int(g) for g in registry.generations(PROJECT, '0.1')] == [1]
    client = s3server.client()
    for sid, payload in zip(sids, [b'a' * 100, b'b' * 2_000_000], strict=True):
        assert registry.read(PROJECT, '0.1', 1, sid) == payload
    objects = client.list_objects_v2(Bucket=bucket, Prefix=f'forml/{PROJECT}/0.1/states/')['Contents']
    assert objects
    for obj in objects:
        tags = client.get_object_tagging(Bucket=bucket, Key=obj['Key'])['TagSet']
        assert {'Key': layout.UNCOMMITTED_TAG[0], 'Value': layout.UNCOMMITTED_TAG[1]} not in tags, obj['Key']


def test_release_marker_whose_answer_was_lost_is_pushed(proxied, package_factory):
    registry, proxy = proxied
    proxy.force = once('error-after', 'PUT', '/releases/0.1.json')
    registry.push(package_factory('0.1'))
    assert proxy.force.left == [0]
    assert [str(r) for r in registry.releases(PROJECT)] == ['0.1']
    assert isinstance(registry.pull(PROJECT, '0.1'), prj.Package)


@pytest.mark.parametrize('kind', ['truncate', 'reset-body'])
def test_a_marker_whose_body_was_cut_short_is_read_again(s3server, proxied, package_factory, tmp_path, kind):
    """Found by the scheduled gc of the soak (every run on moto and SeaweedFS failed): botocore retries a request
    until its headers arrive, not its body, so one marker body cut short failed the read ("retries exhausted")
    and with it a reader's open, or a whole gc run that reads every marker."""
    registry, proxy = proxied
    registry.push(package_factory('0.1'))
    _, sids = commit(registry, 1)
    fresh = Registry(registry.url, storage_options=registry._store._options, cache_dir=tmp_path / 'fresh')
    proxy.force = once(kind, 'GET', '/generations/1.json')
    assert list(fresh.open(PROJECT, '0.1', 1).states) == sids
    assert proxy.force.left == [0] and proxy.stats()['faults'] == {kind: 1}


def test_a_large_state_whose_part_body_was_cut_short_is_read_again(proxied, package_factory, tmp_path):
    """The same for one part of a large state's ranged download."""
    registry, proxy = proxied
    registry.push(package_factory('0.1'))
    payload = b'p' * (17 * 2**20)  # two ranged parts
    _, [sid] = commit(registry, 1, payloads=[payload])
    fresh = Registry(registry.url, storage_options=registry._store._options, cache_dir=tmp_path / 'fresh')
    fresh.open(PROJECT, '0.1', 1)
    proxy.force = once('reset-body', 'GET', '/states/')
    assert fresh.read(PROJECT, '0.1', 1, sid) == payload
    assert proxy.force.left == [0]


def test_another_writers_marker_is_still_a_conflict(proxied, package_factory, tmp_path, s3server):
    """The check above compares the whole marker: a different writer's marker for the same number conflicts."""
    registry, _ = proxied
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    other = Registry(registry.url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'other')
    sid = uuid.uuid4()
    other.write(PROJECT, '0.1', sid, b'late')
    with pytest.raises(Exception, match='committed by another writer'):
        other.close(PROJECT, '0.1', 1, tag([sid]))


def test_short_soak_holds_every_invariant(tmp_path):
    """The CI soak: writers racing and killed, readers and mounts, faults injected, gc on a schedule, on every
    backend at once (moto, SeaweedFS, the GCS and Azure emulators)."""
    out = tmp_path / 'soak.json'
    done = subprocess.run(
        [sys.executable, '-m', 'benchmarks.soak', '--short', '--out', str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    report = done.stdout[-6000:] + done.stderr[-3000:]
    assert out.exists(), report
    results = json.loads(out.read_text())
    assert [r['backend'] for r in results] == ['moto', 'seaweedfs', 'gcs', 'azure'], report
    for result in results:
        assert result['violations'] == [], report
        assert result['scheduled_gc']['runs'] > 0, report
        assert result['lost'] == 0, report
        assert result['acknowledged']['generations'] > 0, report
        assert sum(result['faults'].values()) > 0, report
        assert sum(result['writers_killed'].values()) > 0, report
        # readers got whole content from the store: states read, or releases mounted (on Azure a reader that met a
        # fault waits out the SDK's 15 s first retry, so even 30 s of load may end before it reads a state)
        reads = sum(result['operations'].get(op, {}).get('acked', 0) for op in ('reader read', 'reader mount'))
        assert reads > 0, report
    assert done.returncode == 0, report


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (from /proc: children are listed by their parent)."""
    children: dict[int, list[int]] = {}
    for entry in pathlib.Path('/proc').iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / 'stat').read_text().rsplit(')', 1)[1].split()[1])
            except OSError:
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), ()):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = pathlib.Path(f'/proc/{pid}/stat')
    return not (stat.exists() and stat.read_text().rsplit(')', 1)[1].split()[0] == 'Z')


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='the kernel ends the children: Linux only')
def test_a_killed_soak_leaves_no_server_or_worker_behind(tmp_path):
    """SIGKILL of the soak (a CI timeout, an operator's kill -9): its server, forkserver, writers and readers end
    with it, instead of running on and holding ports and memory."""
    soak = subprocess.Popen(
        [sys.executable, '-m', 'benchmarks.soak', '--backend', 'moto', '--duration', '300', '--writers', '2']
        + ['--readers', '1', '--keep-logs', str(tmp_path)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, 'TMPDIR': str(tmp_path)},  # a killed soak cannot remove its work directory
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while len(children := descendants(soak.pid)) < 6:  # moto, forkserver, resource tracker, 3 workers
            assert soak.poll() is None and time.monotonic() < deadline, children
            time.sleep(0.2)
    finally:
        soak.kill()
        soak.wait()
    deadline = time.monotonic() + 30
    while left := [pid for pid in children if alive(pid)]:
        assert time.monotonic() < deadline, {pid: pathlib.Path(f'/proc/{pid}/cmdline').read_bytes() for pid in left}
        time.sleep(0.2)


def test_embedded_server_lets_one_of_racing_exclusive_creates_win(embedded_server, bucket):
    """Found by the soak (two writers acknowledged one generation on moto): moto checks ``If-None-Match: *`` and
    stores the object later, without a lock, so racing creates could both succeed. The embedded server serialises
    conditional writes; thread switches forced as often as possible make the race as likely as it gets."""
    clients = [embedded_server.client() for _ in range(8)]
    doubles = []
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for round_ in range(100):
            wins = []
            barrier = threading.Barrier(len(clients))

            def create(client, i, key=f'race/{round_}', barrier=barrier, wins=wins):
                barrier.wait()
                try:
                    client.put_object(Bucket=bucket, Key=key, Body=b'%d' % i * 100, IfNoneMatch='*')
                    wins.append(i)
                except botocore.exceptions.ClientError as err:
                    assert err.response['ResponseMetadata']['HTTPStatusCode'] == 412

            threads = [threading.Thread(target=create, args=(c, i)) for i, c in enumerate(clients)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert wins, f'round {round_}: nobody won'
            if len(wins) > 1:
                doubles.append(round_)
    finally:
        sys.setswitchinterval(interval)
    assert doubles == []
