"""forml-s3's own multipart upload against moto's HTTP server: parts are zero-copy views of the bytes (or of the
file), each with its CRC32 computed up front over plain HTTP (S3 then stores a composite checksum), or none at all
where the client is told to checksum only when required."""

import hashlib
import os
import pathlib

import pytest

from forml_s3 import storage
from forml_s3.storage import s3 as storemod

SIZE = storemod.MULTIPART_FROM + storemod.PART_SIZE // 2 + 7  # three parts, the last one short and odd


@pytest.fixture(scope='module')
def payload() -> bytes:
    return os.urandom(SIZE)


@pytest.mark.parametrize('source', ['bytes', 'file'])
def test_a_multipart_upload_round_trips_with_part_checksums(embedded_server, bucket, tmp_path, payload, source):
    st = storage.open_store(f's3://{bucket}/mp', embedded_server.storage_options())
    data: bytes | pathlib.Path = payload
    if source == 'file':
        data = tmp_path / 'state.bin'
        data.write_bytes(payload)
    embedded_server.reset_counts()
    st.write(f'{bucket}/mp/state.bin', data, metadata={'sha256': hashlib.sha256(payload).hexdigest()})
    parts = embedded_server.count(method='PUT', query_contains='partNumber=')
    assert parts == 3
    client = embedded_server.client()
    head = client.head_object(Bucket=bucket, Key='mp/state.bin', ChecksumMode='ENABLED')
    assert head['ContentLength'] == SIZE
    assert head['ChecksumCRC32']  # created with ChecksumAlgorithm=CRC32: every part had to carry its own CRC32
    assert head['Metadata']['sha256'] == hashlib.sha256(payload).hexdigest()
    target = tmp_path / 'back.bin'
    st.download(f'{bucket}/mp/state.bin', target, SIZE)
    assert target.read_bytes() == payload


def test_no_part_checksums_when_the_client_checksums_only_when_required(embedded_server, bucket, tmp_path, payload):
    options = embedded_server.storage_options(config_kwargs={'request_checksum_calculation': 'when_required'})
    st = storage.open_store(f's3://{bucket}/mp', options)
    st.write(f'{bucket}/mp/state.bin', payload)
    head = embedded_server.client().head_object(Bucket=bucket, Key='mp/state.bin', ChecksumMode='ENABLED')
    assert 'ChecksumCRC32' not in head
    target = tmp_path / 'back.bin'
    st.download(f'{bucket}/mp/state.bin', target, SIZE)
    assert target.read_bytes() == payload
