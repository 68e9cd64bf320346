"""Large and many transfers: multipart uploads and ranged downloads of large states and packages (seen in moto's
request log; the large-read workloads of the benchmarks, counted instead of timed), the hash taken as a download's
parts land, and the byte budget that bounds what ``write`` holds in memory while uploads are pending."""

import errno
import hashlib
import io
import os
import pathlib
import threading
import uuid

import forml
import pytest

from forml_s3 import storage
from forml_s3.registry import Registry
from forml_s3.runtime import cache as cachemod
from forml_s3.runtime import staging, transfers
from forml_s3.storage import digest, fastget
from forml_s3.storage import s3 as s3store

from .helpers import PROJECT, tag

MiB = 2**20


def test_large_state_uploads_in_parts_and_downloads_in_ranges(counted, s3server, bucket, tmp_path, package_factory):
    size = 40 * MiB  # 3 parts of 16 MiB (the last one short)
    state = uuid.uuid4().bytes * (size // 16)
    writer = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'w')
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    counted.reset_counts()
    writer.write(PROJECT, '0.1', sid, state)
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    key = f'/{bucket}/forml/{PROJECT}/0.1/states/{sid}.bin'
    parts = [r for r in counted.requests if r.method == 'PUT' and r.path == key and 'partNumber=' in r.query]
    assert len(parts) == 3 and sum(r.bytes_in for r in parts) == size
    assert max(r.bytes_in for r in parts) == s3store.PART_SIZE
    assert counted.count(method='POST', path_prefix=key, query_contains='uploads') == 1  # create the upload
    assert counted.count(method='POST', path_prefix=key, query_contains='uploadId') == 1  # complete it

    counted.reset_counts()
    reader = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'r')
    reader.open(PROJECT, '0.1', 1)
    assert reader.read(PROJECT, '0.1', 1, sid) == state
    ranged = [r for r in counted.requests if r.method == 'GET' and r.path == key]
    # 3 parts in flight at once, one window: their sizes step by 1 MiB around the mean (40 MiB / 3), in order
    assert sorted(r.range for r in ranged) == [
        'bytes=0-12932436',
        'bytes=12932437-26913450',
        'bytes=26913451-41943039',
    ]
    assert sum(r.bytes_out for r in ranged) == size  # every byte once, no whole-object GET on top


@pytest.mark.parametrize(
    ('size', 'sizes'),
    [
        (0, []),
        (5, [5]),
        (16 * MiB, [16 * MiB]),
        (40 * MiB, [12932437, 13981014, 15029589]),  # one window of 3: mean 13.33 MiB, steps of 1 MiB
        (50 * MiB, [11 * MiB, 12 * MiB, 13 * MiB, 14 * MiB]),
        # 16 parts, 8 in flight: 8 of 16 MiB, then the last window from 12.5 to 19.5 MiB
        (256 * MiB, [16 * MiB] * 8 + [int((12.5 + i) * MiB) for i in range(8)]),
    ],
)
def test_a_download_plans_as_many_parts_as_equal_ones_with_its_last_window_staggered(size, sizes):
    planned = digest.spans(size, 16 * MiB, 8)
    assert [end - start for start, end in planned] == sizes
    assert [start for start, _ in planned] == [sum(sizes[:i]) for i in range(len(sizes))]  # contiguous, in order
    assert len(planned) == -(-size // (16 * MiB))


def test_a_tiny_last_window_keeps_every_part_non_empty():
    first, second = digest.spans(16 * MiB + 7, 16 * MiB, 8)  # two parts of about 8 MiB, 1 MiB apart
    assert first[0] == 0 and first[1] == second[0] and second[1] == 16 * MiB + 7
    assert abs((second[1] - second[0]) - (first[1] - first[0]) - MiB) <= 1
    planned = digest.spans(9, 4, 8)  # parts of 4 bytes: steps shrink to keep each part over half the mean
    assert all(end > start for start, end in planned) and planned[-1][1] == 9 and len(planned) == 3


def test_pending_uploads_hold_at_most_the_byte_budget():
    """A third 100 MiB upload waits while two hold 200 MiB of the 256 MiB budget, and goes once one is done."""
    transfers.pool()  # this process's pool and budget
    gates = [threading.Event() for _ in range(3)]
    started = []

    def upload(number: int):
        def run() -> None:
            started.append(number)
            gates[number].wait(30)

        return run

    size = 100 * MiB
    urls = [f'memory://budget/{uuid.uuid4()}' for _ in range(3)]
    first = transfers.submit_upload(urls[0], size, 'x', upload(0))
    transfers.submit_upload(urls[1], size, 'x', upload(1))
    third: list[transfers.Pending] = []
    waiting = threading.Thread(target=lambda: third.append(transfers.submit_upload(urls[2], size, 'x', upload(2))))
    waiting.start()
    waiting.join(0.5)
    assert waiting.is_alive() and not third  # blocked: 300 MiB would exceed the budget
    gates[0].set()
    first.future.result(30)
    waiting.join(30)
    assert not waiting.is_alive() and third
    gates[1].set()
    gates[2].set()
    third[0].future.result(30)
    assert sorted(started) == [0, 1, 2]
    for url in urls:
        transfers.forget(url)


def test_a_state_larger_than_the_whole_budget_still_goes_alone():
    done = threading.Event()
    pending = transfers.submit_upload('memory://budget/huge', transfers.QUEUED_BYTES * 2, 'x', done.set)
    pending.future.result(30)
    assert done.is_set()
    transfers.forget('memory://budget/huge')


@pytest.mark.parametrize('keep', [20 * MiB, 40 * MiB - 1])
def test_a_large_state_truncated_in_the_bucket_is_corrupted_not_a_network_error(
    s3server, bucket, tmp_path, package_factory, keep
):
    """Truncated before the last part (the ranged GET is refused: 416) or inside it (a short part)."""
    writer = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'w')
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    state = uuid.uuid4().bytes * (40 * MiB // 16)
    writer.write(PROJECT, '0.1', sid, state)
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    key = f'forml/{PROJECT}/0.1/states/{sid}.bin'
    s3server.client().put_object(Bucket=bucket, Key=key, Body=state[:keep])

    reader = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'r')
    with pytest.raises(forml.InvalidError, match=f'Object s3://{bucket}/{key} is corrupted'):
        reader.read(PROJECT, '0.1', 1, sid)


def test_a_failed_part_aborts_the_upload_and_commits_nothing(
    embedded_server, s3server, bucket, tmp_path, package_factory
):
    writer = Registry(
        f's3://{bucket}/forml',
        storage_options=s3server.storage_options(max_attempts=1, retries=1),
        cache_dir=tmp_path / 'w',
    )
    writer.push(package_factory('0.1'))
    fault = s3server.inject(500, 'InternalError', count=100, match=lambda c: 'partNumber=2' in c.query)
    try:
        sid = uuid.uuid4()
        writer.write(PROJECT, '0.1', sid, uuid.uuid4().bytes * (40 * MiB // 16))
        with pytest.raises(Exception, match='InternalError|Upload of state'):
            writer.close(PROJECT, '0.1', 1, tag([sid]))
    finally:
        s3server.clear_faults()
    assert fault.fired >= 1
    assert s3server.client().list_multipart_uploads(Bucket=bucket).get('Uploads', []) == []  # aborted
    assert list(writer.generations(PROJECT, '0.1')) == []


# --- large reads: ranged GETs, each byte once, hashed as it lands ---------------------------------------------
@pytest.fixture
def hashes(monkeypatch):
    """Every full pass the cache makes over a file to hash it (none when the download hashed it as it landed)."""
    passes: list[str] = []
    real = cachemod.sha256_of

    def counting(path):
        passes.append(str(path))
        return real(path)

    monkeypatch.setattr(cachemod, 'sha256_of', counting)
    return passes


@pytest.mark.parametrize('client', ['obstore', 'aiobotocore'])
def test_a_large_state_is_read_in_ranges_once_and_hashed_as_it_lands(
    counted, s3server, bucket, tmp_path, package_factory, hashes, monkeypatch, client, in_memory, preads
):
    """Both download paths (obstore, and aiobotocore where obstore would not honour the storage options): two
    ranged GETs for a 20 MiB state, every byte once, the cache never reads the file again to verify it, and the
    read hands out the bytes hashed as they landed (copied into its buffer: nothing is read back from the file)."""
    if client == 'aiobotocore':
        monkeypatch.setattr(fastget, 'client', lambda *_: None)
    size = 20 * MiB + 5
    state = os.urandom(size)
    writer = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'w')
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    writer.write(PROJECT, '0.1', sid, state)
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    counted.reset_counts()
    hashes.clear()
    reader = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'r')
    assert reader.read(PROJECT, '0.1', 1, sid) == state  # (no open: no prefetch to join, the read downloads it)
    assert in_memory == {'prefixes': [0], 'handed': 1}
    assert preads == [0, size]  # every chunk copied into the read's buffer as it landed (once), hashed there
    key = f'/{bucket}/forml/{PROJECT}/0.1/states/{sid}.bin'
    ranged = [r for r in counted.requests if r.method == 'GET' and r.path == key]
    half = size // 2  # two parts in one window, 1 MiB apart
    assert sorted(r.range for r in ranged) == [f'bytes=0-{half - MiB // 2 - 1}', f'bytes={half - MiB // 2}-{size - 1}']
    assert sum(r.bytes_out for r in ranged) == size
    assert hashes == []  # hashed while downloading, not in a second pass
    assert reader.read(PROJECT, '0.1', 1, sid) == state  # from the cache: no request
    assert len([r for r in counted.requests if r.method == 'GET' and r.path == key]) == 2


def test_the_stores_of_one_bucket_share_one_obstore_client_made_ahead_by_connect(counted, s3server, bucket):
    options = s3server.storage_options()
    counted.reset_counts()
    first = storage.open_store(f's3://{bucket}/one', options)
    second = storage.open_store(f's3://{bucket}/two', options)
    made = []
    real = fastget._client
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fastget, '_client', lambda *args: made.append(args[1]) or real(*args))
        first.connect()  # the s3fs client, and the obstore client of the bucket
        assert made == [bucket] and counted.requests == []  # made, not used: no request
        assert second._fastget() is first._fastget() is not None
        assert made == [bucket]  # made once for both stores (fsspec shares their s3fs client)
        other = storage.open_store(f's3://{bucket}/three', {**options, 'config_kwargs': {'connect_timeout': 7}})
        assert other._fastget() is not first._fastget()  # other options: a client of its own
        assert made == [bucket, bucket]


def test_a_large_package_mounts_in_ranges_once_per_machine(
    counted, s3server, bucket, tmp_path, package_factory, hashes
):
    """``mount`` (and ``pull``) of a large package: ranged GETs, hashed as they land; a second mount on the same
    machine transfers nothing."""
    options = s3server.storage_options()
    Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'w').push(
        package_factory('0.1', data=os.urandom(18 * MiB))
    )
    counted.reset_counts()
    hashes.clear()
    events = []
    real_extract, real_hexdigest = staging._extract, digest.Follower.hexdigest
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(staging, '_extract', lambda *a, **k: events.append('extract') or real_extract(*a, **k))
        patch.setattr(digest.Follower, 'hexdigest', lambda self: events.append('hash') or real_hexdigest(self))
        first = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'r')
        assert pathlib.Path(first.mount(PROJECT, '0.1').path).exists()
    # extracted once, as soon as the last byte landed, before the download's hash was waited for
    assert events == ['extract', 'hash']
    package = [r for r in counted.requests if r.method == 'GET' and r.path.endswith('.4ml')]
    assert len(package) == 2 and all(r.range for r in package)  # two parts of about half each
    size = sum(r.bytes_out for r in package)
    assert size > 18 * MiB and hashes == []
    counted.reset_counts()
    second = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'r')
    assert pathlib.Path(second.mount(PROJECT, '0.1').path).exists()
    assert pathlib.Path(second.pull(PROJECT, '0.1').path).stat().st_size == size
    assert [r for r in counted.requests if r.path.endswith('.4ml')] == []


@pytest.mark.parametrize('where', ['data', 'header'])
def test_a_large_package_changed_in_the_bucket_installs_nothing(s3server, bucket, tmp_path, package_factory, where):
    """Extracted as its last byte lands, before its hash is known: where the hash then does not match the marker's,
    the mount fails as corrupted and the extraction is deleted; nothing is installed, cached or left aside. The early
    extraction checks no CRC (the sha256 decides), so it completes with a byte changed in the data, as with one in
    a local header's time."""
    options = s3server.storage_options()
    Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'w').push(
        package_factory('0.1', data=os.urandom(18 * MiB))
    )
    client = s3server.client()
    [key] = [o['Key'] for o in client.list_objects_v2(Bucket=bucket)['Contents'] if o['Key'].endswith('.4ml')]
    body = bytearray(client.get_object(Bucket=bucket, Key=key)['Body'].read())
    body[len(body) // 2 if where == 'data' else 10] ^= 1  # (10: the first member's modification time)
    client.put_object(Bucket=bucket, Key=key, Body=bytes(body))
    extracted = []
    real_extract = staging._extract
    reader = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'r')
    discarded, real_discard = [], staging._Early.discard
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(staging, '_extract', lambda *a, **k: extracted.append(a[1]) or real_extract(*a, **k))
        patch.setattr(staging._Early, 'discard', lambda self: discarded.append(self.tree) or real_discard(self))
        with pytest.raises(forml.InvalidError, match=f'Object s3://{bucket}/{key} is corrupted'):
            reader.mount(PROJECT, '0.1')
    # the last discard (after the failed check) found the complete tree
    assert discarded[-1] == extracted[0]
    assert len(extracted) == 1 and not extracted[0].exists()  # extracted early (completely or not), then deleted
    left = [p.relative_to(tmp_path / 'r') for p in (tmp_path / 'r').rglob('*') if p.is_file()]
    # the release marker (cached, with its seal) and the locks stay; no package, no tree
    assert all(p.suffix == '.lock' or 'markers' in p.parts for p in left), left
    staged = tmp_path / 'r' / 'staging' / PROJECT
    assert [p.name for p in staged.iterdir()] == [staging.LOCKS]


def test_only_the_early_extraction_skips_the_members_crc(tmp_path, monkeypatch):
    """The early extraction (whose archive's sha256 is checked over the same bytes before its tree is used) checks
    no member's CRC32; an install from a package file checks them all."""
    import zipfile

    data = os.urandom(3 * MiB)
    archive = tmp_path / 'p.4ml'
    with zipfile.ZipFile(archive, 'w', zipfile.ZIP_DEFLATED) as zipped:
        zipped.writestr('pkg/data.bin', data)
        zipped.writestr('pkg/__init__.py', 'x = 1\n')
    checked = [0]
    real = zipfile.crc32

    def counting(chunk, value=0):
        checked[0] += len(chunk)
        return real(chunk, value)

    monkeypatch.setattr(zipfile, 'crc32', counting)
    early = staging._Early(tmp_path / 'early' / 'tree')
    fd = os.open(archive, os.O_RDONLY)
    try:
        early.extract(fd)
    finally:
        os.close(fd)
    assert early.tree is not None and (early.tree / 'pkg' / 'data.bin').read_bytes() == data
    assert checked[0] == 0
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    installed = staging.install(archive, sha, tmp_path / 'installed' / 'tree')
    assert (installed / 'pkg' / 'data.bin').read_bytes() == data
    assert checked[0] >= len(data)  # every byte of the members


def test_a_large_state_changed_in_the_bucket_is_corrupted(s3server, bucket, tmp_path, package_factory):
    """Same size, other bytes: the hash taken as the parts land does not match the marker's; nothing is cached."""
    writer = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'w')
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    state = os.urandom(20 * MiB)
    writer.write(PROJECT, '0.1', sid, state)
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    key = f'forml/{PROJECT}/0.1/states/{sid}.bin'
    s3server.client().put_object(Bucket=bucket, Key=key, Body=state[:-1] + bytes([state[-1] ^ 1]))
    reader = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'r')
    with pytest.raises(forml.InvalidError, match=f'Object s3://{bucket}/{key} is corrupted'):
        reader.read(PROJECT, '0.1', 1, sid)
    assert not list((tmp_path / 'r' / 'blobs').glob('*/*'))


def test_a_ranged_get_failing_after_its_retries_says_what_to_do(
    embedded_server, s3server, bucket, tmp_path, package_factory, caplog
):
    """obstore fails after its retries, aiobotocore is tried once more (a redirect it would follow, say), then the
    user is told what to do."""
    writer = Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), cache_dir=tmp_path / 'w')
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    writer.write(PROJECT, '0.1', sid, os.urandom(20 * MiB))
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    reader = Registry(
        f's3://{bucket}/forml',
        storage_options=s3server.storage_options(max_attempts=1, retries=1),
        cache_dir=tmp_path / 'r',
    )
    fault = s3server.inject(500, 'InternalError', count=100, match=lambda c: bool(c.headers.get('range')))
    try:
        with pytest.raises(forml.FailedError, match='Could not download .* retries exhausted'):
            reader.read(PROJECT, '0.1', 1, sid)
    finally:
        s3server.clear_faults()
    assert fault.fired >= 2
    assert 'through obstore failed' in caplog.text and 'using aiobotocore' in caplog.text


def test_a_whole_read_goes_through_obstore_and_falls_back_to_aiobotocore_once(
    embedded_server, s3server, bucket, caplog
):
    """A whole small object (a marker) is read in one GET through obstore (measured ~1 ms against aiobotocore's
    ~4.5 ms, docs/benchmarks.md); a missing object is FileNotFoundError from either client; where obstore fails after
    its retries, the read is made through aiobotocore, which the store keeps to from then on."""
    agents: list[str] = []

    def seen(call):
        if call.method == 'GET' and call.path.startswith(f'/{bucket}/forml/'):
            agents.append(call.headers.get('user-agent', ''))
        return False

    s3server.client().put_object(Bucket=bucket, Key='forml/marker.json', Body=b'{"a": 1}')
    store = storage.open_store(f's3://{bucket}/forml', s3server.storage_options(max_attempts=1, retries=1))
    path = f'{bucket}/forml/marker.json'
    embedded_server.inject(match=seen)  # (matches nothing: it only sees the requests)
    try:
        assert store.read(path) == b'{"a": 1}'
        with pytest.raises(FileNotFoundError):
            store.read(f'{bucket}/forml/missing.json')
        assert len(agents) == 2 and all('object_store' in agent for agent in agents), agents
        fault = embedded_server.inject(
            500, 'InternalError', count=100, match=lambda c: 'object_store' in c.headers.get('user-agent', '')
        )
        assert store.read(path) == b'{"a": 1}'  # obstore failed: aiobotocore read it
        assert fault.fired >= 1 and 'Read of' in caplog.text and 'using aiobotocore' in caplog.text
        fired = fault.fired
        assert store.read(path) == b'{"a": 1}'
        with pytest.raises(FileNotFoundError):
            store.read(f'{bucket}/forml/missing.json')
        assert fault.fired == fired  # no more obstore requests
        assert 'object_store' not in agents[-1] and len(agents) == 2 + fired + 3
    finally:
        embedded_server.clear_faults()


@pytest.mark.parametrize('order', ['in order', 'reversed', 'interleaved'])
def test_the_follower_hashes_spans_landing_in_any_order(tmp_path, order):
    data = os.urandom(3 * digest.CHUNK + 12345)
    spans = [(start, min(start + 100_003, len(data))) for start in range(0, len(data), 100_003)]
    if order == 'reversed':
        spans.reverse()
    elif order == 'interleaved':
        spans = spans[1::2] + spans[::2]
    fd = os.open(tmp_path / 'file', os.O_RDWR | os.O_CREAT)
    try:
        with digest.Follower(fd, len(data)) as follower:
            for start, end in spans:
                os.pwrite(fd, data[start:end], start)
                follower.landed(start, end)
            assert follower.hexdigest() == hashlib.sha256(data).hexdigest()
        with digest.Follower(fd, len(data) + 1) as follower:  # one byte never lands
            follower.landed(0, len(data))
            with pytest.raises(EOFError, match=f'Only {len(data)} of {len(data) + 1} bytes landed'):
                follower.hexdigest()
    finally:
        os.close(fd)


@pytest.fixture
def preads(monkeypatch):
    """The bytes the hashing thread read back from the file (those not copied into a reader's buffer as they
    landed), and those the other threads read (the landing threads' copies into that buffer are preads)."""
    read = [0, 0]
    real = os.preadv

    def counting(fd, buffers, offset):
        count = real(fd, buffers, offset)
        read[threading.current_thread().name != 'forml-s3-digest'] += count
        return count

    monkeypatch.setattr(os, 'preadv', counting)
    return read


def test_the_follower_hashes_into_a_buffer_attached_midway(tmp_path, preads):
    """A reader attaching its buffer to a running download has every byte hashed from then on in that buffer: what
    lands from then on is copied there as it lands (not read back), what landed before is read into it from the
    file; the sink's ``start`` says where the buffer begins to hold the bytes (before it: only in the file); a
    buffer attached after the end holds nothing."""
    data = os.urandom(3 * digest.CHUNK + 12345)
    half = 2 * digest.CHUNK
    buffer = bytearray(len(data))
    fd = os.open(tmp_path / 'file', os.O_RDWR | os.O_CREAT)
    try:
        sink = digest.Sink()
        with digest.Follower(fd, len(data), sink) as follower:
            os.pwrite(fd, data[:half], 0)
            follower.landed(0, half)  # no buffer yet: not copied
            assert sink.attach(memoryview(buffer))
            assert not sink.attach(memoryview(bytearray(len(data))))  # one reader per download
            os.pwrite(fd, data[half:], half)
            follower.landed(half, len(data))
            assert follower.hexdigest() == hashlib.sha256(data).hexdigest()
        sink.close()
        assert sink.start is not None and sink.start <= half and sink.start % digest.CHUNK == 0
        assert buffer[sink.start :] == data[sink.start :]
        assert preads[0] == half  # only what landed before the buffer was there
        assert not sink.attach(memoryview(bytearray(len(data))))  # over
    finally:
        os.close(fd)


@pytest.fixture
def in_memory(monkeypatch):
    """The prefixes a read copied from the cached file into its buffer, and how many reads handed out a buffer."""
    seen = {'prefixes': [], 'handed': 0}
    read_into, value = cachemod._read_into, cachemod._Buffer.value

    def reading(file, view):
        seen['prefixes'].append(len(view))
        return read_into(file, view)

    def handing(self):
        seen['handed'] += 1
        return value(self)

    monkeypatch.setattr(cachemod, '_read_into', reading)
    monkeypatch.setattr(cachemod._Buffer, 'value', handing)
    return seen


@pytest.mark.parametrize('running', ['verified', 'corrupted'])
def test_a_read_joins_the_download_running_in_its_process(tmp_path, in_memory, monkeypatch, running):
    """A read of a blob another thread is downloading (a prefetch) joins it and hands out the bytes it hashed, reading
    only the prefix hashed before it joined from the file; where that download turns out corrupted, the read
    downloads the blob itself (into a buffer of its own) and hands out the right bytes."""
    blobs = cachemod.BlobCache(tmp_path / 'cache')
    data = os.urandom(3 * digest.CHUNK + 12345)
    sha = hashlib.sha256(data).hexdigest()
    half = len(data) // 2
    joined = threading.Event()
    downloads = []

    def landing(content):
        def land(target, sink):
            downloads.append(sink)
            fd = os.open(target, os.O_RDWR)
            try:
                with digest.Follower(fd, len(content), sink) as follower:
                    os.pwrite(fd, content[:half], 0)
                    follower.landed(0, half)
                    if len(downloads) == 1:  # the prefetch: the rest lands once the read joined
                        assert joined.wait(30)
                    os.pwrite(fd, content[half:], half)
                    follower.landed(half, len(content))
                    return follower.hexdigest()
            finally:
                os.close(fd)

        return land

    def unused(_):
        raise AssertionError('the download that lands nothing in memory is not used')

    first = data if running == 'verified' else data[:-1] + bytes([data[-1] ^ 1])
    failures = []

    def prefetch():
        try:
            blobs.fetch(sha, len(data), unused, name='blob', landing=landing(first))
        except cachemod.Corrupted as err:
            failures.append(err)

    thread = threading.Thread(target=prefetch)
    thread.start()
    real_attach = digest.Sink.attach

    def attach(self, buffer):
        done = real_attach(self, buffer)
        if done and downloads and self is downloads[0]:
            joined.set()
        return done

    try:
        for _ in range(3000):  # until the prefetch's download runs
            if downloads:
                break
            threading.Event().wait(0.01)
        monkeypatch.setattr(digest.Sink, 'attach', attach)
        got = blobs.load(sha, len(data), unused, name='blob', landing=landing(data))
    finally:
        joined.set()
        thread.join(30)
    assert got == data
    assert in_memory['handed'] == 1
    if running == 'verified':
        assert len(downloads) == 1 and not failures
        assert in_memory['prefixes'] == [downloads[0].start] and downloads[0].start <= half
    else:
        assert len(downloads) == 2 and len(failures) == 1  # the read's own download, from the first byte
        assert in_memory['prefixes'] == [0]
    assert blobs.read(sha) == data  # cached and sealed


def test_a_prefetch_starting_after_the_read_downloads_into_the_read_s_buffer(tmp_path, in_memory, preads, monkeypatch):
    """The read registered its download first but the prefetch took the file lock first: the prefetch downloads
    through the read's sink, so the read still hands out the bytes hashed as they landed, none read back."""
    blobs = cachemod.BlobCache(tmp_path / 'cache')
    data = os.urandom(3 * digest.CHUNK + 12345)
    sha = hashlib.sha256(data).hexdigest()
    started = threading.Event()
    downloads = []

    def land(target, sink):
        downloads.append(threading.current_thread().name)
        started.set()
        fd = os.open(target, os.O_RDWR)
        try:
            with digest.Follower(fd, len(data), sink) as follower:
                for start in range(0, len(data), 2**20):
                    chunk = data[start : start + 2**20]
                    os.pwrite(fd, chunk, start)
                    follower.landed(start, start + len(chunk))
                return follower.hexdigest()
        finally:
            os.close(fd)

    fetch = cachemod.BlobCache._fetch

    def later_for_the_read(self, *args, **kwargs):
        if threading.current_thread().name == 'read':
            assert started.wait(30)  # the prefetch holds the lock and downloads
        return fetch(self, *args, **kwargs)

    monkeypatch.setattr(cachemod.BlobCache, '_fetch', later_for_the_read)

    def unused(_):
        raise AssertionError('the download that lands nothing in memory is not used')

    got = []
    read = threading.Thread(
        target=lambda: got.append(blobs.load(sha, len(data), unused, name='blob', landing=land)), name='read'
    )
    read.start()
    for _ in range(3000):  # until the read's download is registered
        if sha in blobs._sinks:
            break
        threading.Event().wait(0.01)
    blobs.fetch(sha, len(data), unused, name='blob', landing=land)
    read.join(30)
    assert downloads == [threading.current_thread().name]  # the prefetch's, once
    assert got == [data] and in_memory == {'prefixes': [0], 'handed': 1} and preads[0] == 0


def test_a_read_that_joined_a_live_download_lets_go_of_its_buffer_where_the_cache_is_bypassed(tmp_path):
    """With the cache bypassed, a read and the prefetch it joined download at once: where the read's own download
    ends first, it reads its file and detaches its buffer from the prefetch's sink (which goes on without it,
    hashing from its file) instead of releasing memory that sink may still copy into."""
    blobs = cachemod.BlobCache(tmp_path / 'cache')
    blobs._unusable(OSError(errno.EROFS, 'Read-only file system'))  # as after a failed write into the cache
    data = os.urandom(3 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    prefetch = digest.Sink()  # a live download of the same blob, registered first
    with blobs._volatile():
        blobs._sinks[sha] = prefetch

    def landing(target, sink):  # the read's own download: lands the file (its sink is not the prefetch's)
        assert sink is not prefetch
        fd = os.open(target, os.O_RDWR | os.O_CREAT)
        try:
            digest.write_at(fd, data, 0)
        finally:
            os.close(fd)
        return sha

    assert blobs.load(sha, len(data), lambda target: None, name='blob', landing=landing) == data
    late = tmp_path / 'late'
    late.write_bytes(b'late bytes')
    fd = os.open(late, os.O_RDONLY)
    try:
        assert prefetch.fill(fd, 0, 10) is False  # detached: the prefetch's next chunk is not copied, no error
    finally:
        os.close(fd)
    assert prefetch.claim(0, 10) is None


def test_write_at_writes_everything_a_short_pwrite_left(tmp_path, monkeypatch):
    calls = []
    real = os.pwrite

    def short(fd, data, offset):  # at most 3 bytes per call, as a full disk or a signal may leave it
        calls.append(offset)
        return real(fd, bytes(data[:3]), offset)

    monkeypatch.setattr(digest.os, 'pwrite', short)
    fd = os.open(tmp_path / 'f', os.O_RDWR | os.O_CREAT)
    try:
        digest.write_at(fd, b'0123456789', 5)
    finally:
        os.close(fd)
    assert (tmp_path / 'f').read_bytes() == b'\0' * 5 + b'0123456789' and calls == [5, 8, 11, 14]
    monkeypatch.setattr(digest.os, 'pwrite', lambda fd, data, offset: 0)
    fd = os.open(tmp_path / 'g', os.O_RDWR | os.O_CREAT)
    try:
        with pytest.raises(OSError, match='Nothing written at offset 0'):
            digest.write_at(fd, b'x', 0)
    finally:
        os.close(fd)


def test_local_writes_are_sliced_and_whole(tmp_path, monkeypatch):
    """No call writes more than WRITE_SLICE to a local file (larger writes take high-order page-cache folios, slow
    where a VM has handed its free blocks back to the host), and every byte lands in order."""
    data = os.urandom(3 * digest.WRITE_SLICE + 17)
    sizes: list[int] = []
    real = os.pwrite

    def pwrite(fd, view, offset):
        sizes.append(len(view))
        return real(fd, view, offset)

    monkeypatch.setattr(digest.os, 'pwrite', pwrite)
    fd = os.open(tmp_path / 'at', os.O_RDWR | os.O_CREAT)
    try:
        digest.write_at(fd, data, 3)
    finally:
        os.close(fd)
    assert (tmp_path / 'at').read_bytes() == b'\0' * 3 + data
    assert sizes == [digest.WRITE_SLICE] * 3 + [17]

    class Recording(io.BytesIO):
        def write(self, chunk):
            sizes.append(len(chunk))
            return super().write(chunk)

    sizes.clear()
    file = Recording()
    digest.write_all(file, data)
    assert file.getvalue() == data and sizes == [digest.WRITE_SLICE] * 3 + [17]
    digest.write_file(tmp_path / 'whole', data)
    assert (tmp_path / 'whole').read_bytes() == data
