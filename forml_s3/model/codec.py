"""JSON encoding of the registry's markers and of ForML generation tags.

A tag round-trips exactly what ``forml.io.asset.Tag`` holds: training timestamp and ordinal, tuning
timestamp and score, and the state ids. Datetimes and dates are kept as typed values
(``{"$datetime": "..."}``) so they come back as the same Python objects, naive or aware as written.
Decoding problems raise ``asset.Level.Invalid`` naming the object, never a bare ``KeyError``.
"""

import datetime
import json
import math
import os
import socket
import typing
import uuid

from forml.io import asset

FORMAT = 'forml-s3/1'
"""Format tag written into every marker; readers refuse markers of an unknown format."""

_SCALARS = (str, int, float, bool, type(None))


def encode_value(value: typing.Any) -> typing.Any:
    """Encode one tag attribute value (a ForML native: scalar, date or datetime)."""
    if isinstance(value, datetime.datetime):
        return {'$datetime': value.isoformat()}
    if isinstance(value, datetime.date):
        return {'$date': value.isoformat()}
    if isinstance(value, float) and not math.isfinite(value):
        return {'$float': repr(value)}
    if isinstance(value, _SCALARS):
        return value
    raise asset.Level.Invalid(f'Cannot store tag value {value!r} of type {type(value).__name__}')


def decode_value(value: typing.Any) -> typing.Any:
    """Inverse of :func:`encode_value`."""
    if isinstance(value, dict):
        if '$datetime' in value:
            return datetime.datetime.fromisoformat(value['$datetime'])
        if '$date' in value:
            return datetime.date.fromisoformat(value['$date'])
        if '$float' in value:
            return float(value['$float'])
        raise ValueError(f'unknown typed value {value!r}')
    return value


def encode_tag(tag: asset.Tag) -> dict[str, typing.Any]:
    """The JSON-ready form of a generation tag."""
    return {
        'training': {
            'timestamp': encode_value(tag.training.timestamp),
            'ordinal': encode_value(tag.training.ordinal),
        },
        'tuning': {'timestamp': encode_value(tag.tuning.timestamp), 'score': encode_value(tag.tuning.score)},
        'states': [str(s) for s in tag.states],
    }


def decode_tag(data: dict[str, typing.Any]) -> asset.Tag:
    """The generation tag from its JSON form (raises ``KeyError``/``ValueError``/``TypeError`` if malformed)."""
    return asset.Tag(
        training=asset.Tag.Training(
            timestamp=decode_value(data['training']['timestamp']), ordinal=decode_value(data['training']['ordinal'])
        ),
        tuning=asset.Tag.Tuning(
            timestamp=decode_value(data['tuning']['timestamp']), score=decode_value(data['tuning']['score'])
        ),
        states=[uuid.UUID(s) for s in data['states']],
    )


def dumps(marker: dict[str, typing.Any]) -> bytes:
    """Serialise a marker (sorted keys so equal markers are equal bytes)."""
    return json.dumps({'format': FORMAT, **marker}, sort_keys=True, indent=1).encode('utf-8')


def loads(raw: bytes, key: str) -> dict[str, typing.Any]:
    """Parse a marker read from ``key``; anything but a well-formed forml-s3 marker raises ``Level.Invalid``."""
    try:
        marker = json.loads(raw.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise asset.Level.Invalid(f'Corrupted marker {key}: not valid JSON ({err}); run `forml-s3 verify`') from err
    if not isinstance(marker, dict) or marker.get('format') != FORMAT:
        raise asset.Level.Invalid(f'Corrupted marker {key}: not a {FORMAT} marker; run `forml-s3 verify`')
    return marker


def project_marker(project: str) -> dict[str, typing.Any]:
    """The content of a project marker (created after the project's first release marker)."""
    return {'project': project, 'created': now(), 'writer': writer()}


def release_marker(
    project: str, release: str, manifest: dict[str, typing.Any], package: str, size: int, sha256: str
) -> dict[str, typing.Any]:
    """The content of a release marker: the package's manifest, and the package object's name (in the release's
    directory), size and sha256."""
    return {
        'project': project,
        'release': release,
        'manifest': manifest,
        'package': {'key': package, 'size': size, 'sha256': sha256},
        'created': now(),
        'writer': writer(),
    }


def pin_marker(project: str, release: str, generation: int, note: str) -> dict[str, typing.Any]:
    """The content of a pin marker: the generation is never retired (``note`` says why)."""
    return {
        'project': project,
        'release': release,
        'generation': generation,
        'pinned': now(),
        'writer': writer(),
        'note': note,
    }


def lease(releases: typing.Iterable[str], ttl: float) -> dict[str, typing.Any]:
    """The content of a writer's lease: the releases it holds uncommitted uploads in, renewed within ``ttl``."""
    return {'writer': writer(), 'releases': sorted(releases), 'ttl': ttl, 'renewed': now()}


def generation_marker(
    project: str,
    release: str,
    generation: int,
    tag: asset.Tag,
    states: dict[str, dict[str, typing.Any]],
    writer: str,
    packs: dict[str, dict[str, typing.Any]] | None = None,
) -> dict[str, typing.Any]:
    """The content of a generation marker: the tag plus size and sha256 of every state it names (and, for
    states stored in a pack, the pack's id and the state's offset in it; the packs' own sizes and sha256s)."""
    marker = {
        'project': project,
        'release': release,
        'generation': generation,
        'tag': encode_tag(tag),
        'states': states,
        'created': now(),
        'writer': writer,
    }
    if packs:
        marker['packs'] = packs
    return marker


def tag_of(marker: dict[str, typing.Any], key: str) -> asset.Tag:
    """The generation tag held by a generation marker read from ``key``."""
    try:
        tag = decode_tag(marker['tag'])
        missing = [str(s) for s in tag.states if str(s) not in marker['states']]
    except (KeyError, ValueError, TypeError, AttributeError) as err:
        raise asset.Level.Invalid(f'Corrupted generation marker {key}: {err!r}; run `forml-s3 verify`') from err
    if missing:
        raise asset.Level.Invalid(f'Corrupted generation marker {key}: no checksum for states {missing}')
    return tag


def now() -> str:
    """Current UTC time as an ISO string (marker timestamps)."""
    return datetime.datetime.now(datetime.UTC).isoformat()


def writer() -> str:
    """Who writes a marker (host and process), shown when two writers conflict."""
    return f'{socket.gethostname()}:{os.getpid()}'
