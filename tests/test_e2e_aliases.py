"""End to end: a real ``forml application serve`` gateway whose descriptor serves ``Alias('forml-s3-demo',
'champion')`` follows ``forml-s3 alias set`` (promotion, then rollback) within its refresh interval, without a
restart; registry and inventory in a bucket on moto's HTTP server, models trained by the real ``forml`` CLI."""

import json
import time
import urllib.error
import uuid

import numpy
import pytest

from forml_s3 import demo
from forml_s3.cli.demo import Gateway, free_port

from .helpers import run_cli, s3_options
from .test_e2e import QUERY, reference

PROJECT = demo.PROJECT

DESCRIPTOR = f"""
from forml import application

from forml_s3.selector import Alias

application.setup(application.Generic({PROJECT!r}, selector=Alias({PROJECT!r}, 'champion', refresh=1)))
"""


@pytest.fixture(scope='module')
def trained(s3server, tmp_path_factory):
    """The demo project released and trained twice (generation 1 on batch 1, generation 2 on batches 1-2)."""
    root = tmp_path_factory.mktemp('e2e-aliases')
    bucket = s3server.create_bucket(f'e2e-alias-{uuid.uuid4().hex[:8]}')
    home, data, port = root / 'home', root / 'data.csv', free_port()
    demo.render_config(
        home,
        registry_url=f's3://{bucket}/registry',
        storage_options=s3server.storage_options(),
        inventory_url=f's3://{bucket}/apps',
        data=demo.write_data(data, batch=1),
        gateway_port=port,
    )
    source = demo.copy_project(root / 'project')
    demo.run_forml(home, 'project', 'release', cwd=source)
    demo.run_forml(home, 'model', 'train', PROJECT)
    demo.new_data(home, data, batch=2)
    demo.run_forml(home, 'model', 'train', PROJECT)
    listed = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
    assert listed.stdout.split() == ['1', '2'], listed.stderr
    descriptor = root / 'champion.py'
    descriptor.write_text(DESCRIPTOR)
    put = demo.run_forml(home, 'application', 'put', str(descriptor))
    assert 'Error' not in put.stdout + put.stderr, put.stderr
    return home, port, ['-u', f's3://{bucket}/registry', *s3_options(s3server, '-o')]


def alias_set(options, generation: int) -> None:
    done = run_cli('alias', 'set', PROJECT, 'champion', demo.RELEASE, str(generation), *options)
    assert done.exit_code == 0, done.output


def test_gateway_follows_promotion_and_rollback_without_restart(trained):
    home, port, options = trained
    alias_set(options, 1)
    first, second = reference(1, QUERY), reference(2, QUERY)
    assert not numpy.allclose(first, second, rtol=1e-3), 'the two generations must predict differently'
    with Gateway(demo, home) as gateway:
        url, body = f'http://127.0.0.1:{port}/{PROJECT}', json.dumps(demo.QUERY).encode()

        def served() -> list[float]:
            try:
                return [row['c0'] for row in json.loads(gateway.post(url, body))]
            except urllib.error.HTTPError as err:
                pytest.fail(f'{err}: {err.read()!r}\n{gateway.output()}')

        def served_soon(expected) -> list[float]:
            deadline = time.monotonic() + 30  # refresh=1 s in the descriptor
            while not numpy.allclose(predictions := served(), expected, rtol=1e-6) and time.monotonic() < deadline:
                time.sleep(0.3)
            return predictions

        numpy.testing.assert_allclose(served(), first, rtol=1e-6, err_msg=gateway.output())
        alias_set(options, 2)  # promote
        numpy.testing.assert_allclose(served_soon(second), second, rtol=1e-6, err_msg=gateway.output())
        alias_set(options, 1)  # roll back
        numpy.testing.assert_allclose(served_soon(first), first, rtol=1e-6, err_msg=gateway.output())
    history = run_cli('alias', 'history', PROJECT, 'champion', '--json', *options)
    assert [json.loads(line)['to']['generation'] for line in history.stdout.splitlines()] == [1, 2, 1]
