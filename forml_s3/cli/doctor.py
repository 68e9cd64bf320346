"""``forml-s3 doctor URL``: what the store's server really does with the requests the registry relies on (a thin
click command over :mod:`forml_s3.storage.probe`).

Exit codes: 0 every check the registry relies on passed; 1 some failed; 2 the store could not be reached at all
(missing bucket, access denied, endpoint down).
"""

import dataclasses
import json

import click

from .ops import PROBLEMS, _loglevel, fatal_errors, option_flag, parse_options


@click.command()
@click.argument('url')
@option_flag('-o', '--option', what='the store')
@click.option(
    '--write-lifecycle',
    is_flag=True,
    help='Also write a lifecycle rule and put the original configuration back (S3 keeps one configuration per '
    'bucket: a change someone makes meanwhile is lost).',
)
@click.option('--json', 'as_json', is_flag=True, help='Print the findings as JSON.')
def doctor(url: str, options: tuple[str, ...], write_lifecycle: bool, as_json: bool) -> None:
    """Check what the server at URL does: exclusive create, listing, tags, multipart, checksums, lifecycle rules.

    Writes only under URL/.forml-s3-probe/ and deletes what it wrote.
    """
    _loglevel()
    from ..storage import open_store, probe  # keeps `forml-s3 --help` fast

    with fatal_errors():
        store = open_store(url, parse_options(options))
        checks = probe.run(store, write_lifecycle=write_lifecycle)
    healthy = all(c.ok is not False for c in checks if c.required)
    if as_json:
        click.echo(json.dumps({'url': store.url, 'ok': healthy, 'checks': [dataclasses.asdict(c) for c in checks]}))
    else:
        click.echo(f'{store.url} ({type(store).__name__})')
        for check in checks:
            state = {True: 'ok', False: 'FAIL' if check.required else 'no', None: '-'}[check.ok]
            click.echo(f'  {state:<5}{check.name:<18}{check.detail}')
        verdict = 'the registry can run here' if healthy else 'the registry cannot run safely here'
        click.echo(f'{"ok" if healthy else "FAIL"}: {verdict}')
    if not healthy:
        raise SystemExit(PROBLEMS)
