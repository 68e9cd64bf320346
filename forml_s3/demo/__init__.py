"""A real, tiny ForML project and everything needed to run it against a registry in a bucket.

Used by ``forml-s3 demo``, the end-to-end tests and the benchmarks:

* :data:`PROJECT_DIR` - the project source tree (``pyproject.toml`` + package ``forml_s3_demo``): a
  ``StandardScaler >> LogisticRegression`` pipeline, two stateful actors, so each generation holds two states.
  Copy it before ``forml project release`` (the release writes into the tree).
* :data:`APPLICATION` - its application descriptor, serving the latest generation through
  :class:`forml_s3.selector.Refreshing`.
* :func:`write_data` - the training CSV the ``monolite`` feed reads; batch 2 adds newer readings, so a
  generation trained after it predicts differently (what "new data arrived, retrain" looks like).
* :func:`render_config` - a ForML ``config.toml`` selecting the forml-s3 registry and inventory.
* :func:`run_forml` - the real ``forml`` CLI in a subprocess with that config.
"""

import os
import pathlib
import random
import shutil
import subprocess
import sys
import typing

PROJECT = 'forml-s3-demo'
RELEASE = '0.1'
PROJECT_DIR = pathlib.Path(__file__).parent / 'project'
APPLICATION = PROJECT_DIR / 'application.py'
SCHEMA = 'forml_s3.demo.schema:Reading'
COLUMNS = ('Temperature', 'Vibration', 'Failure')
QUERY = [{'Temperature': 75.0, 'Vibration': 0.6}, {'Temperature': 55.0, 'Vibration': 0.2}]
"""Two readings to ask the served model about."""

BATCH_ROWS = 60


def rows(batch: int = 1) -> list[tuple[float, float, int]]:
    """The demo dataset after ``batch`` batches of readings (deterministic).

    Failures grow likelier with temperature and vibration; in later batches the machines fail at lower
    readings than before (wear), so a model retrained on them predicts higher failure probabilities.
    """
    if batch < 1:
        raise ValueError(f'Batch must be at least 1, not {batch}')
    generator = random.Random(42)
    data: list[tuple[float, float, int]] = []
    for number in range(batch):
        threshold = 4.4 - 0.5 * number
        for _ in range(BATCH_ROWS):
            temperature = round(generator.uniform(40.0, 100.0), 1)
            vibration = round(generator.uniform(0.05, 1.0), 2)
            risk = 0.04 * temperature + 1.5 * vibration + generator.gauss(0, 0.25)
            data.append((temperature, vibration, int(risk > threshold)))
    return data


def write_data(path: str | os.PathLike, batch: int = 1) -> pathlib.Path:
    """Write the dataset after ``batch`` batches as the CSV the feed reads; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [','.join(COLUMNS)] + [f'{t},{v},{f}' for t, v, f in rows(batch)]
    path.write_text('\n'.join(lines) + '\n')
    return path


def new_data(home: str | os.PathLike, path: str | os.PathLike, batch: int) -> pathlib.Path:
    """Write the dataset after ``batch`` batches and make ForML read it again.

    ForML's SQL-backed feeds (``monolite`` included) cache query results on disk in
    ``$FORML_HOME/.cache/alchemy`` keyed by the query, forever: without clearing it, a changed CSV is never
    read again and a retraining reproduces the previous generation byte for byte.
    """
    shutil.rmtree(pathlib.Path(home) / '.cache' / 'alchemy', ignore_errors=True)
    return write_data(path, batch)


def copy_project(target: str | os.PathLike) -> pathlib.Path:
    """A fresh copy of the project tree (plus its application descriptor) at ``target``."""
    target = pathlib.Path(target)
    shutil.copytree(PROJECT_DIR, target, ignore=shutil.ignore_patterns('__pycache__', 'dist', '*.log'))
    return target


def render_config(
    home: str | os.PathLike,
    *,
    registry_url: str,
    storage_options: typing.Mapping[str, typing.Any] | None = None,
    inventory_url: str | None = None,
    staging: str | os.PathLike | None = None,
    data: str | os.PathLike | None = None,
    runner: typing.Mapping[str, typing.Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    gateway_port: int = 8080,
    registry: typing.Mapping[str, typing.Any] | None = None,
) -> pathlib.Path:
    """Write ``<home>/config.toml``: forml-s3 registry (and inventory), the demo feed, stdout sink, REST gateway.

    Args:
        home: The ``FORML_HOME`` directory (created).
        registry_url: The registry root, e.g. ``s3://bucket/forml``.
        storage_options: fsspec options for registry and inventory (e.g. ``endpoint_url``).
        inventory_url: Application inventory root (no inventory section without it).
        staging: Registry staging path (default: under the cache directory).
        data: The feed's CSV (default ``<home>/data.csv``, written with batch 1 if missing).
        runner: The ``[RUNNER.demo]`` section (default: ForML's Dask runner, threaded scheduler).
        cache_dir: forml-s3 blob cache (default ``<home>/cache``, so the demo leaves nothing behind).
        gateway_port: Port of the REST gateway ``forml application serve`` starts.
        registry: Extra keys of the ``[REGISTRY.s3]`` section (e.g. ``keep_generations``).

    Returns:
        The path of the written ``config.toml``.
    """
    import toml  # a ForML dependency

    home = pathlib.Path(home)
    home.mkdir(parents=True, exist_ok=True)
    data = pathlib.Path(data) if data else home / 'data.csv'
    if not data.exists():
        write_data(data)
    section: dict[str, typing.Any] = {
        'provider': 's3',
        'url': registry_url,
        'cache_dir': str(cache_dir or home / 'cache'),
    }
    if staging:
        section['staging'] = str(staging)
    if storage_options:
        section['storage_options'] = dict(storage_options)
    section.update(registry or {})
    config: dict[str, typing.Any] = {
        'RUNNER': {'default': 'demo', 'demo': dict(runner or {'provider': 'dask', 'scheduler': 'threads'})},
        'REGISTRY': {'default': 's3', 'path': ['forml_s3.registry'], 's3': section},
        # name the CSV columns: on Dask workers ForML's schema arrives with its fields sorted (docs/staging.md)
        'FEED': {
            'default': ['demo'],
            'demo': {'provider': 'monolite', 'csv': {SCHEMA: {'path': str(data), 'kwargs': {'names': list(COLUMNS)}}}},
        },
        'SINK': {'default': 'print', 'print': {'provider': 'stdout'}},
        'GATEWAY': {
            'default': 'http',
            'http': {'provider': 'rest', 'host': '127.0.0.1', 'port': int(gateway_port), 'processes': 1},
        },
    }
    if inventory_url:
        inventory: dict[str, typing.Any] = {'provider': 's3', 'url': inventory_url}
        if storage_options:
            inventory['storage_options'] = dict(storage_options)
        config['INVENTORY'] = {'default': 's3', 'path': ['forml_s3.inventory'], 's3': inventory}
    path = home / 'config.toml'
    path.write_text(toml.dumps(config))
    return path


def forml_command() -> list[str]:
    """The ``forml`` CLI of this interpreter's environment."""
    script = pathlib.Path(sys.executable).with_name('forml')
    if script.exists():
        return [str(script)]
    found = shutil.which('forml')
    if not found:
        raise FileNotFoundError('The forml CLI is not installed in this environment (pip install forml==0.93)')
    return [found]


def forml_env(home: str | os.PathLike, env: typing.Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``forml`` subprocess using ``<home>/config.toml``."""
    return {**os.environ, 'FORML_HOME': str(home), 'PYTHONUNBUFFERED': '1', **(env or {})}


def run_forml(
    home: str | os.PathLike,
    *args: str,
    cwd: str | os.PathLike | None = None,
    env: typing.Mapping[str, str] | None = None,
    timeout: float = 300,
) -> subprocess.CompletedProcess:
    """Run the real ``forml`` CLI with ``FORML_HOME=home``; output captured as text.

    Note the ``forml`` CLI exits 0 on its own errors: callers must read the output. It also writes
    ``forml.log`` into its working directory (default: ``home``).
    """
    return subprocess.run(
        [*forml_command(), *args],
        cwd=cwd or home,
        env=forml_env(home, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
