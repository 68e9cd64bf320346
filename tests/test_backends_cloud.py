"""The registry contract on Google Cloud Storage and Azure Blob Storage, against their emulators over HTTP.

fake-gcs-server and Azurite run on 127.0.0.1 (``tests/servers.py``, session fixtures in ``conftest.py``). Every
``Registry`` method and the inventory run here through the same tests as on S3 (imported from
``test_registry``, ``test_bad_input`` and ``test_inventory``; this module's ``make_registry`` and ``inventory``
put them on the emulators). Then what only real servers show: exclusive creates racing, 8 processes racing to
push one release and to close one generation, one listing request for 300 generations, and the real ``forml``
CLI end to end.
"""

import concurrent.futures
import json
import sys
import time
import types
import uuid

import forml
import numpy
import pytest
from forml.io import asset

from forml_s3 import demo, storage
from forml_s3.cli.demo import parse_predictions
from forml_s3.inventory import Inventory
from forml_s3.model import layout
from forml_s3.registry import Registry
from forml_s3.runtime import transfers

from .forked import Forked
from .helpers import PROJECT, commit, run_cli, tag

# the registry contract, collected again here: this module's fixtures run them on the emulators
from .test_aliases import (  # noqa: F401
    test_expect_and_lost_swaps_write_nothing,
    test_only_live_generations,
    test_remove_keeps_history_and_set_brings_it_back,
    test_retention_never_retires_an_aliased_generation,
    test_set_get_move_and_history,
    trained,
)
from .test_bad_input import (  # noqa: F401
    committed,
    test_altered_package_is_never_installed,
    test_altered_state_is_never_returned,
    test_bad_names,
    test_corrupted_tag_is_invalid_and_names_the_key,
)
from .test_concurrency import ROOT
from .test_e2e import reference
from .test_gc_retired import test_expires_retired_generations_only  # noqa: F401
from .test_inventory import (  # noqa: F401
    test_a_descriptor_that_is_not_a_valid_module_is_invalid,
    test_get_leaves_no_stray_files,
    test_put_list_get,
    test_put_replaces_atomically_while_readers_read,
    test_unknown_application_is_missing,
)
from .test_registry import (  # noqa: F401
    test_a_push_dying_between_its_markers_never_hides_a_committed_release,
    test_close_into_a_missing_release_is_invalid,
    test_close_with_a_state_never_written_fails_and_commits_nothing,
    test_closing_a_committed_generation_is_a_conflict_and_keeps_the_winner,
    test_empty_registry_lists_nothing,
    test_generation_round_trip,
    test_generations_list_in_numeric_order,
    test_mount_installs_a_complete_tree_and_reuses_it,
    test_pull_of_missing_release_is_a_missing_error,
    test_push_lists_and_pulls_the_release,
    test_read_semantics_match_posix,
    test_registry_pickles_without_its_connection_and_compares_by_url,
    test_releases_are_immutable_and_monotonic,
    test_state_written_by_another_process_is_committed_with_its_checksum,
    test_uncommitted_work_is_invisible,
)

CLOUDS = ('gcs', 'azure')
RACERS = 8


@pytest.fixture(params=CLOUDS)
def backend(request) -> str:
    return request.param


@pytest.fixture
def cloud(backend, request):
    """The emulator of the backend (started once a session)."""
    return request.getfixturevalue(f'{backend}_server')


def fresh_root(cloud, prefix: str = 'forml') -> tuple[str, str, dict]:
    """A new bucket: (bucket, registry url, storage options)."""
    bucket = cloud.create_bucket(f'test-{uuid.uuid4().hex[:12]}')
    return bucket, cloud.url(bucket, prefix), cloud.storage_options()


@pytest.fixture
def make_registry(cloud, tmp_path):
    """Registries at one URL on the emulator (distinct instances, one cache), as conftest's on the other backends."""
    bucket, url, options = fresh_root(cloud)

    def make(**kwargs) -> Registry:
        kwargs.setdefault('cache_dir', tmp_path / 'cache')
        kwargs.setdefault('staging', tmp_path / 'staging')
        return Registry(url, storage_options=options, **kwargs)

    make.url, make.options, make.bucket = url, options, bucket
    return make


@pytest.fixture
def inventory(cloud):
    _, url, options = fresh_root(cloud, 'apps')
    return Inventory(url, storage_options=options)


@pytest.mark.parametrize('status', [502, 504, 408])
def test_azure_transient_statuses_fail_in_one_line(azure_server, status):
    """Found by the 30-minute Azure soak: a 502 (the proxy's bad gateway) escaped the store untranslated and a
    scheduled ``forml-s3 gc`` died with a traceback (exit 1) instead of one line (exit 2). Any status the SDK
    retries (408, 429, 5xx) and a body cut short are "retries exhausted", naming the object."""
    from azure.core import exceptions

    bucket, url, options = fresh_root(azure_server)
    store = storage.open_store(url, options)
    err = exceptions.HttpResponseError(message='Bad Gateway')
    err.status_code = status
    translated = store._translate(err, 'read', f'{bucket}/forml/a.json')
    assert isinstance(translated, forml.FailedError) and 'retries exhausted' in str(translated)
    assert f'{bucket}/forml/a.json' in str(translated) and '\n' not in str(translated)
    cut = store._translate(exceptions.IncompleteReadError('body cut short'), 'read', f'{bucket}/forml/a.json')
    assert isinstance(cut, forml.FailedError)
    assert store._translate(exceptions.HttpResponseError(message='Bad Request'), 'read', 'x/y') is None


# the store on its own ------------------------------------------------------------------------------------------
CREATED = {'gcs': 200, 'azure': 201}
REFUSED = {'gcs': 412, 'azure': 409}
"""What each server answers a conditional create that wins (and one that finds the object there)."""
MARKER_CREATE = {
    # the JSON API's multipart upload names the object in its body: the precondition marks the create
    'gcs': lambda r: r.method == 'POST' and 'ifGenerationMatch=0' in r.target,
    'azure': lambda r: r.method == 'PUT' and r.target.endswith('/generations/1.json'),
}
"""A request creating generation 1's marker, in a server's log."""


def test_16_racing_exclusive_creates_have_one_winner_decided_by_the_server(backend, cloud):
    bucket, url, options = fresh_root(cloud)
    key = f'{bucket}/forml/marker.json'
    stores = [storage.open_store(url, options) for _ in range(16)]
    stores[0].write(f'{bucket}/forml/warm', b'')  # connect first: the race is between requests, not imports
    cloud.reset_counts()

    def create(i: int) -> bool:
        try:
            stores[i].create(key, f'racer {i}'.encode())
        except FileExistsError:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        won = list(pool.map(create, range(16)))
    assert won.count(True) == 1, won
    assert stores[1].read(key) == f'racer {won.index(True)}'.encode()
    # the server refused every other create: no client-side check decided this
    statuses = sorted(r.status for r in cloud.requests() if r.method in ('POST', 'PUT'))
    assert statuses == [CREATED[backend]] + [REFUSED[backend]] * 15


def test_16_racing_compare_and_swaps_have_one_winner_decided_by_the_server(backend, cloud):
    bucket, url, options = fresh_root(cloud)
    key = f'{bucket}/forml/alias.json'
    stores = [storage.open_store(url, options) for _ in range(16)]
    stores[0].replace(key, b'first', None)
    with pytest.raises(FileExistsError):
        stores[0].replace(key, b'again', None)
    data, version = stores[1].get(key)
    assert data == b'first'
    cloud.reset_counts()

    def swap(i: int) -> bool:
        try:
            stores[i].replace(key, f'racer {i}'.encode(), version)
        except storage.Changed:
            return False
        return True

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        won = list(pool.map(swap, range(16)))
    assert won.count(True) == 1, won
    data, newer = stores[2].get(key)
    assert data == f'racer {won.index(True)}'.encode() and newer != version
    statuses = sorted(r.status for r in cloud.requests() if r.method in ('POST', 'PUT'))
    assert statuses == [CREATED[backend]] + [412] * 15
    with pytest.raises(storage.Changed):
        stores[3].replace(key, b'stale', version)
    stores[3].delete(key)
    with pytest.raises(storage.Changed):
        stores[3].replace(key, b'gone', newer)


def test_store_capabilities_and_metadata(backend, cloud):
    bucket, url, options = fresh_root(cloud)
    store = storage.open_store(url, options)
    assert store.exclusive_create and store.user_metadata and not store.lifecycle
    assert store.object_tags == (backend == 'azure')
    path = f'{bucket}/forml/a/object.bin'
    store.write(path, b'payload', tags={'forml-s3': 'uncommitted'}, metadata={'sha256': 'f' * 64})
    store.write(f'{bucket}/forml/a/deeper/hidden.bin', b'x')
    assert store.head(path) == (7, {'sha256': 'f' * 64})
    assert [(e.name, e.size) for e in store.listdir(f'{bucket}/forml/a')] == [('object.bin', 7)]
    assert sorted(p for p, _ in store.walk(f'{bucket}/forml')) == [f'{bucket}/forml/a/deeper/hidden.bin', path]
    if store.object_tags:
        assert store.get_tags(path) == {'forml-s3': 'uncommitted'}
        store.set_tags(path, {})
        assert store.get_tags(path) == {}
    with pytest.raises(FileNotFoundError):
        store.read(f'{bucket}/forml/a/none')
    store.delete(f'{bucket}/forml/a/none')  # missing is fine
    with pytest.raises(forml.MissingError, match="'no-such-bucket' does not exist.*create it or fix the url"):
        storage.open_store(cloud.url('no-such-bucket', 'forml'), options).listdir('no-such-bucket/forml')


# real processes racing ----------------------------------------------------------------------------------------
def wait_ready(paths, procs, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        failed = [(p.args, p.stderr.read()) for p in procs if p.poll() not in (None, 0)]
        assert not failed, failed
        assert time.monotonic() < deadline, 'racers did not get ready'
        time.sleep(0.05)


def test_8_processes_race_to_push_one_release_and_close_one_generation(
    backend, cloud, make_registry, tmp_path, package_factory
):
    reader = make_registry(cache_dir=tmp_path / 'reader', listing_ttl=0)
    reader.push(package_factory('0.1'))
    assert list(reader.generations(PROJECT, '0.1')) == []  # listed before the race: a listing cache would keep this
    packages = [package_factory('1.0', payload=f'racer{i}') for i in range(RACERS)]
    go_push, go_close = tmp_path / 'go-push', tmp_path / 'go-close'
    procs, ready = [], {'push': [], 'close': []}
    for i, package in enumerate(packages):
        command = ['--url', make_registry.url, '--name', f'racer{i}']
        command += ['--options', json.dumps(make_registry.options), '--cache', str(tmp_path / f'cache-{i}')]
        command += ['--package', str(package.path), '--go-push', str(go_push), '--go-close', str(go_close)]
        for race in ready:
            ready[race].append(tmp_path / f'ready-{race}-{i}')
            command += [f'--ready-{race}', str(ready[race][-1])]
        procs.append(Forked('tests.cloud_workers', *command, cwd=ROOT, output=tmp_path / f'output-{i}'))
    wait_ready(ready['push'], procs)
    go_push.touch()
    wait_ready(ready['close'], procs)
    cloud.reset_counts()
    go_close.touch()
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=180)
        assert proc.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))

    pushes = [r['push'] for r in results]
    assert [r['won'] for r in pushes].count(True) == 1, pushes
    assert all('1.0' in r['error'] for r in pushes if not r['won'])
    winner = packages[int(next(r['name'] for r in pushes if r['won']).removeprefix('racer'))]
    assert list(reader.releases(PROJECT)) == [asset.Release.Key('0.1'), asset.Release.Key('1.0')]
    assert reader.pull(PROJECT, '1.0').path.read_bytes() == winner.path.read_bytes()

    closes = [r['close'] for r in results]
    assert [r['won'] for r in closes].count(True) == 1, closes
    losers = [r for r in closes if not r['won']]
    assert all('Generation 1 of demo-proj-0.1' in r['error'] and 'Train again' in r['error'] for r in losers)
    champion = next(r for r in closes if r['won'])
    assert list(reader.generations(PROJECT, '0.1')) == [asset.Generation.Key(1)]
    opened = reader.open(PROJECT, '0.1', 1)
    assert opened.training.ordinal == champion['name'] and [str(s) for s in opened.states] == champion['sids']
    for i, sid in enumerate(opened.states):  # verified against the marker's sizes and digests
        assert reader.read(PROJECT, '0.1', 1, sid) == f'{champion["name"]}:{i}'.encode() * 1000
    # the server refused seven creates of the one marker: one write, nothing overwritten
    creates = [r.status for r in cloud.requests() if MARKER_CREATE[backend](r)]
    assert sorted(creates) == [CREATED[backend]] + [REFUSED[backend]] * (RACERS - 1)


# listing cost ----------------------------------------------------------------------------------------------------
LIST_REQUEST = {
    'gcs': lambda r: (
        r.method == 'GET' and r.target.startswith('/storage/v1/b/') and r.target.split('?')[0].endswith('/o')
    ),
    'azure': lambda r: r.method == 'GET' and 'comp=list' in r.target,
}


def test_listing_300_generations_is_one_request(backend, cloud, make_registry, package_factory):

    writer = make_registry()
    writer.push(package_factory('0.1'))
    transfers.run_all(lambda g: writer.close(PROJECT, '0.1', g, tag()), range(1, 301))
    reader = make_registry(cache_dir=None)  # another process: nothing cached
    cloud.reset_counts()
    assert sorted(reader.generations(PROJECT, '0.1')) == list(range(1, 301))
    requests = cloud.requests()
    assert [LIST_REQUEST[backend](r) for r in requests] == [True], requests  # one request, and it is the LIST


def test_a_level_past_one_page_is_listed_whole_one_request_a_page(backend, cloud, monkeypatch):
    bucket, url, options = fresh_root(cloud)
    store = storage.open_store(url, options)
    monkeypatch.setattr(sys.modules[type(store).__module__], 'PAGE', 10)  # 1,000 in use: 25 names make 3 pages
    names = [f'{n:04d}.json' for n in range(25)]
    transfers.run_all(lambda name: store.write(f'{bucket}/forml/level/{name}', b'{}'), names)
    store.write(f'{bucket}/forml/level/below/hidden.json', b'{}')
    cloud.reset_counts()
    assert sorted(e.name for e in store.listdir(f'{bucket}/forml/level')) == names
    assert [LIST_REQUEST[backend](r) for r in cloud.requests()] == [True, True, True]


# tags and retention -------------------------------------------------------------------------------------------
def test_azure_objects_carry_the_uncommitted_index_tag_until_their_marker(azure_server, tmp_path, package_factory):
    bucket, url, options = fresh_root(azure_server)
    registry = Registry(url, storage_options=options, cache_dir=tmp_path / 'cache', pack_states=False)
    store = registry._store
    registry.push(package_factory('0.1'))
    sid = uuid.uuid4()
    registry.write(PROJECT, '0.1', sid, b'state')
    key = registry._layout.state(PROJECT, '0.1', sid)

    transfers.pending(store.url_of(key)).future.result()
    assert store.get_tags(key) == dict([layout.UNCOMMITTED_TAG])
    registry.close(PROJECT, '0.1', 1, tag([sid]))
    assert store.get_tags(key) == {}
    assert len(store.head(key)[1]['sha256']) == 64


def test_retire_hides_generations_and_tags_their_states_where_objects_carry_tags(cloud, make_registry, package_factory):
    registry = make_registry(listing_ttl=0, pack_states=False)
    registry.push(package_factory('0.1'))
    sids = {g: commit(registry, g, payloads=(f'state {g}'.encode(),))[1][0] for g in (1, 2, 3)}
    args = [f'--option={k}={v}' for k, v in make_registry.options.items()]
    done = run_cli('retire', make_registry.url, '--keep', '1', *args)
    assert done.exit_code == 0, done.output
    assert list(registry.generations(PROJECT, '0.1')) == [asset.Generation.Key(3)]
    store = registry._store
    tags = {g: store.get_tags(registry._layout.state(PROJECT, '0.1', sid)) for g, sid in sids.items()}
    retired = dict([layout.RETIRED_TAG]) if store.object_tags else {}
    assert tags == {1: retired, 2: retired, 3: {}}


def test_azure_index_tags_can_be_turned_off_for_accounts_without_them(azure_server):
    bucket, url, options = fresh_root(azure_server)
    store = storage.open_store(url, {**options, 'index_tags': False})
    assert not store.object_tags
    store.write(f'{bucket}/forml/x', b'x', tags={'forml-s3': 'uncommitted'})
    assert storage.open_store(url, options).get_tags(f'{bucket}/forml/x') == {}


@pytest.mark.parametrize('command', [('lifecycle', 'plan'), ('lifecycle', 'apply')])
def test_lifecycle_is_refused_where_the_backend_has_none(backend, cloud, command):
    _, url, options = fresh_root(cloud)
    args = [f'--option={k}={v}' for k, v in options.items()]
    done = run_cli(*command, url, *args, '--expire-retired-after', '14')
    assert done.exit_code != 0
    assert 'has no bucket lifecycle rules' in done.output, done.output


# the real forml CLI -------------------------------------------------------------------------------------------
@pytest.fixture(scope='module', params=CLOUDS)
def world(request, tmp_path_factory):
    """The demo project released, trained twice (new data in between), listed and applied with the ``forml``
    CLI, registry and inventory on the emulator."""
    server = request.getfixturevalue(f'{request.param}_server')
    root = tmp_path_factory.mktemp(f'e2e-{request.param}')
    bucket = server.create_bucket(f'e2e-{uuid.uuid4().hex[:8]}')
    home, data = root / 'home', root / 'data.csv'
    demo.render_config(
        home,
        registry_url=server.url(bucket, 'registry'),
        storage_options=server.storage_options(),
        inventory_url=server.url(bucket, 'apps'),
        data=demo.write_data(data, batch=1),
    )
    source = demo.copy_project(root / 'project')
    steps = {'release': demo.run_forml(home, 'project', 'release', cwd=source)}
    steps['train1'] = demo.run_forml(home, 'model', 'train', demo.PROJECT)
    demo.new_data(home, data, batch=2)
    steps['train2'] = demo.run_forml(home, 'model', 'train', demo.PROJECT)
    steps['list'] = demo.run_forml(home, 'model', 'list', demo.PROJECT, demo.RELEASE)
    steps['apply'] = demo.run_forml(home, 'model', 'apply', demo.PROJECT)
    return types.SimpleNamespace(server=server, bucket=bucket, steps=steps, keys=server.keys(bucket))


def test_forml_cli_releases_trains_twice_lists_and_applies(world):
    steps = world.steps
    assert steps['list'].stdout.split() == ['1', '2'], '\n'.join(s.stdout + s.stderr for s in steps.values())
    numpy.testing.assert_allclose(parse_predictions(steps['apply'].stdout), reference(2), rtol=2e-5, atol=1e-8)
    prefix = f'registry/{demo.PROJECT}'
    assert f'{prefix}/releases/{demo.RELEASE}.json' in world.keys
    assert [k for k in world.keys if '/generations/' in k] == [
        f'{prefix}/{demo.RELEASE}/generations/1.json',
        f'{prefix}/{demo.RELEASE}/generations/2.json',
    ]
    assert len([k for k in world.keys if k.endswith('.4ml')]) == 1
