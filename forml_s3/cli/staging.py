"""``forml-s3 staging ls`` and ``forml-s3 staging prune``: what is installed in a staging path, and pruning it.

Thin click commands over :mod:`forml_s3.runtime.staging` (where the install lock and the prune protocol live). They
work on the local (or network-mounted) staging directory only: no registry is contacted.

Exit codes: 0 success; 2 bad usage, PATH exists but is not a directory, or ``prune`` could not delete some tree
(what it did prune is listed all the same).
"""

import datetime
import json
import pathlib
import time
import typing

import click

from .ops import FATAL, Fatal, _loglevel

if typing.TYPE_CHECKING:
    from forml_s3.runtime.staging import Pruned


def _root(path: pathlib.Path | None, registry: str | None) -> pathlib.Path:
    """The staging root to work on: PATH, else the staging path of the ForML config's registry (``--registry``, or
    the default one if it is forml-s3's), else the default of a registry configured without one."""
    from forml_s3.runtime import staging  # imports ForML: only when a command runs

    from . import config

    _loglevel()
    root = path if path is not None else config.staging_root(registry) or staging.default_root()
    if root.exists() and not root.is_dir():
        raise Fatal(f'{root} is not a directory')
    if not root.exists():
        click.echo(f'{root} does not exist: nothing has been mounted there', err=True)
    return root


def _when(epoch: float | None) -> str:
    if epoch is None:
        return '-'
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).strftime('%Y-%m-%d %H:%M:%S')


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat()


def _age(epoch: float | None, now: float) -> str:
    if epoch is None:
        return '-'
    days = max(now - epoch, 0) / 86400
    return f'{days:.1f} days' if days >= 1 else f'{days * 24:.1f} hours'


def _human(size: int) -> str:
    from forml_s3.ops.snapshot import human

    return human(size)


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ['  '.join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows]


@click.group()
def staging() -> None:
    """Releases installed in a staging path: list them, prune those not mounted for a while.

    Every mount of a release (ForML's train, apply, tune, the gateway loading a model) installs it under
    the registry's staging path once, as <PATH>/<project>/<release>-<package sha256[:16]>, records the time of
    each use, and holds a lease on it while the mounting process lives.
    PATH defaults to the staging path of the ForML config's registry ($FORML_HOME/config.toml: its `staging`
    setting, else <cache_dir>/staging; --registry NAME for another section than the default one), or, without
    a forml-s3 registry there, to $XDG_CACHE_HOME/forml-s3/staging.

    \b
    Examples:
      forml-s3 staging ls
      forml-s3 staging ls /mnt/shared/forml-staging --json
      forml-s3 staging prune /mnt/shared/forml-staging --older-than 30 --dry-run
      forml-s3 staging prune /mnt/shared/forml-staging --older-than 30
    """


def path_argument(command: typing.Callable) -> typing.Callable:
    """``[PATH]``, or ``--registry NAME``: the staging path of that section of the ForML config."""
    command = click.option(
        '--registry',
        metavar='NAME',
        help='Without PATH: the staging path of the section [REGISTRY.NAME] of the ForML config instead of its '
        'default one.',
    )(command)
    return click.argument('path', required=False, type=click.Path(file_okay=False, path_type=pathlib.Path))(command)


@staging.command(short_help='List the installed releases: size, last use, package sha256, processes using them.')
@path_argument
@click.option('--json', 'as_json', is_flag=True, help='Print the releases as JSON (for scripts).')
def ls(path: pathlib.Path | None, registry: str | None, as_json: bool) -> None:
    """List the releases installed under PATH, with size, package sha256, last use, and the processes using each
    (IN USE: live leases of running processes, which prune never deletes).

    PATH defaults to the staging path of the ForML config's registry (see `forml-s3 staging --help`). Trees left
    behind by a killed installer or prune are listed as leftovers (`forml-s3 staging prune` removes them).

    \b
    Examples:
      forml-s3 staging ls
      forml-s3 staging ls /mnt/shared/forml-staging --json | jq '.releases[].release'
    """
    from forml_s3.runtime import staging as stagingmod

    root = _root(path, registry)
    now = time.time()
    releases = stagingmod.staged(root, sizes=True)
    leftovers = stagingmod.leftovers(root)
    if as_json:
        data = {
            'staging': str(root),
            'releases': [
                {
                    'project': r['project'],
                    'release': r['release'],
                    'path': r['path'],
                    'sha256': r['sha256'],
                    'size': r['size'],
                    'used': _iso(r['used']),
                    'age_days': round((now - r['used']) / 86400, 3),
                    'in_use': [{'host': h.host.split('~')[0], 'pid': h.pid} for h in r['in_use']],
                }
                for r in releases
            ],
            'leftovers': [str(p) for p in leftovers],
        }
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f'Staging {root}')
    if releases:
        rows = [('PROJECT', 'RELEASE', 'SIZE', 'LAST USED (UTC)', 'AGE', 'PACKAGE SHA256', 'IN USE')]
        rows += [
            (
                r['project'],
                r['release'],
                _human(r['size']),
                _when(r['used']),
                _age(r['used'], now),
                str(r['sha256'])[:12],
                ', '.join(map(str, r['in_use'])) or '-',
            )
            for r in releases
        ]
        for line in _table(rows):
            click.echo(f'  {line}')
    for leftover in leftovers:
        click.echo(f'  leftover {leftover} (an interrupted install or prune: prune removes it)')
    total = _human(sum(r['size'] for r in releases))
    in_use = sum(bool(r['in_use']) for r in releases)
    click.echo(f'{len(releases)} releases staged ({total}), {in_use} in use, {len(leftovers)} leftovers')


@staging.command(short_help='Delete the releases not mounted for DAYS days (safe while runners mount).')
@path_argument
@click.option(
    '--older-than',
    'days',
    type=click.FloatRange(min=0),
    required=True,
    metavar='DAYS',
    help='Prune releases not mounted for more than DAYS days (fractions allowed: 0.5 is 12 hours).',
)
@click.option('--dry-run', is_flag=True, help='List what would be pruned, change nothing.')
@click.option('--json', 'as_json', is_flag=True, help='Print what was pruned as JSON (for scripts).')
def prune(path: pathlib.Path | None, registry: str | None, days: float, dry_run: bool, as_json: bool) -> None:
    """Delete the releases installed under PATH that were not mounted for more than DAYS days.

    Safe while runners mount: each release is re-checked under the same lock mounts take (one mounted
    meanwhile is kept), then renamed aside and only then deleted, so a runner finds the complete tree or
    none, never a half-deleted one; a release pruned and needed again is reinstalled by its next mount from
    the local cache (or downloaded once). Releases mounted within the last minute are always kept, and so
    are releases in use: every process that mounted one holds a lease on it while it lives (renewed every
    minute; a lease from another node not renewed for 15 minutes, or from a process of this node that is
    gone, counts as dead). Trees left behind by a killed installer or prune are removed too (half-extracted
    ones after an hour).

    Exits 2 if a tree could not be deleted (e.g. permission denied): such a tree is reported as failed, its
    hidden .trash remainder is left for the next prune, and what was pruned is listed all the same.

    PATH defaults to the staging path of the ForML config's registry (see `forml-s3 staging --help`).

    \b
    Examples:
      forml-s3 staging prune --older-than 30 --dry-run
      forml-s3 staging prune /mnt/shared/forml-staging --older-than 30
    """
    from forml_s3.runtime import staging as stagingmod

    root = _root(path, registry)
    now = time.time()
    done = stagingmod.prune(root, days * 86400, dry_run=dry_run, now=now)
    failed = [p for p in done if p.action == stagingmod.Pruned.FAILED]
    if as_json:
        click.echo(json.dumps([_record(p, now) for p in done], indent=1))
    else:
        for outcome in done:
            click.echo(_line(outcome, now), err=outcome in failed)
        pruned = [p for p in done if p.action in (stagingmod.Pruned.PRUNED, stagingmod.Pruned.WOULD_PRUNE)]
        releases = sum(not p.leftover for p in pruned)
        verb = 'would be pruned' if dry_run else 'pruned'
        click.echo(
            f'{releases} releases not mounted for {days:g} days and {len(pruned) - releases} leftovers {verb} '
            f'({_human(sum(p.size for p in pruned))})' + (f'; {len(failed)} could not be deleted' if failed else '')
        )
    if failed:
        raise SystemExit(FATAL)


def _line(outcome: 'Pruned', now: float) -> str:
    what = f'leftover {outcome.path}' if outcome.leftover else f'{outcome.project} {outcome.release}'
    if outcome.action == outcome.FAILED:
        return f'failed to prune {what}: {outcome.error} ({_human(outcome.size)} deleted)'
    if outcome.used is None:
        return f'{outcome.action} {what} ({_human(outcome.size)})'
    if outcome.action == outcome.KEPT and outcome.holders:
        return f'{outcome.action} {what}: in use by {", ".join(outcome.holders)}'
    if outcome.action == outcome.KEPT:
        return f'{outcome.action} {what}: mounted while the prune waited for it'
    used = f'last used {_when(outcome.used)} UTC, {_age(outcome.used, now)} ago'
    return f'{outcome.action} {what} ({used}, {_human(outcome.size)})'


def _record(outcome: 'Pruned', now: float) -> dict[str, typing.Any]:
    return {
        'action': outcome.action,
        'project': outcome.project,
        'release': outcome.release,
        'path': outcome.path,
        'leftover': outcome.leftover,
        'used': _iso(outcome.used),
        'age_days': None if outcome.used is None else round((now - outcome.used) / 86400, 3),
        'size': outcome.size,
        'in_use': list(outcome.holders),
        'error': outcome.error,
    }
