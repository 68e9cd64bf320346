"""``forml-s3 alias``: named pointers to model generations (``champion``, ``challenger``, ...), kept in the bucket.

Thin click commands over :mod:`forml_s3.runtime.aliases`. The registry is a URL (the first argument, or ``--url``;
with ``-o`` storage options) or, by default, the ForML config's registry (``--registry NAME`` for another section
than the default one), as for every registry command (:func:`forml_s3.cli.ops.registry_command`).

Exit codes: 0 done; 1 the alias was not where ``--expect`` said, or another change won (nothing written);
2 bad usage, a missing alias or generation, or the registry could not be read.
"""

import json
import typing

import click

from .ops import PROBLEMS, Fatal, open_store, registry_command


class Lost(click.ClickException):
    """A compare-and-swap lost (exit code 1): the message says what the alias points to now."""

    exit_code = PROBLEMS


def _aliases(url: str | None, registry: str | None, options: tuple[str, ...]):
    """The :class:`forml_s3.runtime.aliases.Aliases` of the chosen registry."""
    from forml_s3.model import layout
    from forml_s3.runtime import aliases

    st = open_store(url, options, registry)
    return aliases.Aliases(st, layout.Layout(st.root))


def _on_alias(json_help: str, *arguments: typing.Callable, expect: str | None = None) -> typing.Callable:
    """The parameters of a command on alias NAME of PROJECT, in this order: PROJECT, NAME, ``arguments``,
    ``--expect`` (with this metavar) when given, and ``--json`` (with this help)."""

    def decorate(command: typing.Callable) -> typing.Callable:
        command = click.option('--json', 'as_json', is_flag=True, help=json_help)(command)
        if expect:
            command = click.option('--expect', metavar=expect, help='Fail (exit 1) unless the alias points there now.')(
                command
            )
        for argument in reversed((click.argument('project'), click.argument('name'), *arguments)):
            command = argument(command)
        return command

    return decorate


def _run(action: typing.Callable[[], typing.Any]) -> typing.Any:
    """Run an alias operation: a lost swap exits 1, any other ForML error 2, each with its one-line message."""
    import forml

    from forml_s3.runtime import aliases

    try:
        return action()
    except aliases.Conflict as err:
        raise Lost(str(err)) from err
    except forml.AnyError as err:
        raise Fatal(str(err)) from err


def _target(value: str | None):
    """``--expect`` as a target: ``RELEASE#GENERATION`` or ``none``."""
    from forml_s3.runtime import aliases

    if value is None:
        return aliases.ANY
    if value.lower() == 'none':
        return None
    release, sep, generation = value.rpartition('#')
    if not sep or not generation.isdigit():
        raise click.BadParameter(f'{value!r}: expected RELEASE#GENERATION (e.g. 1.0#3) or none', param_hint='--expect')
    return aliases.Target(release, int(generation))


def _show(alias, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps({**alias.as_json(), 'history': len(alias.history)}))
    else:
        click.echo(
            f'{alias.project} {alias.name} -> {alias.target or "nothing"} (set by {alias.by} at {alias.updated})'
        )


@click.group()
def alias() -> None:
    """Named pointers to model generations (champion, challenger, ...), kept in the registry.

    An alias points to one live generation of a project; moving it is a compare-and-swap in the bucket (of two
    operators moving one alias at once exactly one wins) and every change is kept in its history. Gateways serving
    with forml_s3.selector.Alias follow it without a restart; retention never retires an aliased generation.
    """


@registry_command(alias, name='set')
@_on_alias(
    'Print the alias as JSON.',
    click.argument('release'),
    click.argument('generation', type=click.IntRange(min=1)),
    expect='RELEASE#GENERATION|none',
)
def set_(project, name, release, generation, expect, as_json, url, registry, options) -> None:
    """Point alias NAME of PROJECT to GENERATION of RELEASE (which must be live)."""
    aliases = _aliases(url, registry, options)
    _show(_run(lambda: aliases.set(project, name, release, generation, expect=_target(expect))), as_json)


@registry_command(alias)
@_on_alias('Print the alias as JSON.')
def get(project, name, as_json, url, registry, options) -> None:
    """What alias NAME of PROJECT points to."""
    aliases = _aliases(url, registry, options)
    _show(_run(lambda: aliases.get(project, name)), as_json)


@registry_command(alias, name='ls')
@click.argument('project')
@click.option('--json', 'as_json', is_flag=True, help='Print the aliases as JSON lines.')
def ls(project, as_json, url, registry, options) -> None:
    """The aliases of PROJECT and what each points to."""
    aliases = _aliases(url, registry, options)
    found = _run(lambda: aliases.live(project))
    for each in found:
        _show(each, as_json)
    if not found and not as_json:
        click.echo(f'No aliases of {project}', err=True)


@registry_command(alias)
@_on_alias('Print the removed alias as JSON.', expect='RELEASE#GENERATION')
def rm(project, name, expect, as_json, url, registry, options) -> None:
    """Remove alias NAME of PROJECT (its history is kept; `set` brings it back)."""
    aliases = _aliases(url, registry, options)
    _show(_run(lambda: aliases.remove(project, name, expect=_target(expect))), as_json)


@registry_command(alias)
@_on_alias('Print the changes as JSON lines.')
def history(project, name, as_json, url, registry, options) -> None:
    """Every change of alias NAME of PROJECT, oldest first: from, to, when, by whom."""
    from forml_s3.runtime import aliases as aliasmod

    aliases = _aliases(url, registry, options)

    def shown(value: typing.Any) -> str:
        target = aliasmod.Target.parse(value)
        return str(target) if target else 'nothing'

    for change in _run(lambda: aliases.history(project, name)):
        if as_json:
            click.echo(json.dumps(change))
        else:
            click.echo(f'{change["when"]}  {shown(change["from"])} -> {shown(change["to"])}  by {change["by"]}')
