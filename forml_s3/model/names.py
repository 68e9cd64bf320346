"""Validation of the names a user types before they become storage keys.

ForML's own key rules apply first (a project is a Python distribution name, a release is a PEP 440
version, a generation is a natural number); on top of them nothing may contain a path separator, a
``..`` or a control character, so no name can escape the registry root. Every failure raises
``forml.io.asset.Level.Invalid`` (a ``forml.InvalidError``) that says what is wrong and what is allowed.
"""

import re
import typing
import uuid

from forml.io import asset

MAX_NAME = 128
"""Longest project or application name accepted (S3 keys are limited to 1,024 bytes in all)."""

# PEP 508 distribution name: letters and digits, with '.', '_' or '-' inside.
_DISTRIBUTION = re.compile(r'[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?')


def _check_name(kind: str, name: typing.Any) -> str:
    if not isinstance(name, str):
        raise asset.Level.Invalid(f'Invalid {kind} name {name!r}: expected a string')
    shown = repr(name if len(name) <= 60 else name[:60] + '...')
    if not name:
        raise asset.Level.Invalid(f'Invalid {kind} name: empty')
    if len(name) > MAX_NAME:
        raise asset.Level.Invalid(f'Invalid {kind} name {shown}: longer than {MAX_NAME} characters')
    if '..' in name or not _DISTRIBUTION.fullmatch(name):
        raise asset.Level.Invalid(
            f'Invalid {kind} name {shown}: use letters, digits and ".", "_", "-" inside '
            '(a Python distribution name; no "/", "..", spaces or control characters)'
        )
    return name


def project(name: typing.Any) -> asset.Project.Key:
    """Validate a project name and return it as ForML's project key."""
    return asset.Project.Key(_check_name('project', str(name) if isinstance(name, asset.Project.Key) else name))


def application(name: typing.Any) -> str:
    """Validate an application (inventory descriptor) name."""
    return _check_name('application', name)


def release(version: typing.Any) -> asset.Release.Key:
    """Validate a release version (PEP 440) and return it as ForML's release key (normalised)."""
    if isinstance(version, asset.Release.Key):
        return version
    text = str(version)
    if not text or len(text) > MAX_NAME or any(c in text for c in '/\\') or '..' in text:
        raise asset.Level.Invalid(f'Invalid release {text!r}: expected a PEP 440 version such as 1.0 or 0.2.dev1')
    try:
        return asset.Release.Key(text)
    except asset.Level.Key.Invalid as err:
        raise asset.Level.Invalid(
            f'Invalid release {text!r}: expected a PEP 440 version such as 1.0 or 0.2.dev1'
        ) from err


def canonical(version: typing.Any) -> str:
    """The one key of a PEP 440 version: every spelling of it (``2``, ``2.0``, ``2.0.0``) gives the same string.

    PEP 440 compares release segments as if padded with zeros, so trailing zeros are dropped down to two segments
    (``2.0.0`` and ``2`` become ``2.0``; ``1.2.0`` becomes ``1.2``; ``1.2.3`` stays); the rest is PEP 440's own
    normal form (epoch, pre-, post-, dev-release and local label as ``packaging`` prints them). Release markers
    are created under this key, so equal versions contend for one exclusive create.
    """
    key = release(version)
    segments = list(key.release)
    while len(segments) > 2 and segments[-1] == 0:
        segments.pop()
    segments += [0] * (2 - len(segments))
    text = f'{key.epoch}!' if key.epoch else ''
    text += '.'.join(str(s) for s in segments)
    if key.pre is not None:
        text += f'{key.pre[0]}{key.pre[1]}'
    if key.post is not None:
        text += f'.post{key.post}'
    if key.dev is not None:
        text += f'.dev{key.dev}'
    if key.local is not None:
        text += f'+{key.local}'
    return text


def generation(number: typing.Any) -> asset.Generation.Key:
    """Validate a generation number (a natural number: 1, 2, ...)."""
    if isinstance(number, bool):
        raise asset.Level.Invalid(f'Invalid generation {number!r}: expected a natural number (1, 2, ...)')
    try:
        return asset.Generation.Key(number)
    except asset.Level.Key.Invalid as err:
        raise asset.Level.Invalid(f'Invalid generation {number!r}: expected a natural number (1, 2, ...)') from err


def state(sid: typing.Any) -> uuid.UUID:
    """Validate a state id (ForML uses UUIDs)."""
    if isinstance(sid, uuid.UUID):
        return sid
    try:
        return uuid.UUID(str(sid))
    except ValueError as err:
        raise asset.Level.Invalid(f'Invalid state id {sid!r}: expected a UUID') from err


_ALIAS = re.compile(r'[A-Za-z][A-Za-z0-9_-]{0,62}')


def alias(name: typing.Any) -> str:
    """Validate an alias name (a letter, then letters, digits, "_" or "-"; at most 63 characters)."""
    if not isinstance(name, str) or not _ALIAS.fullmatch(name):
        raise asset.Level.Invalid(
            f'Invalid alias name {name!r}: start with a letter, then letters, digits, "_" or "-" (at most 63), '
            'e.g. champion'
        )
    return name
