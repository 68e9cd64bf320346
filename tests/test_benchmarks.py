"""The benchmark harness runs end to end in quick mode (forml-s3 and the raw-boto3 floor only, no MLflow) and
produces what its report promises. Structure and request counts only: timings are the benchmark's business, a
unit test on a shared 2-core machine must not judge them."""

import json
import pathlib
import subprocess
import sys

import pytest

from benchmarks import harness, report
from forml_s3.demo.lifetime import die_with_parent

ROOT = pathlib.Path(__file__).parent.parent
PROVIDERS = ('forml-s3', 'boto3')


def quick_run(tmp_path_factory, *args: str) -> tuple[str, dict]:
    """A quick run through the real command line, as a user would start it: its output and its JSON result."""
    out = tmp_path_factory.mktemp('bench') / 'result.json'
    done = subprocess.run(
        [sys.executable, '-m', 'benchmarks', '--quick', *args, '--json', str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert 'Targets' in done.stdout and 'x boto3' in done.stdout  # the table and the targets were printed
    return done.stdout, json.loads(out.read_text())


@pytest.fixture(scope='module')
def result(tmp_path_factory) -> dict:
    """One quick run of every workload on moto."""
    return quick_run(tmp_path_factory, '--providers', ','.join(PROVIDERS))[1]


def test_every_workload_has_a_row_with_requests_and_bytes(result):
    rows = {(r['job'], r['provider']): r for r in result['rows']}
    assert set(rows) == {(job, provider) for job in harness.JOBS for provider in PROVIDERS}
    for (job, provider), row in rows.items():
        assert not row['problems'], (job, provider, row['problems'])
        assert row['seconds'] is not None and row['peak'] is not None
        if job == 'mount_second':  # the second mount fetches nothing, for both
            assert (row['requests'], row['bytes']) == (0, 0), (job, provider)
        else:
            assert row['requests'] > 0 and row['bytes'] > 0, (job, provider)


def test_listing_is_one_list_request(result):
    listing = next(r for r in result['rows'] if (r['job'], r['provider']) == ('list', 'forml-s3'))
    assert [(s['lists'], s['requests']) for s in listing['samples']] == [(1, 1)]
    assert listing['mix'] == {'LIST': 1}


def test_second_mount_moves_no_package_bytes(result):
    second = next(r for r in result['rows'] if (r['job'], r['provider']) == ('mount_second', 'forml-s3'))
    first = next(r for r in result['rows'] if (r['job'], r['provider']) == ('mount_first', 'forml-s3'))
    assert [s['package_bytes'] for s in second['samples']] == [0]
    assert first['samples'][0]['package_bytes'] >= result['sizes']['package']


def test_targets_are_reported(result):
    targets = {t['name']: t['status'] for t in result['targets']}
    assert len(targets) == 11 and set(targets.values()) <= {'PASS', 'FAIL', 'SKIP'}
    assert targets['listing 100 generations: one LIST page'] == 'PASS'
    assert targets['second mount: zero package bytes'] == 'PASS'
    assert next(s for n, s in targets.items() if 'MLflow' in n) == 'SKIP'  # not asked for here


def test_docs_section_is_replaced_between_markers(result, tmp_path):
    page = tmp_path / 'benchmarks.md'
    page.write_text(f'# Benchmarks\n\nby hand\n\n{report.BEGIN}\nSTALE-RESULTS\n{report.END}\n\nafter\n')
    report.write_docs(page, result)
    text = page.read_text()
    assert text.startswith('# Benchmarks\n\nby hand') and text.rstrip().endswith('after')
    assert 'STALE-RESULTS' not in text and text.count(report.BEGIN) == 1
    assert '| workload | provider | median s | x boto3 |' in text
    assert 'moto' in text and 'Load average' in text  # the machine and endpoint are described


@pytest.fixture(scope='module')
def seaweedfs_result(tmp_path_factory) -> dict:
    """A quick run of the large read on SeaweedFS (started and stopped by the harness), with the obstore floor."""
    output, found = quick_run(
        tmp_path_factory, '--server', 'seaweedfs', '--workloads', 'large_read', '--providers', 'forml-s3,boto3,obstore'
    )
    assert 'S3 endpoint seaweedfs at http://127.0.0.1:' in output
    return found


def test_seaweedfs_rows_count_requests_and_bytes_from_its_metrics(seaweedfs_result):
    rows = {(r['job'], r['provider']): r for r in seaweedfs_result['rows']}
    assert set(rows) == {('large_read', p) for p in ('forml-s3', 'boto3', 'obstore')}
    large = seaweedfs_result['sizes']['large']
    for (job, provider), row in rows.items():
        assert not row['problems'], (job, provider, row['problems'])
        assert row['samples'][0]['info'] == {'states': 1, 'bytes': large}, provider
        assert row['requests'] > 0 and row['bytes'] >= large, provider
    # the marker and one ranged GET per 16 MiB part (40 MiB: 3), nothing else: the size comes from the marker
    assert rows['large_read', 'forml-s3']['mix'] == {'GET': 4}
    assert rows['large_read', 'forml-s3']['bytes'] >= large
    assert seaweedfs_result['server'] == 'seaweedfs'


def test_seaweedfs_results_go_between_their_own_markers(result, seaweedfs_result, tmp_path):
    page = tmp_path / 'benchmarks.md'
    page.write_text('# Benchmarks\n')
    report.write_docs(page, result)
    report.write_docs(page, seaweedfs_result)
    report.write_docs(page, seaweedfs_result)  # rewritten in place, the moto section kept
    text = page.read_text()
    begin, end = report.markers('seaweedfs')
    assert text.count(begin) == text.count(report.BEGIN) == 1 and text.index(report.END) < text.index(begin)
    assert '## Recorded run on SeaweedFS' in text and "## Recorded run on moto's server" in text


def test_scale_mode_counts_the_same_requests_on_moto_and_seaweedfs(tmp_path):
    """``--scale`` on a release of 30 generations, on both endpoints at once: every row measured (none 'failed'),
    the counts the client's own (the same on either server) and as flat as the Scale section says."""
    only = 'generations(),list + open + read newest (listing_ttl 0),ls --summary,retire'
    runs = {
        server: subprocess.Popen(
            [sys.executable, '-m', 'benchmarks', '--scale', '--server', server, '--generations', '30', '--only', only],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=(tmp_path / f'{server}.log').open('w'),
            text=True,
            preexec_fn=die_with_parent,
        )
        for server in ('moto', 'seaweedfs')
    }
    tables = {}
    for server, process in runs.items():
        out = process.communicate(timeout=300)[0]
        assert process.returncode == 0, out + (tmp_path / f'{server}.log').read_text()[-4000:]
        cells = [line.strip('|').split('|') for line in out.splitlines() if line.startswith('| ') and ' s |' in line]
        tables[server] = {name.strip(): cell.split(',')[0].strip() for name, cell in cells}
    assert tables['moto'] == tables['seaweedfs']
    assert tables['moto'] == {
        'generations()': '1 (1)',
        'list + open + read newest (listing_ttl 0)': '3 (1)',  # the page, the marker, the pack
        'ls --summary': '1 (1)',
        'retire --keep 10': '70 (8)',  # 3 per retired generation, 20 of them; the floor, a delete, the LISTs
        'generations() after retire': '1 (1)',
    }
