"""Test helpers: building real ForML packages and tags, running the ``forml-s3`` CLI in process."""

import datetime
import json
import os
import pathlib
import uuid

import pytest
from click.testing import CliRunner
from forml import project as prj
from forml.io import asset

from forml_s3.cli import main

PROJECT = 'demo-proj'

S3_BACKENDS = ('s3',) if os.environ.get('FORML_S3_TEST_ENDPOINT') else ('s3', 'seaweedfs')
"""The S3 servers the registry contract runs on: the session's endpoint (moto, or LocalStack in its own run, where
SeaweedFS is not started) and SeaweedFS."""
every_s3_backend = pytest.mark.parametrize('s3backend', S3_BACKENDS, indirect=True)
"""Runs a test on each of :data:`S3_BACKENDS` (its ``s3backend`` fixture is that server)."""


class PackageFactory:
    """Real ``.4ml`` packages of a tiny project, one per version."""

    def __init__(self, root: pathlib.Path):
        self.root = root

    def __call__(self, version: str, project: str = PROJECT, payload: str = '', data: bytes = b'') -> prj.Package:
        source = self.root / f'{project}-{version}-{uuid.uuid4().hex[:6]}'
        (source / 'demo').mkdir(parents=True)
        (source / 'demo' / '__init__.py').write_text(f'VERSION = {version!r}\nPAYLOAD = {payload!r}\n')
        if data:
            (source / 'demo' / 'data.bin').write_bytes(data)
        package = source.with_name(f'{source.name}.4ml')  # with_suffix would cut at the version's dot
        return prj.Package.create(source, prj.Manifest(project, version, 'demo'), package)


def tag(states=(), ordinal=None) -> asset.Tag:
    """A realistic training tag (naive UTC timestamp like ForML's, optional ordinal)."""
    return asset.Tag(
        training=asset.Tag.Training(timestamp=datetime.datetime(2026, 11, 24, 3, 4, 5, 678901), ordinal=ordinal),
        tuning=asset.Tag.Tuning(timestamp=datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC), score=0.75),
        states=list(states),
    )


def commit(registry, generation: int, payloads=(b'a', b'b'), project=PROJECT, release='0.1', ordinal=None):
    """Write the payloads as states and close them as the given generation; returns (tag, sids)."""
    sids = [uuid.uuid4() for _ in payloads]
    for sid, payload in zip(sids, payloads, strict=True):
        registry.write(project, release, sid, payload)
    committed = tag(sids, ordinal)
    registry.close(project, release, generation, committed)
    return committed, sids


def s3_options(server, flag: str = '--option') -> list[str]:
    """The CLI storage options reaching the test server."""
    args = []
    for key, value in server.storage_options().items():
        args += [flag, f'{key}={json.dumps(value) if not isinstance(value, str) else value}']
    return args


def run_cli(*args: str):
    """The ``forml-s3`` CLI in process (stdout and stderr apart)."""
    return CliRunner().invoke(main, list(args), catch_exceptions=False)
