"""The registry a command works on when the user names no URL: a section of the ForML platform configuration
(``$FORML_HOME/config.toml``), the ``[REGISTRY]`` default one unless ``--registry NAME`` picks another."""

import pathlib
import typing

import click

from .ops import Fatal


def registry_settings(name: str | None = None) -> tuple[dict[str, typing.Any], str]:
    """The keyword settings of a forml-s3 registry section of the ForML config (``url``, ``storage_options``, ...),
    checked as the registry checks them (:mod:`forml_s3.settings`), and where they are (``[REGISTRY.x] of PATH``).

    Raises:
        click.UsageError: No such section, or it is not a forml-s3 registry (the message says what to pass).
        Fatal: A setting of the section is wrong (exit code 2; the message says which and where).
    """
    from forml import setup  # ForML reads $FORML_HOME/config.toml on import

    from forml_s3 import registry, settings

    registries = setup.CONFIG.get('REGISTRY', {})
    name = name or registries.get('default')
    path = setup.USRDIR / 'config.toml'
    if not name:
        raise click.UsageError(f'No registry URL given and no [REGISTRY] default in {path}: pass a URL')
    section = registries.get(name)
    if not isinstance(section, typing.Mapping):
        known = sorted(k for k, v in registries.items() if isinstance(v, typing.Mapping))
        raise click.UsageError(
            f'No registry section [REGISTRY.{name}] in {path} (sections: {", ".join(known) or "none"}): '
            'pass a URL or --registry NAME'
        )
    where = f'[REGISTRY.{name}] of {path}'
    provider = section.get('provider')
    if provider not in settings.PROVIDERS['REGISTRY']:
        raise click.UsageError(f'{where} is not a forml-s3 registry (provider = {provider!r}): pass a URL')
    found = {k: v for k, v in section.items() if k != 'provider'}
    try:
        settings.check(registry.Registry, (), found, 'forml-s3 registry setting')
    except settings.Invalid as err:
        raise Fatal(str(err.at(where))) from None
    return found, where


def staging_root(name: str | None = None) -> pathlib.Path | None:
    """The staging path of a forml-s3 registry section of the ForML config (``staging``, else
    ``<cache_dir>/staging``, as the registry computes it): section ``name``, else the default one if it is
    forml-s3's (``None`` if it is not: the caller keeps its own default)."""
    from forml import setup

    from forml_s3 import settings
    from forml_s3.runtime import cache

    if name is None:
        registries = setup.CONFIG.get('REGISTRY', {})
        default = registries.get(registries.get('default') or '')
        if not isinstance(default, typing.Mapping) or default.get('provider') not in settings.PROVIDERS['REGISTRY']:
            return None
    found, _ = registry_settings(name)
    if found.get('staging'):
        return pathlib.Path(found['staging'])
    return (pathlib.Path(found['cache_dir']) if found.get('cache_dir') else cache.default_root()) / 'staging'
