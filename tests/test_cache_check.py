"""The local cache never serves bytes that changed after they were stored: states, packs, markers, packages.

A reader process fills a cache from the registry; the test then changes the cached files behind the cache's
back (a flipped byte, an edited marker, a rewritten package); a second reader process on the same cache gets
exactly what was committed, fetched again from the store, with a warning for each changed file. On local disk
and on moto's S3 server over HTTP.
"""

import hashlib
import json
import os
import pathlib
import subprocess
import sys
import zipfile

import pytest

from forml_s3.registry import Registry
from forml_s3.runtime import cache as cachemod
from forml_s3.runtime import packing

from . import conftest, embedded
from .helpers import commit

ROOT = pathlib.Path(__file__).parent.parent

READER = """
import hashlib, json, sys
from forml_s3.registry import Registry
args = json.loads(sys.argv[1])
registry = Registry(args['url'], storage_options=args['options'], cache_dir=args['cache'], staging=args['staging'])
tag = registry.open('demo-proj', '0.1', 1)
states = [hashlib.sha256(registry.read('demo-proj', '0.1', 1, sid)).hexdigest() for sid in tag.states]
package = hashlib.sha256(registry.pull('demo-proj', '0.1').path.read_bytes()).hexdigest()
module = (registry.mount('demo-proj', '0.1').path / 'demo' / '__init__.py').read_text()
print(json.dumps({'states': states, 'package': package, 'module': module}))
"""


def read_all(url: str, options: dict, cache: pathlib.Path, staging: pathlib.Path) -> tuple[dict, str]:
    """Open generation 1, read its states, pull and mount the release in a new process: what it got, its log."""
    args = {'url': url, 'options': options, 'cache': str(cache), 'staging': str(staging)}
    done = subprocess.run(
        [sys.executable, '-c', READER, json.dumps(args)], cwd=ROOT, capture_output=True, text=True, timeout=180
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def flip(path: pathlib.Path, offset: int = 0) -> None:
    """Change one byte of a file in place (same size, same inode)."""
    with path.open('r+b') as file:
        file.seek(offset)
        byte = file.read(1)
        file.seek(offset)
        file.write(bytes([byte[0] ^ 0x01]))


@pytest.fixture(params=['file', 's3'])
def where(request, tmp_path):
    s3server = request.getfixturevalue('s3server') if request.param == 's3' else None
    url, options = conftest.registry_url(request.param, tmp_path, request)
    return url, options, s3server


def test_changed_cached_files_are_fetched_again_never_served(where, tmp_path, package_factory, monkeypatch):
    url, options, s3server = where
    monkeypatch.setattr(packing, 'LINGER', 60.0)  # the small states go into one pack however slow the machine is
    writer = Registry(url, storage_options=options, cache_dir=tmp_path / 'writer')
    package = package_factory('0.1', payload='committed')
    writer.push(package)
    payloads = (os.urandom(2 * 2**20), b'small one' * 100, b'small two' * 100)  # one stored alone, two packed
    commit(writer, 1, payloads=payloads)
    expected = [hashlib.sha256(p).hexdigest() for p in payloads]
    package_sha = hashlib.sha256(pathlib.Path(package.path).read_bytes()).hexdigest()

    cache = tmp_path / 'machine-cache'
    first, log = read_all(url, options, cache, tmp_path / 'staging-1')
    assert first['states'] == expected and first['package'] == package_sha
    assert 'no longer matches' not in log

    blobs = cachemod.BlobCache(cache)
    flip(blobs.path(expected[0]), 1000)  # a state stored on its own
    # the packed states are cached in their pack only (cut from it and checked by their own sha256 on each read)
    assert not blobs.path(expected[1]).exists() and not blobs.path(expected[2]).exists()
    (pack,) = [p for p in (cache / 'blobs').glob('*/*') if p.stat().st_size == len(payloads[1]) + len(payloads[2])]
    flip(pack, 5)  # in the first packed state's bytes
    copies = [m for m in (cache / 'markers').rglob('*') if m.is_file() and not m.name.endswith('.seal')]
    # a generation marker is read by one GET in each process and never kept here (a copy could outlive its retirement)
    assert not [m for m in copies if b'"states"' in m.read_bytes()]
    (release,) = [m for m in copies if b'"package"' in m.read_bytes()]
    rewritten = package_factory('0.1', payload='rewritten')  # a valid package, another content
    rewritten_bytes = pathlib.Path(rewritten.path).read_bytes()
    marker = json.loads(release.read_bytes())  # the edited marker would name the rewritten package
    marker['package'].update(sha256=hashlib.sha256(rewritten_bytes).hexdigest(), size=len(rewritten_bytes))
    release.write_text(json.dumps(marker))
    packaged = blobs.path(package_sha, '.4ml')
    packaged.write_bytes(rewritten_bytes)
    with zipfile.ZipFile(packaged) as archive:  # the cached package now installs other code
        assert "PAYLOAD = 'rewritten'" in archive.read('demo/__init__.py').decode()

    counted = isinstance(s3server, embedded.Server)  # requests are logged by the embedded server only
    if counted:
        s3server.reset_counts()
    second, log = read_all(url, options, cache, tmp_path / 'staging-2')

    assert second['states'] == expected  # exactly what was committed
    assert second['package'] == package_sha
    assert second['module'].endswith("PAYLOAD = 'committed'\n")
    assert log.count('no longer matches its sha256') >= 4, log  # marker, package, pack and the state alone
    assert cachemod.sha256_of(blobs.path(package_sha, '.4ml'))[1] == package_sha  # the cache holds it again
    if counted:  # each changed file was fetched again from the bucket
        gets = [r.path for r in s3server.requests if r.method == 'GET' and 'list-type' not in r.query]
        for suffix in ('/releases/0.1.json', '/generations/1.json', '.4ml', '.pack', '.bin'):
            assert any(path.endswith(suffix) for path in gets), (suffix, gets)


def test_an_unchanged_cache_is_served_without_hashing_again(tmp_path, monkeypatch):
    """The check is one stat against the seal; only a changed (or unsealed) blob is hashed again."""
    blobs = cachemod.BlobCache(tmp_path)
    data = os.urandom(100_000)
    sha = hashlib.sha256(data).hexdigest()
    blobs.put(data, sha)
    hashed = []
    real = cachemod.sha256_of
    monkeypatch.setattr(cachemod, 'sha256_of', lambda path: hashed.append(path) or real(path))
    for _ in range(10):
        assert blobs.read(sha) == data and blobs.get(sha) == blobs.path(sha)
    assert hashed == []
    os.utime(blobs.path(sha), ns=(0, 0))  # touched (even to an old time): hashed once, found unchanged, sealed
    assert blobs.get(sha) == blobs.path(sha) and hashed == [blobs.path(sha)]
    assert blobs.get(sha) == blobs.path(sha) and len(hashed) == 1
    blobs.seal_path(blobs.path(sha)).unlink()  # a blob cached by an earlier version: hashed once, then sealed
    assert blobs.read(sha) == data and blobs.read(sha) == data
    assert blobs.get(sha) is not None and len(hashed) == 1  # read hashes the bytes it read, not the file


def test_a_span_is_served_only_if_it_holds_its_own_sha256(tmp_path):
    """A packed state is cut from its cached pack and checked against its own sha256, whatever the pack's seal says:
    a changed span is not served (the caller fetches the pack again), a missing pack is not an error."""
    blobs = cachemod.BlobCache(tmp_path)
    first, second = os.urandom(1000), os.urandom(3000)
    pack = first + second
    sha = hashlib.sha256(pack).hexdigest()
    blobs.put(pack, sha)
    state = hashlib.sha256(second).hexdigest()
    assert blobs.read_span(sha, len(first), len(second), state) == second
    assert blobs.read_span(sha, len(first), len(second) + 1, state) is None  # past the end: short
    assert blobs.read_span(sha, 0, len(second), state) is None  # another span
    flip(blobs.path(sha), len(first) + 10)
    assert blobs.read_span(sha, len(first), len(second), state) is None
    assert blobs.read_span('ab' * 32, 0, 10, state) is None  # not cached
