"""``forml-s3 ls``, ``verify``, ``copy`` and ``gc``: thin click commands over :mod:`forml_s3.ops.snapshot` and
:mod:`forml_s3.ops.copy`.

The registry commands here and in :mod:`.retention` and :mod:`.alias` take their registry one way
(:func:`registry_command`): a URL, else the ForML config's registry (:mod:`.config`).

Exit codes: 0 all done; 1 problems found (``verify``) or some releases/generations not copied (``copy``);
2 bad usage (a bad setting in the ForML config included), no registry at the URL (``ls``, ``verify``), or the
command could not complete (missing bucket, access denied, endpoint down), with the partial work done listed.
"""

import contextlib
import datetime
import json
import logging
import sys
import typing

import click

PROBLEMS = 1
FATAL = 2


class Fatal(click.ClickException):
    """The command could not do its job at all (exit code 2)."""

    exit_code = FATAL


def parse_options(values: typing.Iterable[str]) -> dict[str, typing.Any]:
    """``KEY=VALUE`` pairs into a storage options mapping.

    Values are JSON when they parse as JSON (``max_attempts=3``, ``anon=true``, ``client_kwargs={"a": 1}``),
    strings otherwise; a dotted key nests (``client_kwargs.region_name=eu-west-1``).
    """
    options: dict[str, typing.Any] = {}
    for item in values:
        key, sep, raw = item.partition('=')
        if not sep or not key:
            raise click.BadParameter(f'{item!r}: expected KEY=VALUE', param_hint='--option')
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        target = options
        *parents, leaf = key.split('.')
        for parent in parents:
            target = target.setdefault(parent, {})
            if not isinstance(target, dict):
                raise click.BadParameter(f'{item!r}: {parent} is already set to a value', param_hint='--option')
        target[leaf] = value
    return options


def option_flag(*names: str, what: str = 'the registry') -> typing.Callable:
    return click.option(
        *names,
        'options',
        multiple=True,
        metavar='KEY=VALUE',
        help=f'Storage option of {what} (repeatable; JSON values; dotted keys nest, e.g. '
        'endpoint_url=http://127.0.0.1:9000, client_kwargs.region_name=eu-west-1).',
    )


@contextlib.contextmanager
def fatal_errors() -> typing.Iterator[None]:
    """ForML errors (missing bucket, denied access, exhausted retries) as a clean message and exit code 2."""
    import forml

    try:
        yield
    except forml.AnyError as err:
        raise Fatal(str(err)) from err


def _loglevel() -> None:
    """Re-apply the ``-L`` log level: importing ForML loads its own logging config (INFO to stderr)."""
    import forml.setup  # noqa: F401 - load it now, then override

    context = click.get_current_context(silent=True)
    level = (context.find_root().params.get('loglevel') if context else None) or 'warning'
    logging.getLogger().setLevel(level.upper())


def open_store(url: str | None, options: tuple[str, ...], registry: str | None = None):
    """The store of a registry with the command's ``--option`` values (bad ones: exit code 2): ``url`` if given,
    else the ForML config's registry section (``registry``, or its default), whose storage options the
    ``--option`` values override one by one."""
    from forml_s3 import settings
    from forml_s3.cli import config
    from forml_s3.ops import snapshot as inspect

    _loglevel()
    storage_options, where = parse_options(options), None
    if url is None:
        section, where = config.registry_settings(registry)
        url, storage_options = section['url'], {**(section.get('storage_options') or {}), **storage_options}
    try:
        return inspect.store_for(url, storage_options)
    except settings.Invalid as err:  # say where the option is: the config's section (or an --option value)
        raise Fatal(str(err.at(f'{where}{" or --option" if options else ""}') if where else err)) from err
    except click.BadParameter:
        raise
    except Exception as err:
        raise Fatal(str(err)) from err


def looks_like_url(word: str) -> bool:
    """Whether a command-line word is a registry URL or path rather than a name: no project, release or generation
    has a ``/`` or ``:`` in it or starts with ``.`` or ``~``."""
    return '/' in word or ':' in word or word.startswith(('.', '~'))


class RegistryCommand(click.Command):
    """A command on one registry, given as its first argument (``forml-s3 ls s3://bucket/forml``), as ``--url``, or
    not at all: then the ForML config's (``--registry NAME`` picks a section other than the default).

    A command with other arguments (``pin [URL] PROJECT RELEASE``) takes its first one as the URL only if it looks
    like one (:func:`looks_like_url`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        takes_value = {
            name: not (param.is_flag or param.count)
            for param in self.get_params(ctx)
            if isinstance(param, click.Option)
            for name in (*param.opts, *param.secondary_opts)
        }
        index = 0
        while index < len(args) and args[index].startswith('-') and args[index] not in ('-', '--'):
            index += 2 if takes_value.get(args[index]) else 1  # `-o KEY=VALUE` takes the next word, `-oK=V` not
        if args[index : index + 1] == ['--']:
            index += 1
        if index < len(args):
            only = not any(isinstance(p, click.Argument) for p in self.params)
            if only or looks_like_url(args[index]):
                args = [*args[:index], '--url', args[index], *args[index + 1 :]]
        return super().parse_args(ctx, args)


def registry_command(group: typing.Any = click, **kwargs: typing.Any) -> typing.Callable:
    """``@click.command()`` of a :class:`RegistryCommand` (``group``'s with a group), with its options: ``[URL]`` or
    ``--url``, ``--registry NAME`` and ``-o KEY=VALUE``, passed to the function as ``url``, ``registry`` and
    ``options`` (see :func:`open_store`)."""

    def decorate(function: typing.Callable) -> click.Command:
        function = option_flag('-o', '--option')(function)
        function = click.option(
            '--registry',
            metavar='NAME',
            help='Without a URL: the section [REGISTRY.NAME] of the ForML config instead of its default one.',
        )(function)
        function = click.option(
            '-u',
            '--url',
            metavar='URL',
            help='Registry URL (or the first argument), e.g. s3://bucket/forml. Default: the registry of the ForML '
            'config ($FORML_HOME/config.toml), its storage options included (--option values override them).',
        )(function)
        return group.command(cls=RegistryCommand, options_metavar='[URL] [OPTIONS]', **kwargs)(function)

    return decorate


ALLOW_EMPTY = click.option(
    '--allow-empty',
    is_flag=True,
    help='Accept a URL that holds no registry (nothing pushed there yet) instead of exiting 2.',
)


def _no_registry(snap, allow_empty: bool) -> None:
    """Exit 2 if the listed URL holds no registry (a mistyped URL must not pass for a healthy, empty registry)."""
    if allow_empty or snap.holds_registry():
        return
    others = f' ({len(snap.objects)} objects, none of a registry)' if snap.objects else ''
    raise Fatal(
        f'No registry at {snap.url}{others}: check the URL (and --registry), or pass --allow-empty for a registry '
        'nothing was pushed to yet'
    )


def progress_bar(length: int, label: str, **kwargs: typing.Any):
    """A progress bar on stderr (stdout stays clean for --json and pipes)."""
    return click.progressbar(length=length, label=label, file=sys.stderr, **kwargs)


# ls ---------------------------------------------------------------------------------------------------------
@registry_command()
@click.option('--json', 'as_json', is_flag=True, help='Print the tree as JSON (for scripts).')
@click.option(
    '--summary', is_flag=True, help='Counts per release only (live, newest, retired): one LIST per 1,000 objects.'
)
@ALLOW_EMPTY
def ls(
    url: str | None, registry: str | None, options: tuple[str, ...], as_json: bool, summary: bool, allow_empty: bool
) -> None:
    """Tree of the projects, releases and generations at URL, with sizes and timestamps.

    URL is a forml-s3 registry root: s3://bucket/prefix, file:///path, or any fsspec URL; without it, the
    registry of the ForML config ($FORML_HOME/config.toml; --registry NAME for another section). Costs one LIST
    request per 1,000 objects and one GET per marker (in parallel); with --summary no GET at all. Exits 2 if
    nothing at URL is a registry's (a mistyped URL), unless --allow-empty.

    \b
    Examples:
      forml-s3 ls s3://my-bucket/forml
      forml-s3 ls --json s3://my-bucket/forml | jq '.projects[].releases[].release'
    """
    from forml_s3.ops import snapshot as inspect

    st = open_store(url, options, registry)
    with fatal_errors():
        if summary:
            data = inspect.summary(st)
        else:
            snap = inspect.snapshot(st)
    if summary:
        if not (allow_empty or data['projects']):
            raise Fatal(f'No registry at {st.url}: check the URL (and --registry), or pass --allow-empty')
    else:
        _no_registry(snap, allow_empty)
        data = inspect.tree(snap)
    if as_json:
        click.echo(json.dumps(data, indent=1))
    else:
        for line in (inspect.render_summary if summary else inspect.render)(data):
            click.echo(line)


# verify -----------------------------------------------------------------------------------------------------
@registry_command()
@click.option(
    '--staging',
    'staging_path',
    type=click.Path(file_okay=False),
    help='Also check the releases installed in this staging path (orphans, stale or half-installed trees).',
)
@click.option('--quick', is_flag=True, help='Compare sizes only (from the listing); download nothing.')
@click.option('--no-orphans', is_flag=True, help='Do not report uncommitted objects that no marker names.')
@click.option('--json', 'as_json', is_flag=True, help='Print the problems as JSON.')
@ALLOW_EMPTY
def verify(
    url: str | None,
    registry: str | None,
    options: tuple[str, ...],
    staging_path: str | None,
    quick: bool,
    no_orphans: bool,
    as_json: bool,
    allow_empty: bool,
) -> None:
    """Check that every object a marker at URL names exists with the recorded size and sha256.

    Checks each release's package and each generation's states and packs (downloading them to hash them,
    unless --quick), reports orphans (uncommitted packages, states, packs no marker names: a push or training in
    progress, or abandoned) and, with --staging, orphans in a staging directory. Each problem is printed
    on its own line: missing, size-mismatch, checksum-mismatch, orphan, corrupted-marker,
    unlisted-project, staging-orphan, staging-stale.

    Without URL, the registry of the ForML config ($FORML_HOME/config.toml; --registry NAME for another
    section).

    Exit code 0: healthy; 1: problems found; 2: the registry could not be read, or nothing at URL is a
    registry's (a mistyped URL must not pass for a healthy registry; --allow-empty accepts it).
    """
    import pathlib

    from forml_s3.ops import snapshot as inspect

    st = open_store(url, options, registry)
    with fatal_errors():
        snap = inspect.snapshot(st)
    _no_registry(snap, allow_empty)
    with fatal_errors():
        total = sum(size for _, size, _, _ in inspect.expected(st, snap))
        with progress_bar(total, 'Verifying', show_pos=False) as bar:
            _, problems = inspect.verify(
                st,
                snap=snap,
                checksums=not quick,
                orphans=not no_orphans,
                staging_path=pathlib.Path(staging_path) if staging_path else None,
                progress=bar.update,
            )
    objects = len(inspect.expected(st, snap))
    if as_json:
        click.echo(json.dumps([{'kind': p.kind, 'path': p.path, 'message': p.message} for p in problems], indent=1))
    else:
        for problem in problems:
            click.echo(f'{problem.kind.upper()}: {problem.message}')
    summary = (
        f'{objects} committed objects checked ({"sizes" if quick else "sizes and sha256"}), {len(problems)} problems'
    )
    click.echo(summary, err=True)
    if problems:
        sys.exit(PROBLEMS)


# copy -------------------------------------------------------------------------------------------------------
FORMAT_HELP = 'posix: ForML posix registry directory; forml-s3: forml-s3 registry; auto: detect (default).'


@click.command()
@click.argument('source')
@click.argument('destination')
@option_flag('--src-option', what='SOURCE')
@click.option('--dst-option', 'dst_options', multiple=True, metavar='KEY=VALUE', help='Storage option of DESTINATION.')
@click.option('--src-format', type=click.Choice(['auto', 'posix', 'forml-s3']), default='auto', help=FORMAT_HELP)
@click.option('--dst-format', type=click.Choice(['auto', 'posix', 'forml-s3']), default='auto', help=FORMAT_HELP)
@click.option('--dry-run', is_flag=True, help='Show what would be copied, copy nothing.')
def copy(
    source: str,
    destination: str,
    options: tuple[str, ...],
    dst_options: tuple[str, ...],
    src_format: str,
    dst_format: str,
    dry_run: bool,
) -> None:
    """Copy every release and generation from SOURCE to DESTINATION (resumable).

    Either side is a ForML posix registry directory (a plain path, posix:PATH, or a file:// URL of a
    directory in ForML's posix layout) or a forml-s3 registry (s3://bucket/prefix, file://, any fsspec URL).
    Generation numbers and tags are preserved. What the destination already holds with the same content
    (package sha256, tag, every state's sha256) is skipped, so a second run copies nothing; a release or
    generation there with different content is a conflict, reported and left alone; one retired at the
    destination is skipped (and said so). Pins are copied between forml-s3 registries; a ForML posix destination
    keeps none, and the output says so for each pin. --dry-run prints exactly the steps a real run takes.

    \b
    Examples:
      forml-s3 copy ~/.forml/registry s3://my-bucket/forml          # ForML posix -> forml-s3
      forml-s3 copy s3://my-bucket/forml /tmp/registry-backup        # forml-s3 -> ForML posix
      forml-s3 copy s3://old-bucket/forml s3://new-bucket/forml --dst-option region=eu-west-1

    Exit code 0: everything is at the destination; 1: something was not copied; 2: a side could not be read.
    """
    from forml_s3.ops import copy as migrate

    src_opts, dst_opts = parse_options(options), parse_options(dst_options)
    _loglevel()
    with migrate.Workdir() as workdir, fatal_errors():
        try:
            src = migrate.open_side(source, src_opts, workdir / 'source', src_format)
            dst = migrate.open_side(destination, dst_opts, workdir / 'destination', dst_format)
        except ValueError as err:
            raise Fatal(str(err)) from err
        click.echo(f'Copying {src} -> {dst}', err=True)
        steps = migrate.plan(src, dst)
        if dry_run:
            for step in steps:
                click.echo(f'{step.action.value:<9} {step.label}' + (f': {step.reason}' if step.reason else ''))
            todo = sum(s.action is migrate.Action.COPY for s in steps)
            pins = sum(s.action is migrate.Action.PIN for s in steps)
            skip = sum(s.action is migrate.Action.SKIP and not s.label.startswith('pin') for s in steps)
            click.echo(f'{todo} to copy, {skip} already there' + (f', {pins} to pin' if pins else ''))
            return
        from forml_s3.ops import snapshot as inspect

        moved = {'bytes': 0}

        def shown(step: migrate.Step | None) -> str:
            return f'{step.label} ({inspect.human(moved["bytes"])} written)' if step else ''

        def written(step: migrate.Step, size: int) -> None:
            moved['bytes'] += size
            bar.current_item = step  # re-render within the step: one with large states shows its bytes as they go
            bar.render_progress()

        with progress_bar(len(steps), 'Copying', item_show_func=shown) as bar:
            summary = migrate.copy(src, dst, steps=steps, progress=lambda step: bar.update(1, step), written=written)
    for step in steps:
        if step.action is migrate.Action.SKIP and step.reason:
            click.echo(f'{step.action.value:<9} {step.label}: {step.reason}')
    for message in summary.failed:
        click.echo(f'FAILED: {message}', err=True)
    click.echo(summary.line())
    if not summary.ok:
        sys.exit(PROBLEMS)


# gc ---------------------------------------------------------------------------------------------------------
SHORT_GRACE_HELP = (
    'Allow --older-than below 7 days. RISK: the uploads of a training or push in progress are deleted if its '
    'process has not announced itself with a lease yet (its first lease_after seconds, 60 by default) or could '
    'not renew it for 10 minutes (stalled, suspended, cut off); that commit then fails and must run again. '
    'Committed generations and releases are never touched.'
)


@registry_command()
@click.option(
    '--older-than',
    'days',
    type=click.FloatRange(min=0),
    default=7,
    show_default=True,
    metavar='DAYS',
    help='Delete only objects last modified (uploads started) more than DAYS days ago: leave time for trainings '
    'in progress. Below 7 only with --allow-short-grace.',
)
@click.option('--allow-short-grace', is_flag=True, help=SHORT_GRACE_HELP)
@click.option(
    '--retired-older-than',
    'retired_days',
    type=click.FloatRange(min=0),
    metavar='DAYS',
    help='Also delete the states and retired markers of generations retired more than DAYS days ago: what an S3 '
    'lifecycle rule would expire, for stores without such rules (gs://, file://). Tombstones stay.',
)
@click.option(
    '--dry-run', is_flag=True, help='List what would be deleted (judged exactly as a real run), delete nothing.'
)
def gc(
    url: str | None,
    registry: str | None,
    options: tuple[str, ...],
    days: float,
    allow_short_grace: bool,
    retired_days: float | None,
    dry_run: bool,
) -> None:
    """Delete abandoned uncommitted objects at URL: packages, states, packs no marker names, older than DAYS,
    and incomplete multipart uploads (S3) started more than DAYS ago.

    For buckets without lifecycle rules (and for file:// or other stores without object tags). Without URL,
    the registry of the ForML config ($FORML_HOME/config.toml; --registry NAME for another section). Only keys the
    forml-s3 layout makes, in projects and releases the registry knows, are judged. An object is deleted only if
    two listings, one just before deleting, both find no marker naming it, no live writer's lease names its
    release, and (S3) it is still the version judged (If-Match on its ETag). Expired leases of dead writers
    are dropped.

    \b
    Examples:
      forml-s3 gc s3://my-bucket/forml --dry-run
      forml-s3 gc s3://my-bucket/forml
      forml-s3 gc s3://my-bucket/forml --older-than 1 --allow-short-grace
      forml-s3 gc gs://my-bucket/forml --retired-older-than 30

    Exit code 0: done; 2: could not complete (what was deleted before the failure is listed).
    """
    from forml_s3.ops import gc as garbage
    from forml_s3.ops import snapshot as inspect

    if days < garbage.GRACE.days and not allow_short_grace:
        raise click.BadParameter(
            f'{days:g} is shorter than the {garbage.GRACE.days}-day grace period: pass --allow-short-grace '
            'if you accept its risk (see --help)',
            param_hint='--older-than',
        )
    st = open_store(url, options, registry)
    age = datetime.timedelta(days=days)
    retired_age = None if retired_days is None else datetime.timedelta(days=retired_days)
    verb = {'deleted': 'would delete', 'aborted': 'would abort', 'dropped': 'would drop'} if dry_run else {}
    if dry_run:
        verb['expired'] = 'would delete (retired)'
    else:
        verb['expired'] = 'deleted (retired)'

    def line(what: str, item: typing.Any) -> str:
        what = verb.get(what, what)
        if what.endswith('changed'):
            return f'kept {st.url_of(item)}: it changed since it was judged'
        if isinstance(item, garbage.Upload):
            return f'{what} multipart upload {item.upload_id} of {st.url_of(item.path)}'
        if isinstance(item, inspect.Object):
            return f'{what} {st.url_of(item.path)} ({inspect.human(item.size)})'
        return f'{what} expired lease {st.url_of(item.path)} of {item.writer}'

    done: list[str] = []

    def tell(what: str, item: typing.Any) -> None:
        done.append(line(what, item))
        bar.update(1)

    try:
        with fatal_errors():
            judged = garbage.judge(st, age, retired_older_than=retired_age)
            if dry_run:
                result = judged
                for what, items in (
                    ('deleted', result.objects),
                    ('expired', result.retired),
                    ('aborted', result.uploads),
                    ('dropped', result.leases),
                ):
                    done.extend(line(what, item) for item in items)
            else:
                with progress_bar(len(judged), 'Deleting') as bar:
                    result = garbage.collect(st, age, progress=tell, garbage=judged)
    except Fatal as err:
        for text in done:
            click.echo(text)
        click.echo(f'gc stopped after {len(done)} of its deletions (listed above): {err.message}', err=True)
        raise
    for text in done:
        click.echo(text)
    for release in sorted(result.leased):
        click.echo(f'spared {release}: a live writer holds uncommitted uploads there (lease)', err=True)
    total = inspect.human(sum(o.size for o in result.objects))
    would = 'would be ' if dry_run else ''
    click.echo(
        f'{len(result.objects)} uncommitted objects older than {days:g} days {would}deleted ({total}), '
        f'{len(result.uploads)} multipart uploads {would}aborted, {len(result.leases)} expired leases {would}dropped'
        + (
            f', {len(result.retired)} objects of generations retired more than {retired_days:g} days ago '
            f'{would}deleted ({inspect.human(sum(o.size for o in result.retired))})'
            if retired_days is not None
            else ''
        )
    )
