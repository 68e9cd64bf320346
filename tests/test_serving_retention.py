"""A real gateway (``forml application serve``) keeps answering while its generation is retired and deleted.

ForML's own ``Instance`` equality and hash re-list the generation and raise ``Invalid level key`` once it is no
longer listed; the gateway hashes the selected instance on every request. Before the fix, every request after
``forml-s3 retire`` got HTTP 400 and the gateway never recovered.

To make "retired and deleted while still the pick" deterministic, the gateway reaches S3 through a proxy that
answers its listings of the release's generations with the first answer it got (generation 1 only) until the
test thaws it: meanwhile generation 2 is trained, generation 1 retired (``forml-s3 retire --keep 1``) and its
objects deleted as the lifecycle rule would, and the gateway keeps serving generation 1 from memory. After the
thaw its first listing shows generation 1 gone and generation 2 live at once - a refresh coming as late as it
can, with no timing involved.
"""

import json
import threading
import time
import typing
import urllib.error
import uuid

import numpy
import pytest

from forml_s3 import demo
from forml_s3.cli.demo import Gateway, free_port

from .helpers import run_cli, s3_options
from .proxy import Proxy, listing
from .test_e2e import QUERY, reference

PROJECT = demo.PROJECT
REFRESH = 1


class Poster(threading.Thread):
    """POSTs the demo query every few tenths of a second; records (time, status, predictions or error)."""

    def __init__(self, gateway: Gateway, port: int):
        super().__init__(daemon=True)
        self.gateway, self.url = gateway, f'http://127.0.0.1:{port}/{PROJECT}'
        self.answers: list[tuple[float, int, typing.Any]] = []
        self.done = threading.Event()

    def run(self) -> None:
        body = json.dumps(demo.QUERY).encode()
        while not self.done.is_set():
            try:
                served = [row['c0'] for row in json.loads(self.gateway.post(self.url, body, timeout=10))]
                self.answers.append((time.monotonic(), 200, served))
            except urllib.error.HTTPError as err:
                self.answers.append((time.monotonic(), err.code, err.read().decode(errors='replace')))
            except OSError as err:
                self.answers.append((time.monotonic(), 0, repr(err)))
            time.sleep(0.3)


def test_gateway_serves_across_retirement_and_expiry_of_its_generation(s3server, tmp_path):
    bucket = s3server.create_bucket(f'serve-{uuid.uuid4().hex[:8]}')
    url = f's3://{bucket}/registry'
    data = demo.write_data(tmp_path / 'data.csv', batch=1)
    trainer, server, port = tmp_path / 'trainer', tmp_path / 'gateway', free_port()
    inventory = f's3://{bucket}/apps'
    demo.render_config(
        trainer, registry_url=url, storage_options=s3server.storage_options(), inventory_url=inventory, data=data
    )
    proxy = Proxy(s3server.endpoint, freeze=listing(f'registry/{PROJECT}/{demo.RELEASE}/generations/'))
    through_proxy = s3server.storage_options(endpoint_url=proxy.endpoint)
    demo.render_config(
        server, registry_url=url, storage_options=through_proxy, inventory_url=inventory, data=data, gateway_port=port
    )
    source = demo.copy_project(tmp_path / 'project')
    (source / 'application.py').write_text(
        'from forml import application\n'
        'from forml_s3.selector import Refreshing\n'
        f'application.setup(application.Generic({PROJECT!r}, selector=Refreshing({PROJECT!r}, refresh={REFRESH})))\n'
    )
    demo.run_forml(trainer, 'project', 'release', cwd=source)
    trained = demo.run_forml(trainer, 'model', 'train', PROJECT)
    put = demo.run_forml(trainer, 'application', 'put', str(source / 'application.py'))
    assert 'Error' not in put.stdout + put.stderr, trained.stderr + put.stderr
    client = s3server.client()

    with proxy, Gateway(demo, server) as gateway:
        # (this first request also waits for the gateway to listen)
        # a descriptor exiting at import (put behind forml's back: `forml application put` would import it) is
        # a clear error for its own requests and takes nothing else down
        client.put_object(Bucket=bucket, Key='apps/exits.py', Body=b'import sys\nsys.exit(3)\n')
        with pytest.raises(urllib.error.HTTPError) as exits:
            gateway.post(f'http://127.0.0.1:{port}/exits', json.dumps(demo.QUERY).encode())
        assert exits.value.code < 500 and 'SystemExit' in exits.value.read().decode(), gateway.output()
        first = json.loads(gateway.post(f'http://127.0.0.1:{port}/{PROJECT}', json.dumps(demo.QUERY).encode()))
        numpy.testing.assert_allclose([r['c0'] for r in first], reference(1, QUERY), rtol=1e-6)
        assert proxy.frozen is not None, 'the gateway listed the generations through the proxy'
        poster = Poster(gateway, port)
        poster.start()
        try:
            demo.new_data(trainer, data, batch=2)
            trained = demo.run_forml(trainer, 'model', 'train', PROJECT)
            options = s3_options(s3server)
            retired = run_cli('retire', url, '--keep', '1', *options)
            assert retired.exit_code == 0 and 'retired 1 ' in retired.stdout, retired.output + trained.stderr
            # what the lifecycle rule expiring retired generations would delete, as its preview lists it
            previewed = run_cli('lifecycle', 'preview', url, '--planned', '--at', '2100-01-01', '--json', *options)
            assert previewed.exit_code == 0, previewed.output
            rule = next(r for r in json.loads(previewed.stdout)['rules'] if r['id'].endswith(':retired'))
            doomed = [t['key'] for t in rule['due']]
            assert any('/retired/1.json' in k for k in doomed) and any('/states/' in k for k in doomed), doomed
            for key in doomed:
                client.delete_object(Bucket=bucket, Key=key)
            deleted, replayed = time.monotonic(), proxy.replayed
            wait_for(lambda: proxy.replayed > replayed and len([a for a in poster.answers if a[0] > deleted]) >= 3)
            proxy.thaw.set()  # the gateway's next listing is fresh: generation 1 gone, generation 2 live
            expected = reference(2, QUERY)
            wait_for(lambda: poster.answers[-1][1] != 200 or numpy.allclose(poster.answers[-1][2], expected))
            time.sleep(2)  # a few more requests on the new pick (or failures, reported below)
        finally:
            poster.done.set()
            poster.join(30)
        output = gateway.output()

    failed = [a for a in poster.answers if a[1] != 200]
    assert not failed, f'{failed[:3]}\n{output}'
    old = reference(1, QUERY)
    assert [a for a in poster.answers if a[0] > deleted and numpy.allclose(a[2], old)], 'served from memory meanwhile'
    assert numpy.allclose(poster.answers[-1][2], expected), output
    assert all(numpy.allclose(a[2], old) or numpy.allclose(a[2], expected) for a in poster.answers)


def wait_for(condition: typing.Callable[[], bool], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, 'timed out'
        time.sleep(0.2)
