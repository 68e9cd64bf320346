"""The registry contract on each S3 server (moto or LocalStack, and SeaweedFS) where it needs more than the
``backend``-parametrized modules: a level of 300 generations listed in one LIST page, counted by the client (these
servers keep no request log)."""

from forml_s3.registry import Registry
from forml_s3.runtime import transfers

from .conftest import new_bucket
from .helpers import PROJECT, commit, every_s3_backend


def list_calls(registry: Registry) -> list[dict]:
    """The ListObjectsV2 calls the registry's client makes from now on (a botocore event hook)."""
    calls: list[dict] = []
    registry._store.fs.s3.meta.events.register(
        'before-parameter-build.s3.ListObjectsV2',
        lambda params, **_: calls.append(params),
        unique_id=f'count-{id(calls)}',
    )
    return calls


@every_s3_backend
def test_300_generations_list_in_one_page(s3backend, request, tmp_path, package_factory):
    url = f's3://{new_bucket(s3backend, request)}/forml'
    writer = Registry(url, storage_options=s3backend.storage_options(), cache_dir=tmp_path / 'w')
    writer.push(package_factory('0.1'))
    commit(writer, 1, payloads=())
    marker = writer._store.read(writer._layout.generation_marker(PROJECT, '0.1', 1))
    prefix = writer._layout.generations(PROJECT, '0.1')
    # the same (valid) marker under 299 more numbers, written directly: the listing reads no marker content
    transfers.run_all(lambda g: writer._store.write(f'{prefix}/{g}.json', marker), range(2, 301))

    reader = Registry(url, storage_options=s3backend.storage_options(), cache_dir=tmp_path / 'r')
    calls = list_calls(reader)
    assert sorted(reader.generations(PROJECT, '0.1')) == list(range(1, 301))
    assert len(calls) == 1 and calls[0]['Delimiter'] == '/'
    assert reader.open(PROJECT, '0.1', 300).training.timestamp == reader.open(PROJECT, '0.1', 1).training.timestamp
