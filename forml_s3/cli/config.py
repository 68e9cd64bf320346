"""The registry a command works on when the user names no URL: a section of the ForML platform configuration
(``$FORML_HOME/config.toml``), the ``[REGISTRY]`` default one unless ``--registry NAME`` picks another."""

import typing

import click

PROVIDERS = ('s3', 'forml_s3.registry:Registry', 'forml_s3.registry.Registry')
"""How a forml-s3 registry section names its provider."""


def registry_settings(name: str | None = None) -> dict[str, typing.Any]:
    """The keyword settings of a forml-s3 registry section of the ForML config (``url``, ``storage_options``, ...).

    Raises:
        click.UsageError: No such section, or it is not a forml-s3 registry (the message says what to pass).
    """
    from forml import setup  # ForML reads $FORML_HOME/config.toml on import

    registries = setup.CONFIG.get('REGISTRY', {})
    name = name or registries.get('default')
    where = setup.USRDIR / 'config.toml'
    if not name:
        raise click.UsageError(f'No registry URL given and no [REGISTRY] default in {where}: pass --url URL')
    section = registries.get(name)
    if not isinstance(section, typing.Mapping):
        known = sorted(k for k, v in registries.items() if isinstance(v, typing.Mapping))
        raise click.UsageError(
            f'No registry section [REGISTRY.{name}] in {where} (sections: {", ".join(known) or "none"}): '
            'pass --url URL or --registry NAME'
        )
    provider = section.get('provider')
    if provider not in PROVIDERS:
        raise click.UsageError(
            f'[REGISTRY.{name}] in {where} is not a forml-s3 registry (provider = {provider!r}): pass --url URL'
        )
    if 'url' not in section:
        raise click.UsageError(f'[REGISTRY.{name}] in {where} has no url: add url = "s3://bucket/prefix"')
    return {k: v for k, v in section.items() if k != 'provider'}
