"""Checks a provider's settings once, up front: every key of its ``config.toml`` section (or keyword of a direct
call) is known, the required ones are there and each value has the right type, so that a typo is one line naming
the key, the accepted ones and the nearest ("did you mean") instead of a 40-line ``TypeError`` traceback.

The providers (:class:`forml_s3.registry.Registry`, :class:`forml_s3.inventory.Inventory`) take :class:`Checked`
as their metaclass: ForML instantiates a provider by calling its class with the section's keys, and the check runs
before Python binds them to ``__init__`` (unpickling, which never calls the class, is not checked again).
"""

import collections.abc
import difflib
import inspect
import os
import pathlib
import types
import typing

import forml
from forml import provider as provmod
from forml import setup
from forml.io import asset

PROVIDERS = {
    'REGISTRY': ('s3', 'forml_s3.registry:Registry', 'forml_s3.registry.Registry'),
    'INVENTORY': ('s3', 'forml_s3.inventory:Inventory', 'forml_s3.inventory.Inventory'),
}
"""How a forml-s3 section of each kind names its provider."""


class Invalid(forml.InvalidError):
    """A setting or storage option is unknown, missing or of the wrong type (the message says which and how to
    fix it)."""

    def at(self, where: str) -> 'Invalid':
        """The same error saying where the setting is (``... 'x' in [REGISTRY.s3] of ...: did you mean ...``)."""
        head, _, tail = str(self).partition(': ')
        return Invalid(f'{head} in {where}: {tail}')


def suggest(key: str, accepted: typing.Iterable[str]) -> str:
    """``did you mean 'x'? `` for the accepted name nearest to ``key`` (empty if none is near)."""
    near = difflib.get_close_matches(key, list(accepted), n=1)
    return f'did you mean {near[0]!r}? ' if near else ''


def unknown(what: str, key: str, accepted: typing.Iterable[str]) -> Invalid:
    """The error for an unknown ``key``: it, the nearest accepted one and all the accepted ones."""
    accepted = list(accepted)
    return Invalid(f'Unknown {what} {key!r}: {suggest(key, accepted)}(accepted: {", ".join(accepted)})')


def describe(hint: typing.Any) -> str:
    """A type hint in the words of a config file."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return ' or '.join(describe(a) for a in typing.get_args(hint) if a is not type(None))
    hint = typing.get_origin(hint) or hint
    words = {
        bool: 'true or false',
        int: 'a whole number',
        float: 'a number',
        str: 'a string',
        pathlib.Path: 'a path',
        collections.abc.Mapping: 'a table',
    }
    return words.get(hint, getattr(hint, '__name__', str(hint)))


def matches(value: typing.Any, hint: typing.Any) -> bool:
    """Whether ``value`` (as TOML or a command line gives it) fits the type hint (a bool is no number here)."""
    if hint is typing.Any:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    hint = typing.get_origin(hint) or hint
    if hint in (int, float) and isinstance(value, bool):
        return False
    if hint is float:
        return isinstance(value, int | float)
    if hint is pathlib.Path:
        return isinstance(value, str | os.PathLike)
    return isinstance(value, hint)


def wrong_type(what: str, key: str, value: typing.Any, hint: typing.Any) -> Invalid:
    return Invalid(f'Invalid {what} {key} = {value!r}: expected {describe(hint)}')


def check(cls: type, args: tuple[typing.Any, ...], kwargs: typing.Mapping[str, typing.Any], what: str) -> None:
    """Check the arguments of ``cls(*args, **kwargs)`` against its ``__init__`` (names, required ones, types).

    Raises:
        Invalid: The first problem found, in one line.
    """
    init = cls.__init__
    signature = inspect.signature(init)
    params = [p for p in list(signature.parameters.values())[1:] if p.kind is not p.VAR_KEYWORD]
    accepted = [p.name for p in params]
    for key in kwargs:
        if key not in accepted:
            raise unknown(what, key, accepted)
    try:
        bound = signature.bind(None, *args, **kwargs)
    except TypeError:
        missing = [p.name for p in params if p.default is p.empty and p.name not in kwargs][len(args) :]
        raise Invalid(
            f'Missing {what} {missing[0] if missing else "?"}: add it'
            + (' (e.g. url = "s3://bucket/prefix")' if missing[:1] == ['url'] else '')
        ) from None
    hints = typing.get_type_hints(init)
    for key, value in list(bound.arguments.items())[1:]:
        if key in hints and not matches(value, hints[key]):
            raise wrong_type(what, key, value, hints[key])


def section(kind: str, kwargs: typing.Mapping[str, typing.Any]) -> str | None:
    """Where in the ForML config these provider settings come from: ``[REGISTRY.name] of /path/config.toml`` if
    exactly one forml-s3 section of ``kind`` holds exactly them, else ``None`` (e.g. a provider made in Python)."""
    found = [
        name
        for name, value in (setup.CONFIG.get(kind) or {}).items()
        if isinstance(value, typing.Mapping)
        and value.get('provider') in PROVIDERS[kind]
        and {k: v for k, v in value.items() if k != 'provider'} == dict(kwargs)
    ]
    return f'[{kind}.{found[0]}] of {setup.USRDIR / "config.toml"}' if len(found) == 1 else None


class Checked(type(provmod.Service)):
    """Metaclass of the forml-s3 providers: checks the settings before they reach ``__init__`` and says in which
    section of the ForML config the wrong one is."""

    def __call__(cls, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
        kind = 'REGISTRY' if issubclass(cls, asset.Registry) else 'INVENTORY'
        what = f'forml-s3 {kind.lower()} setting'
        try:
            check(cls, args, kwargs, what)
            return super().__call__(*args, **kwargs)
        except Invalid as err:
            where = None if args else section(kind, kwargs)
            raise err.at(where) if where else err from None
