"""Real processes racing and dying against moto's HTTP server (the races on SeaweedFS too): nothing lost, nothing
half-visible.

Workers are separate Python processes (``tests/workers.py``, forked from a server that imported ForML once:
``tests/forked.py``) with their own caches, as on separate machines;
the test process owns the S3 server and inspects the bucket afterwards.
"""

import json
import os
import pathlib
import signal
import time

import pytest
from forml.io import asset

from forml_s3.model import layout
from forml_s3.registry import Registry

from .conftest import new_bucket
from .forked import Forked
from .helpers import PROJECT, every_s3_backend

ROOT = pathlib.Path(__file__).parent.parent
RACERS = 8


class Crowd:
    """Starts worker processes that wait for one start signal, then collects their JSON results."""

    def __init__(self, tmp_path: pathlib.Path, url: str, options: dict):
        self.tmp = tmp_path
        self.url, self.options = url, options
        self.go = tmp_path / 'go'
        self.procs: list[tuple[str, Forked]] = []

    def spawn(self, role: str, name: str, *extra: str, wait: bool = True) -> Forked:
        ready = self.tmp / f'ready-{name}'
        command = [role, '--url', self.url]
        command += ['--options', json.dumps(self.options), '--cache', str(self.tmp / f'cache-{name}')]
        command += ['--name', name, '--ready', str(ready), *extra]
        if wait:
            command += ['--go', str(self.go)]
        proc = Forked('tests.workers', *command, cwd=ROOT, output=self.tmp / f'output-{name}')
        self.procs.append((name, proc))
        return proc

    def start(self, timeout: float = 120) -> None:
        """Release the racers at once, after all are ready (imports and uploads done)."""
        deadline = time.monotonic() + timeout
        while not all((self.tmp / f'ready-{name}').exists() for name, _ in self.procs):
            failed = [(n, p.stderr.read()) for n, p in self.procs if p.poll() not in (None, 0)]
            assert not failed, failed
            assert time.monotonic() < deadline, 'workers did not get ready'
            time.sleep(0.05)
        self.go.touch()

    def results(self, timeout: float = 180) -> list[dict]:
        out = []
        for name, proc in self.procs:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, f'{name}: {stderr}'
            out.append(json.loads(stdout.strip().splitlines()[-1]))
        return out


@pytest.fixture
def s3url(s3backend, request):
    return f's3://{new_bucket(s3backend, request)}/forml', s3backend.storage_options()


@pytest.fixture
def reader(s3url, tmp_path):
    """The test process's view of the bucket. It lists anew every time (``listing_ttl=0``): the tests list, let
    workers change the bucket, and list again, often within the default 3 s its own listing cache would serve."""
    url, options = s3url
    return Registry(
        url, storage_options=options, cache_dir=tmp_path / 'reader-cache', staging=tmp_path / 'staging', listing_ttl=0
    )


@every_s3_backend
def test_racing_closes_of_one_generation_have_exactly_one_winner(s3backend, s3url, reader, tmp_path, package_factory):
    reader.push(package_factory('0.1'))
    crowd = Crowd(tmp_path, *s3url)
    for i in range(RACERS):
        crowd.spawn('close-race', f'racer{i}')
    crowd.start()
    results = crowd.results()

    winners = [r for r in results if r['won']]
    losers = [r for r in results if not r['won']]
    assert len(winners) == 1, results
    assert all('Generation 1 of demo-proj-0.1' in r['error'] and 'Train again' in r['error'] for r in losers)
    winner = winners[0]
    assert list(reader.generations(PROJECT, '0.1')) == [asset.Generation.Key(1)]
    committed = reader.open(PROJECT, '0.1', 1)
    assert [str(s) for s in committed.states] == winner['sids']
    assert committed.training.ordinal == winner['name']
    for i, sid in enumerate(committed.states):  # read verifies size and sha256 against the marker
        assert reader.read(PROJECT, '0.1', 1, sid) == f'{winner["name"]}:{i}'.encode() * 1000

    # the losers' states are intact but uncommitted: tagged for lifecycle expiry, named by no marker
    client = s3backend.client()
    bucket = s3url[0].split('/')[2]
    stored = {
        o['Key'] for o in client.list_objects_v2(Bucket=bucket, Prefix=f'forml/{PROJECT}/0.1/states/')['Contents']
    }
    marker = json.loads(client.get_object(Bucket=bucket, Key=f'forml/{PROJECT}/0.1/generations/1.json')['Body'].read())
    named = set(layout.Layout('forml').stored(PROJECT, '0.1', marker))  # the winner's states, or its pack
    assert named <= stored
    # each loser left its 3 states, one object each, or one pack of them (if its close came within the linger)
    assert RACERS - 1 <= len(stored - named) <= 3 * (RACERS - 1)
    uncommitted = {
        key
        for key in stored
        if client.get_object_tagging(Bucket=bucket, Key=key)['TagSet']
        == [{'Key': layout.UNCOMMITTED_TAG[0], 'Value': layout.UNCOMMITTED_TAG[1]}]
    }
    assert uncommitted == stored - named


@every_s3_backend
def test_racing_pushes_of_one_version_have_exactly_one_winner(s3url, reader, tmp_path, package_factory):
    crowd = Crowd(tmp_path, *s3url)
    packages = [package_factory('1.0', payload=f'racer{i}') for i in range(RACERS)]
    for i, package in enumerate(packages):
        crowd.spawn('push-race', f'racer{i}', '--package', str(package.path))
    crowd.start()
    results = crowd.results()

    winners = [r for r in results if r['won']]
    assert len(winners) == 1, results
    assert all('1.0' in r['error'] for r in results if not r['won'])
    assert list(reader.releases(PROJECT)) == [asset.Release.Key('1.0')]
    assert list(reader.projects()) == [PROJECT]
    winner_package = packages[int(winners[0]['name'].removeprefix('racer'))]
    assert reader.pull(PROJECT, '1.0').path.read_bytes() == winner_package.path.read_bytes()


def kill_when(server, proc: Forked, seen, timeout: float = 120) -> None:
    """SIGKILL the worker as soon as the server has seen a request matching ``seen``."""
    deadline = time.monotonic() + timeout
    while not any(seen(r) for r in server.requests):
        assert proc.poll() is None, f'worker ended before the kill point: {proc.communicate()}'
        assert time.monotonic() < deadline, 'kill point never reached'
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def upload_part(record) -> bool:
    return record.method == 'PUT' and 'partNumber=' in record.query


def test_writer_killed_mid_multipart_upload_leaves_nothing_visible(
    embedded_server, s3server, s3url, reader, tmp_path, package_factory
):
    reader.push(package_factory('0.1'))
    crowd = Crowd(tmp_path, *s3url)
    s3server.reset_counts()
    size = 200 * 2**20
    victim = crowd.spawn('write-big', 'victim', '--size', str(size), wait=False)
    kill_when(s3server, victim, upload_part)

    bucket = s3url[0].split('/')[2]
    client = s3server.client()
    assert list(reader.generations(PROJECT, '0.1')) == []
    assert client.list_objects_v2(Bucket=bucket, Prefix=f'forml/{PROJECT}/0.1/states/').get('KeyCount') == 0
    assert client.list_multipart_uploads(Bucket=bucket).get('Uploads')  # left for the lifecycle abort rule

    (tmp_path / 'rerun').mkdir()
    rerun = Crowd(tmp_path / 'rerun', *s3url)
    rerun.spawn('write-big', 'rerun', '--size', str(size), wait=False)
    result = rerun.results()[0]
    assert list(reader.generations(PROJECT, '0.1')) == [asset.Generation.Key(1)]
    assert len(reader.read(PROJECT, '0.1', 1, result['sid'])) == size


def test_pusher_killed_mid_upload_leaves_no_release(
    embedded_server, s3server, s3url, reader, tmp_path, package_factory
):
    package = package_factory('0.1', data=os.urandom(110 * 2**20))  # incompressible: a multipart upload
    crowd = Crowd(tmp_path, *s3url)
    s3server.reset_counts()
    victim = crowd.spawn('push', 'victim', '--package', str(package.path), wait=False)
    kill_when(s3server, victim, upload_part)
    assert list(reader.projects()) == []
    assert list(reader.releases(PROJECT)) == []
    with pytest.raises(Exception, match='No release'):
        reader.pull(PROJECT, '0.1')

    (tmp_path / 'rerun').mkdir()
    rerun = Crowd(tmp_path / 'rerun', *s3url)
    rerun.spawn('push', 'rerun', '--package', str(package.path), wait=False)
    assert rerun.results()[0]['won']
    assert list(reader.releases(PROJECT)) == [asset.Release.Key('0.1')]
    assert reader.pull(PROJECT, '0.1').path.read_bytes() == package.path.read_bytes()


def test_concurrent_mounts_install_one_tree_from_one_download(
    embedded_server, s3server, s3url, reader, tmp_path, package_factory
):
    reader.push(package_factory('0.1', payload='x' * 100_000))
    crowd = Crowd(tmp_path, *s3url)
    staging = tmp_path / 'shared-staging'
    for i in range(RACERS):
        crowd.spawn('mount', f'node{i}', '--staging', str(staging))
    s3server.reset_counts()
    crowd.start()
    results = crowd.results()

    (target,) = [p for p in (staging / PROJECT).iterdir() if not p.name.startswith('.')]
    assert target.name.startswith('0.1-')  # keyed by the package's sha256
    assert {r['path'] for r in results} == {str(target)}
    package_gets = [r for r in s3server.requests if r.method == 'GET' and r.path.endswith('.4ml')]
    assert len(package_gets) == 1
    assert "PAYLOAD = '" + 'x' * 100_000 in (target / 'demo' / '__init__.py').read_text()
    leftovers = sorted(p.name for p in (staging / PROJECT).iterdir() if p != target)
    assert leftovers in ([], ['.leases', '.locks'], ['.locks'])  # no temporary or partial trees
