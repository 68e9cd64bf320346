"""The ``forml-s3`` operator command line (click, like ForML's own CLI).

Commands are registered by name -> ``module:attribute`` and imported only when run, so ``forml-s3 --help``
starts fast (no boto3, fsspec or ForML import). Each command module owns one area:

    demo       - forml_s3.cli.demo        (embedded S3 + a real ForML project through its life)
    ls/verify  - forml_s3.cli.ops         (inspection of a registry)
    copy/gc    - forml_s3.cli.ops         (migration and garbage collection)
    lifecycle/retire/pin - forml_s3.cli.retention (S3 lifecycle policies, retiring generations)
    staging    - forml_s3.cli.staging     (what is installed in a staging path, pruning)
    alias      - forml_s3.cli.alias       (named pointers to generations, kept in the bucket)
    ui         - forml_s3.cli.ui          (the registry browser, a local web application)
    doctor     - forml_s3.cli.doctor      (what a store's server really does)
    serve-s3   - forml_s3.cli.demo        (just the embedded S3 endpoint, until Ctrl-C)
"""

import importlib
import importlib.util
import logging
import sys

import click

MODULES: dict[str, dict[str, str]] = {
    'demo': {
        'demo': 'Run a real ForML project through its life against an embedded S3 endpoint.',
        'serve-s3': 'Run the embedded S3 endpoint (moto) on 127.0.0.1 until Ctrl-C.',
    },
    'ops': {
        'ls': 'Tree of projects, releases and generations with sizes and timestamps.',
        'verify': "Check every marker's objects exist with matching size and checksum.",
        'copy': 'Copy a whole registry between two locations (resumable).',
        'gc': 'Delete abandoned uncommitted objects (for buckets without lifecycle rules).',
    },
    'retention': {
        'lifecycle': 'Plan, apply, show and preview S3 lifecycle rules for a registry.',
        'retire': 'Retire all but the newest N generations (hidden now, expired by lifecycle).',
        'pin': 'Pin a generation so it is never retired.',
    },
    'staging': {
        'staging': 'List and prune releases installed in a staging path.',
    },
    'alias': {
        'alias': 'Set, show and move named pointers to generations (champion, challenger, ...).',
    },
    'ui': {
        'ui': 'Browse the registry in a web browser (served on 127.0.0.1).',
    },
    'doctor': {
        'doctor': "Check what a store's server really does (exclusive create, tags, multipart, ...).",
    },
}
"""The command modules (``forml_s3.cli.<module>``), each with its commands (function: the name with ``_``) and
their one-line help for ``forml-s3 --help``."""
COMMANDS: dict[str, tuple[str, str]] = {
    name: (f'forml_s3.cli.{module}', name.replace('-', '_'))
    for module, commands in MODULES.items()
    for name in commands
}
HELP: dict[str, str] = {name: text for commands in MODULES.values() for name, text in commands.items()}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, (module, _) in COMMANDS.items() if importlib.util.find_spec(module))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or importlib.util.find_spec(COMMANDS[cmd_name][0]) is None:
            return None
        module, attribute = COMMANDS[cmd_name]
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, HELP.get(name, '')) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section('Commands'):
                formatter.write_dl(rows)


@click.group(cls=LazyGroup)
@click.option(
    '-L',
    '--loglevel',
    type=click.Choice(['debug', 'info', 'warning', 'error']),
    default='warning',
    show_default=True,
    help='Log level.',
)
@click.version_option(package_name='forml-s3')
def main(loglevel: str) -> None:
    """forml-s3: ForML model registries and application inventories in a bucket.

    Every command that takes a URL also takes storage options as --option KEY=VALUE (or reads the
    standard AWS environment: AWS_PROFILE, AWS_ENDPOINT_URL, ...). Without a URL, the registry commands
    (ls, verify, gc, retire, pin, lifecycle, alias; staging's path) use the registry of the ForML config
    ($FORML_HOME/config.toml), its storage options included; --registry NAME picks another section.
    """
    logging.basicConfig(level=loglevel.upper(), format='%(levelname)s: %(name)s: %(message)s')
    _no_forml_log_file()


def _no_forml_log_file() -> None:
    """Keep ForML's logging config from dropping ``forml-s3.log`` into the current directory.

    Importing ForML configures a rotating file handler at ``./<program name>.log`` (its ``[LOGGING] path``
    default); an operator command has nothing to log there. The handler is removed from every logger it was
    attached to, and the file it created is deleted if it is still empty (an existing log is left alone).
    """
    import pathlib

    name = pathlib.Path(sys.argv[0]).name.rsplit('.', 1)[0] or 'forml-s3'
    path = pathlib.Path(f'{name}.log').resolve()
    existed = path.exists()
    import forml.setup  # noqa: F401 - configures ForML's logging on import

    loggers = [
        logging.getLogger(),
        *(v for v in logging.root.manager.loggerDict.values() if isinstance(v, logging.Logger)),
    ]
    for logger in loggers:
        for handler in list(logger.handlers):
            if isinstance(handler, logging.FileHandler) and pathlib.Path(handler.baseFilename) == path:
                logger.removeHandler(handler)
                handler.close()
    if not existed and path.exists() and path.stat().st_size == 0:
        path.unlink()
