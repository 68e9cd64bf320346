"""A state id written twice by one process: the same content is a harmless retry, other content is refused, so
the generation marker's checksum always matches the stored bytes (a fresh reader with an empty cache checks)."""

import hashlib
import os
import uuid

import forml
import pytest

from forml_s3.registry import Registry
from forml_s3.runtime import packing

from .helpers import PROJECT, tag

LARGE = os.urandom(packing.MAX_STATE * 3)  # uploaded at once (multipart on S3)
SMALL = b'small state'  # held for packing


def fresh_reader(make_registry, tmp_path) -> Registry:
    return make_registry(cache_dir=tmp_path / f'reader-{uuid.uuid4().hex[:6]}', listing_ttl=0)


@pytest.mark.parametrize(
    'first, second', [(LARGE, SMALL), (SMALL, LARGE)], ids=['large-then-small', 'small-then-large']
)
def test_other_content_under_a_written_id_is_refused(make_registry, package_factory, tmp_path, first, second):
    writer = make_registry()
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    writer.write(PROJECT, '0.1', sid, first)
    with pytest.raises(forml.InvalidError, match=f'State {sid} of {PROJECT}-0.1 was already written by this process'):
        writer.write(PROJECT, '0.1', sid, second)
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    reader = fresh_reader(make_registry, tmp_path)
    marker = reader._generation_marker(PROJECT, '0.1', 1)
    assert marker['states'][str(sid)]['sha256'] == hashlib.sha256(first).hexdigest()
    assert reader.read(PROJECT, '0.1', 1, sid) == first
    with pytest.raises(forml.InvalidError, match='already written'):  # committed: still refused
        writer.write(PROJECT, '0.1', sid, second)


def test_the_same_content_again_is_a_retry(make_registry, package_factory, tmp_path):
    writer = make_registry()
    writer.push(package_factory('0.1'))
    sids = [uuid.uuid4(), uuid.uuid4()]
    for _ in range(2):
        writer.write(PROJECT, '0.1', sids[0], LARGE)
        writer.write(PROJECT, '0.1', sids[1], SMALL)
    writer.close(PROJECT, '0.1', 1, tag(sids))
    reader = fresh_reader(make_registry, tmp_path)
    assert [reader.read(PROJECT, '0.1', 1, s) for s in sids] == [LARGE, SMALL]


def test_after_a_failed_upload_other_content_may_be_written(make_registry, package_factory, tmp_path, monkeypatch):
    writer = make_registry(pack_states=False)
    writer.push(package_factory('0.1'))
    sid = uuid.uuid4()
    original = writer._store.write

    def failing(*args, **kwargs):
        raise OSError('connection reset')

    monkeypatch.setattr(writer._store, 'write', failing)
    writer.write(PROJECT, '0.1', sid, LARGE)
    with pytest.raises(Exception, match='connection reset'):
        writer.close(PROJECT, '0.1', 1, tag([sid]))
    monkeypatch.setattr(writer._store, 'write', original)
    writer.write(PROJECT, '0.1', sid, SMALL)
    writer.close(PROJECT, '0.1', 1, tag([sid]))
    assert fresh_reader(make_registry, tmp_path).read(PROJECT, '0.1', 1, sid) == SMALL
