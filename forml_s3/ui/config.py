"""The registry and inventory a ForML config selects by default (``forml-s3 ui`` without a URL).

Reads ``$FORML_HOME/config.toml`` (ForML's default home is ``~/.forml``): the ``[REGISTRY]`` section's ``default``
names the provider section whose ``url`` and ``storage_options`` are used, if that provider is forml-s3's;
``[INVENTORY]`` likewise. Nothing else of the config is read.
"""

import os
import pathlib
import tomllib
import typing

import forml

from ..settings import PROVIDERS


def path() -> pathlib.Path:
    return pathlib.Path(os.environ.get('FORML_HOME') or pathlib.Path.home() / '.forml') / 'config.toml'


def default(kind: str, config: pathlib.Path | None = None) -> tuple[str, dict[str, typing.Any]] | None:
    """(url, storage_options) of the default ``kind`` (``REGISTRY`` or ``INVENTORY``) section; ``None`` if the
    config has none. Raises ``forml.InvalidError`` if the default is not a forml-s3 provider."""
    config = config or path()
    try:
        data = tomllib.loads(config.read_text())
    except FileNotFoundError:
        return None
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise forml.InvalidError(f'Cannot read the ForML config {config}: {err}') from err
    level = data.get(kind) or {}
    name = level.get('default')
    section = level.get(name) if isinstance(name, str) else None
    if not isinstance(section, dict):
        return None
    if section.get('provider') not in PROVIDERS[kind] or not isinstance(section.get('url'), str):
        raise forml.InvalidError(
            f'The default {kind.lower()} of {config} ([{kind}.{name}]) is not a forml-s3 provider with a url: '
            'give the URL on the command line'
        )
    return section['url'], dict(section.get('storage_options') or {})
