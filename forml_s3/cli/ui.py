"""``forml-s3 ui``: the registry browser, a web application served on 127.0.0.1 (see :mod:`forml_s3.ui`)."""

import ipaddress
import socket
import typing

import click

from .ops import Fatal, _loglevel, fatal_errors, open_store, option_flag, parse_options

LOOPBACK_NAMES = ('localhost', '127.0.0.1', '::1')


def loopback(host: str) -> bool:
    """Whether binding ``host`` keeps the server reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@click.command()
@click.argument('url', required=False)
@option_flag('-o', '--option')
@click.option('--inventory', 'inventory_url', metavar='URL', help='Application inventory to show too.')
@click.option(
    '--inventory-option',
    'inventory_options',
    multiple=True,
    metavar='KEY=VALUE',
    help="Storage option of the inventory (default: the registry's options).",
)
@click.option('--host', default='127.0.0.1', show_default=True, help='Address to bind (beyond loopback: a warning).')
@click.option('--port', type=click.IntRange(0, 65535), default=8765, show_default=True, help='Port (0: any free).')
@click.option(
    '--listing-ttl',
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    metavar='SECONDS',
    help='Reuse each listing this long (0: every page lists afresh; markers are always cached).',
)
@click.option('--allow-writes', is_flag=True, help='Enable pin, unpin and retire from the browser (POST + CSRF).')
def ui(
    url: str | None,
    options: tuple[str, ...],
    inventory_url: str | None,
    inventory_options: tuple[str, ...],
    host: str,
    port: int,
    listing_ttl: float,
    allow_writes: bool,
) -> None:
    """Browse the registry at URL in a web browser: projects, releases, generations, lifecycle, applications.

    Without URL, the default registry (and inventory) of the ForML config ($FORML_HOME/config.toml) is shown,
    if it is a forml-s3 provider. Read-only unless --allow-writes. Pages are rendered on the server (no
    script, no CDN). Prints the address, serves until Ctrl-C.

    \b
    Examples:
      forml-s3 ui s3://my-bucket/forml --inventory s3://my-bucket/apps
      FORML_HOME=demo/home forml-s3 ui
    """
    import uvicorn  # installed with forml[rest]

    from forml_s3 import storage
    from forml_s3.ui import app, config, model

    _loglevel()
    st = open_store(url, options) if url else None
    inventory = None
    with fatal_errors():
        if st is None:
            found = config.default('REGISTRY')
            if found is None:
                raise Fatal(f'No URL given and no default registry in {config.path()}: forml-s3 ui s3://bucket/prefix')
            st = storage.open_store(*found)
            if inventory_url is None and (section := config.default('INVENTORY')):
                inventory = storage.open_store(*section)
        if inventory_url:
            extra = parse_options(inventory_options) if inventory_options else parse_options(options)
            inventory = storage.open_store(inventory_url, extra)
    if not loopback(host):
        click.secho(
            f'Warning: serving on {host}: anyone who can reach this address can browse the registry'
            + (' and pin or retire generations' if allow_writes else '')
            + '; there is no login. Prefer 127.0.0.1 and an SSH tunnel.',
            fg='yellow',
            err=True,
        )
    allowed: typing.Sequence[str] = ['127.0.0.1', 'localhost', '[::1]', '::1'] if loopback(host) else ['*']
    application = app.create_app(
        model.Browser(st, inventory, listing_ttl=listing_ttl), allow_writes=allow_writes, allowed_hosts=allowed
    )
    server = uvicorn.Server(uvicorn.Config(application, host=host, port=port, log_level='warning', access_log=False))

    sock = socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)  # before the URL is printed: a browser opening it at once queues instead of being refused
    except OSError as err:
        raise Fatal(f'Cannot listen on {host}:{port}: {err.strerror or err} (--port 0 picks a free one)') from None
    shown = f'[{host}]' if ':' in host else host
    mode = 'read-write' if allow_writes else 'read-only'
    click.echo(f'forml-s3 ui: {st.url} on http://{shown}:{sock.getsockname()[1]}/ ({mode}; Ctrl-C stops)')
    server.run(sockets=[sock])
