"""A real gateway (``forml application serve``) keeps answering while its generation is retired and deleted.

ForML's own ``Instance`` equality and hash re-list the generation and raise ``Invalid level key`` once it is no
longer listed; the gateway hashes the selected instance on every request. Before the fix, every request after
``forml-s3 retire`` got HTTP 400 and the gateway never recovered.

To make "retired and deleted while still the pick" deterministic, the gateway's registry reuses its listings for
``LISTING_TTL`` seconds, and everything after its first pick (committing generation 2, retiring generation 1,
deleting what the lifecycle rule would delete) happens inside one such window, so the gateway's first fresh
listing sees generation 1 gone and generation 2 live at once - the worst case of a refresh coming late. To keep
that window short, generation 2 is trained (by the real ``forml model train``) before the gateway starts, and
its commit marker is parked outside the registry until the window opens: putting it back is the commit.
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
from .test_e2e import QUERY, reference

PROJECT = demo.PROJECT
LISTING_TTL = 40.0
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
    common = dict(registry_url=url, storage_options=s3server.storage_options(), inventory_url=f's3://{bucket}/apps')
    trainer = tmp_path / 'trainer'
    demo.render_config(trainer, data=data, **common)
    port = free_port()
    server = tmp_path / 'gateway'
    demo.render_config(server, data=data, gateway_port=port, registry={'listing_ttl': LISTING_TTL}, **common)
    source = demo.copy_project(tmp_path / 'project')
    (source / 'application.py').write_text(
        'from forml import application\n'
        'from forml_s3.selector import Refreshing\n'
        f'application.setup(application.Generic({PROJECT!r}, selector=Refreshing({PROJECT!r}, refresh={REFRESH})))\n'
    )
    demo.run_forml(trainer, 'project', 'release', cwd=source)
    trained = demo.run_forml(trainer, 'model', 'train', PROJECT)
    demo.new_data(trainer, data, batch=2)
    demo.run_forml(trainer, 'model', 'train', PROJECT)
    client = s3server.client()
    marker = f'registry/{PROJECT}/{demo.RELEASE}/generations/2.json'
    client.copy_object(Bucket=bucket, Key='parked/2.json', CopySource={'Bucket': bucket, 'Key': marker})
    client.delete_object(Bucket=bucket, Key=marker)
    put = demo.run_forml(trainer, 'application', 'put', str(source / 'application.py'))
    assert 'Error' not in put.stdout + put.stderr, trained.stderr + put.stderr

    with Gateway(demo, server) as gateway:
        # (this first request also waits for the gateway to listen)
        # a descriptor exiting at import (put behind forml's back: `forml application put` would import it) is
        # a clear error for its own requests and takes nothing else down
        client.put_object(Bucket=bucket, Key='apps/exits.py', Body=b'import sys\nsys.exit(3)\n')
        with pytest.raises(urllib.error.HTTPError) as exits:
            gateway.post(f'http://127.0.0.1:{port}/exits', json.dumps(demo.QUERY).encode())
        assert exits.value.code < 500 and 'SystemExit' in exits.value.read().decode(), gateway.output()
        started = time.monotonic()  # the gateway listens; it lists the registry during this first request
        first = json.loads(gateway.post(f'http://127.0.0.1:{port}/{PROJECT}', json.dumps(demo.QUERY).encode()))
        window = started + LISTING_TTL  # the gateway's listings are not fresh again before this
        numpy.testing.assert_allclose([r['c0'] for r in first], reference(1, QUERY), rtol=1e-6)
        poster = Poster(gateway, port)
        poster.start()
        try:
            client.copy_object(Bucket=bucket, Key=marker, CopySource={'Bucket': bucket, 'Key': 'parked/2.json'})
            # the real commands, in this process (no interpreter start-up inside the window)
            options = s3_options(s3server)
            retired = run_cli('retire', url, '--keep', '1', *options)
            assert retired.exit_code == 0 and 'retired 1 ' in retired.stdout, retired.output
            # what the lifecycle rule expiring retired generations would delete, as its preview lists it
            previewed = run_cli(
                'lifecycle', 'preview', url, '--planned', '--at', '2100-01-01', '--json', *s3_options(s3server)
            )
            assert previewed.exit_code == 0, previewed.output
            rule = next(r for r in json.loads(previewed.stdout)['rules'] if r['id'].endswith(':retired'))
            doomed = [t['key'] for t in rule['due']]
            assert any('/retired/1.json' in k for k in doomed) and any('/states/' in k for k in doomed), doomed
            for key in doomed:
                client.delete_object(Bucket=bucket, Key=key)
            deleted = time.monotonic()
            assert deleted < window - 2, f'retired and deleted {deleted - started:.0f}s after the first pick: too slow'
            expected = reference(2, QUERY)
            deadline = time.monotonic() + LISTING_TTL + 60
            while time.monotonic() < deadline:
                if poster.answers and poster.answers[-1][1] == 200 and numpy.allclose(poster.answers[-1][2], expected):
                    break
                time.sleep(0.5)
            time.sleep(2)  # a few more requests on the new pick
        finally:
            poster.done.set()
            poster.join(30)
        output = gateway.output()

    failed = [a for a in poster.answers if a[1] != 200]
    assert not failed, f'{failed[:3]}\n{output}'
    old = reference(1, QUERY)
    served_old_after_deletion = [a for a in poster.answers if deleted < a[0] < window - 1 and numpy.allclose(a[2], old)]
    assert served_old_after_deletion, 'the retired, deleted generation stayed the pick until a fresh listing'
    assert numpy.allclose(poster.answers[-1][2], expected), output
    assert all(numpy.allclose(a[2], old) or numpy.allclose(a[2], expected) for a in poster.answers)
    assert len(poster.answers) > 20
