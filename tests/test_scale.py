"""Costs that stay flat as history grows: request counts on a release of 3,000 generations (built fast by
:mod:`benchmarks.scale`: generation 1 through the provider, the rest as faithful copies written in parallel),
against moto's HTTP server. Request counts are deterministic, so they are asserted exactly or as bounds."""

import json
import uuid

import pytest
from forml.io import asset

from benchmarks import scale
from forml_s3.demo import endpoint as embedded
from forml_s3.registry import Conflict, Registry
from forml_s3.runtime import packing, retention

from .conftest import new_bucket
from .helpers import PROJECT, PackageFactory, commit, run_cli, s3_options

GENERATIONS = 3000
PAGES = 3
"""LIST pages of a level of 3,000 markers."""


def lists(server) -> int:
    return server.count(method='GET', query_contains='list-type=2')


def emptied_in_moto(bucket: str) -> None:
    """Empty the bucket in the moto backend (the bucket itself is dropped over HTTP, now in one request)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    s3_backends[DEFAULT_ACCOUNT_ID]['aws'].get_bucket(bucket).keys.clear()


@pytest.fixture(scope='module')
def long_history(s3server, tmp_path_factory, request):
    """A release of 3,000 generations, each its own pack of two states (built once for the module): a factory of
    registries on it, each a fresh machine."""
    if not isinstance(s3server, embedded.Server):
        pytest.skip('builds its release in the embedded moto server')
    work = tmp_path_factory.mktemp('history')
    bucket = new_bucket(s3server, request)
    request.addfinalizer(lambda: emptied_in_moto(bucket))  # before new_bucket's finalizer drops it

    def make(**kwargs) -> Registry:
        kwargs.setdefault('cache_dir', work / uuid.uuid4().hex)  # a fresh machine
        return Registry(f's3://{bucket}/forml', storage_options=s3server.storage_options(), staging=work, **kwargs)

    writer = make()
    writer.push(PackageFactory(work)('0.1'))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(packing, 'LINGER', 60.0)  # both states go into one pack however slow the machine is
        commit(writer, 1, payloads=(b'x' * 5000, b'y' * 7000))
    scale.copies(writer._store, writer._layout, PROJECT, '0.1', range(2, GENERATIONS + 1), put=scale.into_moto())
    make.url = f's3://{bucket}/forml'
    return make


@pytest.mark.parametrize('ttl', [0.0, 3.0])
def test_list_open_and_read_the_newest_is_pages_plus_3(embedded_server, long_history, ttl):
    """ForML's apply: list the generations, open the newest, read its states - with any listing_ttl, as a
    listing of 3 pages outlasts a short one on a slow machine."""
    reader = long_history(listing_ttl=ttl)
    embedded_server.reset_counts()
    newest = max(reader.generations(PROJECT, '0.1'))  # as ForML does: list, then open, then read each state
    states = reader.open(PROJECT, '0.1', newest).states
    assert [len(reader.read(PROJECT, '0.1', newest, sid)) for sid in states] == [5000, 7000]
    assert newest == GENERATIONS
    assert lists(embedded_server) == PAGES
    assert len(embedded_server.requests) == PAGES + 2  # + the marker and the one pack of both states

    embedded_server.reset_counts()
    other = long_history(listing_ttl=ttl)  # a process that knows the number: no listing at all
    other.open(PROJECT, '0.1', 17)
    assert len(other.read(PROJECT, '0.1', 17, other.open(PROJECT, '0.1', 17).states[0])) == 5000
    assert (lists(embedded_server), len(embedded_server.requests)) == (0, 2)


def test_ls_summary_and_gc_dry_run_cost_list_pages_only(embedded_server, long_history):
    """Nothing is old enough to collect, and a summary needs no marker: the listing (7 pages of the 6,003
    objects) is all either reads."""
    pages = 7
    embedded_server.reset_counts()
    summary = run_cli('ls', '--summary', '--json', long_history.url, *s3_options(embedded_server))
    assert summary.exit_code == 0, summary.output
    release = json.loads(summary.stdout)['projects'][0]['releases'][0]
    counts = (release['generations'], release['newest'], release['objects'])
    assert counts == (GENERATIONS, GENERATIONS, GENERATIONS + 1)  # a pack each, and the package
    assert len(embedded_server.requests) == lists(embedded_server) == pages

    embedded_server.reset_counts()
    dry = run_cli('gc', long_history.url, '--older-than', '7', '--dry-run', *s3_options(embedded_server))
    assert dry.exit_code == 0, dry.output
    marker_reads = embedded_server.count(
        method='GET', path_prefix=f'/{long_history.url[5:]}/{PROJECT}/0.1/generations/'
    )
    assert marker_reads == 0
    print(f'gc --dry-run of {GENERATIONS}: {len(embedded_server.requests)} requests')
    assert len(embedded_server.requests) <= pages + 3  # + the leases and the multipart uploads


def test_retire_keep_10_costs_3_requests_a_generation_and_leaves_one_page(embedded_server, long_history):
    """Runs last in the module: it retires what the others read."""
    embedded_server.reset_counts()
    done = run_cli('retire', long_history.url, '--keep', '10', *s3_options(embedded_server))
    assert done.exit_code == 0, done.output
    retired = GENERATIONS - 10
    assert 'retired 1, 2, 3,' in done.stdout and f'{retired} generations retired' in done.stderr
    requests = len(embedded_server.requests)
    print(f'retire --keep 10 of {GENERATIONS}: {requests} requests')
    # a GET and a PUT a generation and one tag of its pack; the rest is a dozen per run and one per 1,000
    assert requests <= 3 * GENERATIONS
    assert embedded_server.count(method='PUT', query_contains='tagging') == retired  # one pack each
    assert embedded_server.count(method='POST', query_contains='delete') == PAGES  # markers moved out, 1,000 a request

    reader = long_history(listing_ttl=0)
    embedded_server.reset_counts()
    assert sorted(reader.generations(PROJECT, '0.1')) == list(range(GENERATIONS - 9, GENERATIONS + 1))
    assert len(embedded_server.requests) == lists(embedded_server) == 1  # 10 live generations: one page

    stale = long_history()  # picked its number before the retire, closes after: the floor turns it away
    with pytest.raises(Conflict, match=f'Generation 5 of {PROJECT}-0.1 was committed and retired meanwhile'):
        commit(stale, 5, payloads=(b'late',))
    assert sorted(long_history().generations(PROJECT, '0.1'))[0] == GENERATIONS - 9
    with pytest.raises(asset.Level.Listing.Empty):
        long_history().open(PROJECT, '0.1', 5)
    assert retention.floor(reader._store, reader._layout, PROJECT, '0.1') == GENERATIONS - 9
    marker = json.loads(reader._store.read(reader._layout.retired_marker(PROJECT, '0.1', 5)))
    assert marker['generation'] == 5 and len(marker['states']) == 2  # the retired generation, not the stale one
