"""End to end with the real ``forml`` CLI in subprocesses: registry and inventory in a bucket on moto's HTTP server.

The ``forml`` CLI exits 0 even on its own errors, so every step is asserted on its output and on what is in
the bucket. Predictions are checked against the same pipeline fitted directly with scikit-learn.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
import uuid

import numpy
import pytest
from sklearn import linear_model, pipeline, preprocessing

from forml_s3 import demo
from forml_s3.cli.demo import Gateway, free_port, parse_predictions
from forml_s3.demo.lifetime import die_with_parent
from forml_s3.model import layout

PROJECT = demo.PROJECT


def reference_model(batch: int):
    """The demo pipeline fitted directly on the dataset after ``batch`` batches."""
    data = numpy.array(demo.rows(batch))
    return pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(random_state=0)).fit(
        data[:, :2], data[:, 2].astype(int)
    )


def reference(batch: int, features=None) -> numpy.ndarray:
    """Failure probabilities the demo model trained on ``batch`` batches gives (default: for every reading)."""
    if features is None:
        features = numpy.array(demo.rows(batch))[:, :2]
    return reference_model(batch).predict_proba(features)[:, 1]


QUERY = numpy.array([[r['Temperature'], r['Vibration']] for r in demo.QUERY])


@pytest.fixture(scope='module')
def world(s3server, tmp_path_factory):
    """A ForML home whose config selects the S3 registry and inventory, with the demo project released and
    trained twice (new data in between); what each step printed and the bucket's keys right after."""
    root = tmp_path_factory.mktemp('e2e')
    bucket = s3server.create_bucket(f'e2e-{uuid.uuid4().hex[:8]}')
    home, data = root / 'home', root / 'data.csv'
    port = free_port()
    demo.render_config(
        home,
        registry_url=f's3://{bucket}/registry',
        storage_options=s3server.storage_options(),
        inventory_url=f's3://{bucket}/apps',
        data=demo.write_data(data, batch=1),
        gateway_port=port,
    )
    source = demo.copy_project(root / 'project')
    steps = {'release': demo.run_forml(home, 'project', 'release', cwd=source)}
    steps['train1'] = demo.run_forml(home, 'model', 'train', PROJECT)
    steps['list1'] = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
    steps['apply1'] = demo.run_forml(home, 'model', 'apply', PROJECT)
    demo.new_data(home, data, batch=2)
    steps['train2'] = demo.run_forml(home, 'model', 'train', PROJECT)
    steps['projects'] = demo.run_forml(home, 'model', 'list')
    steps['releases'] = demo.run_forml(home, 'model', 'list', PROJECT)
    steps['generations'] = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
    steps['apply2'] = demo.run_forml(home, 'model', 'apply', PROJECT)
    keys = sorted(o['Key'] for o in s3server.client().list_objects_v2(Bucket=bucket).get('Contents', []))
    return types.SimpleNamespace(
        s3server=s3server, bucket=bucket, home=home, data=data, port=port, source=source, steps=steps, keys=keys
    )


def words(done: subprocess.CompletedProcess) -> list[str]:
    return done.stdout.split()


def test_release_and_trainings_are_listed(world):
    steps = world.steps
    assert words(steps['projects']) == [PROJECT], steps['projects'].stderr
    assert words(steps['releases']) == [demo.RELEASE], steps['releases'].stderr
    assert words(steps['list1']) == ['1'], steps['list1'].stderr
    assert words(steps['generations']) == ['1', '2'], steps['generations'].stderr


def test_apply_predicts_with_the_latest_generation(world):
    first, second = parse_predictions(world.steps['apply1'].stdout), parse_predictions(world.steps['apply2'].stdout)
    # apply reads every reading the feed has now: 60 after batch 1, 120 after batch 2
    numpy.testing.assert_allclose(first, reference(1), rtol=2e-5, atol=1e-8)
    numpy.testing.assert_allclose(second, reference(2), rtol=2e-5, atol=1e-8)
    assert not numpy.allclose(second[:60], first), 'generation 2 was trained on more data: it must differ'


def test_bucket_holds_whole_releases_and_generations(world):
    prefix = f'registry/{PROJECT}'
    keys = [k for k in world.keys if k.startswith('registry/')]
    assert f'registry/{PROJECT}.json' in keys
    assert f'{prefix}/releases/{demo.RELEASE}.json' in keys
    assert [k for k in keys if '/generations/' in k] == [
        f'{prefix}/{demo.RELEASE}/generations/1.json',
        f'{prefix}/{demo.RELEASE}/generations/2.json',
    ]
    packages = [k for k in keys if k.endswith('.4ml')]
    assert len(packages) == 1 and packages[0].startswith(f'{prefix}/{demo.RELEASE}/package-')
    stored = {k for k in keys if '/states/' in k}  # one object per state, or a pack of a commit's states
    client = world.s3server.client()
    named, sids = set(), set()
    for generation in (1, 2):
        marker = json.loads(
            client.get_object(Bucket=world.bucket, Key=f'{prefix}/{demo.RELEASE}/generations/{generation}.json')[
                'Body'
            ].read()
        )
        assert marker['generation'] == generation and len(marker['tag']['states']) == 2
        assert set(marker['states']) == set(marker['tag']['states'])
        sids |= set(marker['tag']['states'])
        named |= set(layout.Layout('registry').stored(PROJECT, demo.RELEASE, marker))
    assert len(sids) == 4, 'two stateful actors, two generations'
    assert named == stored  # every stored object is named by a marker, and every named one is stored
    release = json.loads(
        client.get_object(Bucket=world.bucket, Key=f'{prefix}/releases/{demo.RELEASE}.json')['Body'].read()
    )
    assert release['package']['size'] == client.head_object(Bucket=world.bucket, Key=packages[0])['ContentLength']


def post(port: int, application: str, rows) -> list[float]:
    request = urllib.request.Request(
        f'http://127.0.0.1:{port}/{application}',
        json.dumps(rows).encode(),
        {'Content-Type': 'application/json'},
        method='POST',
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return [row['c0'] for row in json.loads(response.read())]


def test_application_served_from_the_bucket_follows_retraining(world):
    home = world.home
    put = demo.run_forml(home, 'application', 'put', str(world.source / 'application.py'))
    assert 'Error' not in put.stdout + put.stderr, put.stderr
    listed = demo.run_forml(home, 'application', 'list')
    assert words(listed) == [PROJECT], listed.stderr
    keys = [o['Key'] for o in world.s3server.client().list_objects_v2(Bucket=world.bucket, Prefix='apps/')['Contents']]
    assert keys == [f'apps/{PROJECT}.py']

    with Gateway(demo, home) as gateway:
        body = json.dumps(demo.QUERY).encode()
        first = json.loads(gateway.post(f'http://127.0.0.1:{world.port}/{PROJECT}', body))
        numpy.testing.assert_allclose([r['c0'] for r in first], reference(2, QUERY), rtol=1e-6)

        with pytest.raises(urllib.error.HTTPError) as unknown:
            post(world.port, 'no-such-application', demo.QUERY)
        assert unknown.value.code == 404

        # new data, a new generation trained by another process: served without restarting the gateway
        demo.new_data(home, world.data, batch=3)
        trained = demo.run_forml(home, 'model', 'train', PROJECT)
        listed = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
        assert words(listed) == ['1', '2', '3'], trained.stderr
        expected = reference(3, QUERY)
        assert not numpy.allclose(expected, reference(2, QUERY), rtol=1e-3)
        deadline = time.monotonic() + 60  # the descriptor re-checks the registry every 2 s
        while True:
            served = post(world.port, PROJECT, demo.QUERY)
            if numpy.allclose(served, expected, rtol=1e-6) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        numpy.testing.assert_allclose(served, expected, rtol=1e-6, err_msg=gateway.output())


def test_invalid_descriptor_is_refused_by_put(world, tmp_path):
    broken = tmp_path / 'broken.py'
    broken.write_text('this is not python(\n')
    done = demo.run_forml(world.home, 'application', 'put', str(broken))
    assert "SyntaxError: '(' was never closed" in done.stdout + done.stderr
    keys = [o['Key'] for o in world.s3server.client().list_objects_v2(Bucket=world.bucket, Prefix='apps/')['Contents']]
    assert f'apps/{PROJECT}.py' in keys and len(keys) == 1


def test_missing_bucket_is_a_clear_error_in_the_cli(world, tmp_path):
    home = tmp_path / 'home'
    demo.render_config(
        home,
        registry_url='s3://no-such-bucket-e2e/registry',
        storage_options=world.s3server.storage_options(),
        inventory_url='s3://no-such-bucket-e2e/apps',
    )
    for args in (('model', 'list'), ('application', 'list')):
        done = demo.run_forml(home, *args)
        assert "Bucket 'no-such-bucket-e2e' does not exist" in done.stdout + done.stderr, done.stderr


def test_demo_command_runs_whole(tmp_path):
    """The README's demo command (``forml-s3 demo``), as a user runs it."""
    done = subprocess.run(
        [str(pathlib.Path(sys.executable).with_name('forml-s3')), 'demo', '--keep', str(tmp_path / 'kept')],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for expected in ('ok: release 0.1 committed', 'ok: generations 1 and 2 committed', '1  2', 'forml-s3-demo\n'):
        assert expected in done.stdout
    served = json.loads(next(line for line in done.stdout.splitlines() if line.startswith('[{"c0"')))
    numpy.testing.assert_allclose([r['c0'] for r in served], reference(2, QUERY), rtol=1e-6)
    assert 'generations/\n' in done.stdout and '2.json' in done.stdout
    kept = tmp_path / 'kept'
    assert (kept / 'home' / 'config.toml').exists()
    assert f'forml-s3 serve-s3 --state {kept}' in done.stdout  # the demo's last lines say how to use the home

    # the one documented command brings the bucket back on the kept config's port; forml works there, and what
    # is written while it serves is saved back when it stops and served again next time
    home = kept / 'home'
    with KeptEndpoint(kept) as first:
        assert 'bucket s3://forml-demo' in first.banner
        listed = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
        assert words(listed) == ['1', '2'], listed.stdout + listed.stderr
        aliased = subprocess.run(
            [*FORML_S3, 'alias', 'set', PROJECT, 'champion', demo.RELEASE, '2'],
            env=demo.forml_env(home), capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert aliased.returncode == 0, aliased.stdout + aliased.stderr
    assert 'Saved ' in first.output and 'objects to' in first.output, first.output
    with KeptEndpoint(kept):
        got = subprocess.run(
            [*FORML_S3, 'alias', 'get', PROJECT, 'champion'],
            env=demo.forml_env(home), capture_output=True, text=True, check=False, timeout=120,
        )  # fmt: skip
        assert got.returncode == 0 and f'champion -> {demo.RELEASE}#2' in got.stdout, got.stdout + got.stderr


FORML_S3 = [str(pathlib.Path(sys.executable).with_name('forml-s3'))]


class KeptEndpoint:
    """``forml-s3 serve-s3 --state DIR`` as a user runs it, stopped with Ctrl-C (SIGINT)."""

    def __init__(self, state: pathlib.Path):
        self.state = state
        self.banner = self.output = ''

    def __enter__(self) -> 'KeptEndpoint':
        self.process = subprocess.Popen(
            [*FORML_S3, 'serve-s3', '--state', str(self.state)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, start_new_session=True, preexec_fn=die_with_parent,
        )  # fmt: skip
        self.banner = self.process.stdout.readline()
        assert 'Embedded S3 endpoint' in self.banner, self.banner + self.process.stdout.read()
        return self

    def __exit__(self, *exc) -> None:
        os.killpg(self.process.pid, signal.SIGINT)
        self.output = self.process.communicate(timeout=60)[0]


def test_full_path_providers_need_no_path(world, tmp_path):
    """``provider = "forml_s3.registry:Registry"`` (and the inventory's) work without ``[REGISTRY] path``."""
    import toml

    home = tmp_path / 'home'
    config = demo.render_config(
        home,
        registry_url=f's3://{world.bucket}/registry',
        storage_options=world.s3server.storage_options(),
        inventory_url=f's3://{world.bucket}/apps',
    )
    settings = toml.loads(config.read_text())
    for section, provider in (
        ('REGISTRY', 'forml_s3.registry:Registry'),
        ('INVENTORY', 'forml_s3.inventory:Inventory'),
    ):
        del settings[section]['path']
        settings[section]['s3']['provider'] = provider
    config.write_text(toml.dumps(settings))

    listed = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
    prefix = f'registry/{PROJECT}/{demo.RELEASE}/generations/'
    stored = world.s3server.client().list_objects_v2(Bucket=world.bucket, Prefix=prefix)['Contents']
    committed = sorted(int(o['Key'][len(prefix) : -len('.json')]) for o in stored)
    assert committed[:2] == [1, 2] and sorted(int(w) for w in words(listed)) == committed, listed.stderr
    put = demo.run_forml(home, 'application', 'put', str(demo.APPLICATION))
    applications = demo.run_forml(home, 'application', 'list')
    assert words(applications) == [PROJECT], put.stdout + put.stderr + applications.stderr
