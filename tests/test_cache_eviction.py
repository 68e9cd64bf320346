"""The local blob cache stays within its cap without scanning itself on every insert.

Least recently used means the oldest seal mtime (``get`` touches a blob's seal, never the blob); the tests set
mtimes explicitly instead of sleeping, and count scans instead of timing anything.
"""

import hashlib
import os
import pathlib
import pickle
import threading
import time

import pytest

from forml_s3.runtime import cache as cachemod

KiB = 2**10


def blob(number: int, size: int) -> tuple[bytes, str]:
    """Distinct content of ``size`` bytes and its sha256."""
    data = number.to_bytes(8, 'big') * (size // 8) + b'x' * (size % 8)
    return data, hashlib.sha256(data).hexdigest()


def on_disk(cache: cachemod.BlobCache) -> int:
    """Bytes of complete blobs under the cache root, counted here (not through the cache)."""
    return sum(
        os.stat(os.path.join(path, name)).st_size
        for path, _, names in os.walk(cache.root / 'blobs')
        for name in names
        if not name.endswith('.incomplete')
    )


def age(cache: cachemod.BlobCache, path: pathlib.Path, seconds_ago: float) -> None:
    """Mark a blob as last used ``seconds_ago`` (its seal's mtime)."""
    when = time.time() - seconds_ago
    os.utime(cache.seal_path(path), (when, when))


@pytest.fixture
def counted(monkeypatch):
    """Counts the full scans (a stat of every blob) made through ``BlobCache.blobs``."""
    calls = []
    original = cachemod.BlobCache.blobs

    def blobs(self):
        calls.append(self)
        return original(self)

    monkeypatch.setattr(cachemod.BlobCache, 'blobs', blobs)
    return calls


def test_many_inserts_stay_within_the_cap_plus_one_rescan_step_and_scan_rarely(tmp_path, counted):
    cap, size, inserts = 200 * KiB, 4 * KiB, 400  # 1.6 MiB written through a 200 KiB cache
    cache = cachemod.BlobCache(tmp_path, cap)
    step = cache.rescan_step
    assert step == 10 * KiB
    sizes = []
    for number in range(inserts):
        data, sha = blob(number, size)
        path = cache.put(data, sha)
        assert path.read_bytes() == data  # the blob just inserted is there
        sizes.append(on_disk(cache))
    assert max(sizes) < cap + step
    assert sizes[-1] <= cap
    assert min(sizes[inserts // 2 :]) >= cachemod.EVICT_TO_FRACTION * cap - size  # evicted down to 90%, not further
    # a scan per rescan step of bytes added (the first insert scans too), not one per insert
    assert cache.scans == len(counted)
    assert len(counted) <= inserts * size // step + 1
    assert len(counted) < inserts / 2


def test_least_recently_used_blobs_go_first(tmp_path):
    cap = 100 * KiB
    cache = cachemod.BlobCache(tmp_path, cap)
    paths = []
    for number in range(10):  # 90 KiB: under the cap
        data, sha = blob(number, 9 * KiB)
        paths.append(cache.put(data, sha))
        age(cache, paths[-1], 1000 - number)  # blob 0 the oldest
    assert cache.get(blob(0, 9 * KiB)[1]) == paths[0]  # used now: the newest
    assert cache.get(blob(1, 9 * KiB)[1]) == paths[1]

    data, sha = blob(99, 30 * KiB)  # 120 KiB: over the cap, evicted down to 90 KiB
    new = cache.put(data, sha)

    gone = [number for number, path in enumerate(paths) if not path.exists()]
    assert gone == [2, 3, 4, 5]  # the least recently used first, just enough of them: 84 KiB remain
    assert new.exists()
    assert on_disk(cache) == 84 * KiB


def test_the_blob_just_inserted_survives_even_when_least_recently_used(tmp_path):
    cap = 100 * KiB
    cache = cachemod.BlobCache(tmp_path, cap)
    older = []
    for number in range(5):
        data, sha = blob(number, 10 * KiB)
        older.append(cache.put(data, sha))
        age(cache, older[-1], -1000)  # used "in the future": all more recent than anything inserted now

    data, sha = blob(99, 120 * KiB)  # alone larger than the cap
    new = cache.fetch(sha, len(data), lambda target: target.write_bytes(data), name='big')

    assert new.read_bytes() == data
    assert not any(path.exists() for path in older)  # everything else went, the cache still over its cap
    assert on_disk(cache) == 120 * KiB


def test_a_cache_found_over_its_cap_is_evicted_at_the_first_insert(tmp_path, counted):
    big = cachemod.BlobCache(tmp_path, 10 * 2**20)
    for number in range(50):
        big.put(*blob(number, 10 * KiB))
    assert len(counted) == 1  # 500 KiB under a 10 MiB cap: one scan, at the first insert
    assert on_disk(big) == 500 * KiB

    small = cachemod.BlobCache(tmp_path, 100 * KiB)  # another process, or a smaller cap configured
    small.put(*blob(99, KiB))
    assert small.scans == 1
    assert on_disk(small) <= 90 * KiB


def test_an_existing_blob_is_not_added_again(tmp_path, counted):
    cache = cachemod.BlobCache(tmp_path, 100 * KiB)
    data, sha = blob(1, KiB)
    cache.put(data, sha)
    for _ in range(100):
        cache.put(data, sha)
        cache.fetch(sha, len(data), lambda target: pytest.fail('downloaded a cached blob'), name='cached')
    assert len(counted) == 1


def test_concurrent_inserts_keep_the_cap(tmp_path):
    cap, size = 200 * KiB, 4 * KiB
    cache = cachemod.BlobCache(tmp_path, cap)
    errors = []

    def insert(worker: int) -> None:
        try:
            for number in range(100):
                data, sha = blob(worker * 1000 + number, size)
                cache.fetch(sha, size, lambda target, data=data: target.write_bytes(data), name=str(number))
        except Exception as err:  # reported below
            errors.append(err)

    threads = [threading.Thread(target=insert, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert on_disk(cache) < cap + cache.rescan_step
    assert cache.scans < 8 * 100 / 2  # not a scan per insert


def test_pickles_without_its_process_state(tmp_path):
    cache = cachemod.BlobCache(tmp_path, 100 * KiB)
    cache.put(*blob(1, KiB))
    clone = pickle.loads(pickle.dumps(cache))
    assert (clone.root, clone.max_bytes, clone.scans) == (cache.root, cache.max_bytes, 0)
    clone.put(*blob(2, KiB))
    assert clone.scans == 1  # a fresh process's first insert scans
    assert on_disk(clone) == 2 * KiB


def evict_all(root: pathlib.Path) -> None:
    """Another process with a 1-byte cap on the same cache stores a new blob: its scan evicts everything else (run in
    a thread, joined)."""
    other, data = cachemod.BlobCache(root, 1), os.urandom(16)
    evictor = threading.Thread(target=other.put, args=(data, hashlib.sha256(data).hexdigest()))
    evictor.start()
    evictor.join()


def test_an_opened_blob_reads_whole_after_another_process_evicts_it(tmp_path):
    """A blob handed out opened is read in full however soon it is evicted: on a miss (opened before its rename
    into place) and on a hit (opened, then checked); never downloaded twice."""
    cache = cachemod.BlobCache(tmp_path, 100 * KiB)
    data, sha = blob(1, 50 * KiB)
    downloads = []

    def download(target: pathlib.Path) -> None:
        downloads.append(target)
        target.write_bytes(data)

    with cache.open(sha, len(data), download, name='miss') as file:
        evict_all(tmp_path)
        assert not cache.path(sha).exists()  # evicted between the moment it was handed out and its reading
        assert file.read() == data
    assert len(downloads) == 1
    cache.put(data, sha)
    with cache.open(sha, len(data), lambda target: pytest.fail('downloaded a cached blob'), name='hit') as file:
        evict_all(tmp_path)
        assert not cache.path(sha).exists()
        assert file.read() == data


def test_marker_copies_count_towards_the_cap_and_are_evicted_first_when_least_recently_used(tmp_path):
    cap = 100 * KiB
    cache = cachemod.BlobCache(tmp_path, cap)
    copies = [blob(number, 10 * KiB)[0] for number in range(30)]  # 300 KiB of marker copies through a 100 KiB cache
    for number, data in enumerate(copies):
        cache.put_named(f'marker-{number}', data)
        age(cache, cache.named(f'marker-{number}'), 1000 - number)  # written in order, oldest first
    stored = sum(p.stat().st_size for p in (tmp_path / cachemod.NAMED).iterdir() if p.suffix != '.incomplete')
    assert stored < cap + cache.rescan_step
    assert cache.read_named('marker-0') is None  # the least recently used went first
    assert cache.read_named('marker-29') == copies[-1]
    cache.put(*blob(99, 95 * KiB))  # a blob pushes the marker copies out: one cap for both
    assert cache.read_named('marker-29') is None
