"""A real ForML project trained and applied on a Dask cluster of worker processes, registry in a bucket.

The real ``forml`` CLI runs ForML's Dask runner (``forml.provider.runner.dask``) with ``scheduler =
"distributed"`` and the ``scheduler-address`` of a :class:`distributed.LocalCluster` started here: two worker
processes, one thread each. ForML's runner passes the section's keys to ``dask.config.set`` and connects with
``distributed.Client()``, which reads ``scheduler-address`` from that config (it would start a private cluster
if the key were wrong: hence the checks that *our* workers ran the tasks and committed the generation).

The registry is on the S3 endpoint over HTTP, and its staging path is one directory shared by the CLI and the
workers (they receive the pickled registry). The ``forml`` CLI exits 0 on its own errors: every step is
checked by its output and by what is in the bucket. Predictions are compared with the same pipeline fitted
directly with scikit-learn.
"""

import json
import os
import pathlib
import sys
import types
import uuid

import numpy
import pytest
from sklearn import linear_model, pipeline, preprocessing

from forml_s3 import demo
from forml_s3.cli.demo import parse_predictions
from forml_s3.model import layout
from forml_s3.runtime import staging

from . import embedded

PROJECT = demo.PROJECT


def reference() -> numpy.ndarray:
    """Failure probabilities of the demo pipeline fitted directly on batch 1, for every reading of batch 1."""
    data = numpy.array(demo.rows(1))
    model = pipeline.make_pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression(random_state=0))
    return model.fit(data[:, :2], data[:, 2].astype(int)).predict_proba(data[:, :2])[:, 1]


def executed(dask_worker) -> int:
    """Tasks a worker has run (called in the worker by ``Client.run``)."""
    return dask_worker.state.executed_count


def print_to(directory: str) -> None:
    """Send a worker's ``print`` to ``<directory>/<pid>.out`` (called in the worker by ``Client.run``).

    ForML's ``stdout`` sink prints in the process that runs the sink's task: a worker, not the forml CLI.
    """
    sys.stdout = open(os.path.join(directory, f'{os.getpid()}.out'), 'a', buffering=1)  # noqa: SIM115 - kept open


@pytest.fixture(scope='module')
def world(s3server, tmp_path_factory):
    """The demo project released, trained and applied through the forml CLI on a 2-process LocalCluster."""
    distributed = pytest.importorskip('distributed')
    root = tmp_path_factory.mktemp('dask')
    bucket = s3server.create_bucket(f'dask-{uuid.uuid4().hex[:8]}')
    home, shared = root / 'home', root / 'shared-staging'
    # released from a developer's machine (its own cache): the cluster's first mount has to download the package
    developer = root / 'developer'
    demo.render_config(
        developer,
        registry_url=f's3://{bucket}/registry',
        storage_options=s3server.storage_options(),
        cache_dir=developer / 'cache',
    )
    counting = isinstance(s3server, embedded.Server)
    with pytest.MonkeyPatch.context() as env:
        # the workers inherit it: ForML there reads this home, not ~/.forml (its feed caches query results there)
        env.setenv('FORML_HOME', str(home))
        with (
            distributed.LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                host='127.0.0.1',
                dashboard_address=None,
                worker_dashboard_address=None,
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            workers = client.run(os.getpid)
            printed = root / 'printed'
            printed.mkdir()
            client.run(print_to, str(printed))
            demo.render_config(
                home,
                registry_url=f's3://{bucket}/registry',
                storage_options=s3server.storage_options(),
                staging=shared,
                data=demo.write_data(root / 'data.csv', batch=1),
                runner={'provider': 'dask', 'scheduler': 'distributed', 'scheduler-address': cluster.scheduler_address},
            )
            source = demo.copy_project(root / 'project')
            steps = {'release': demo.run_forml(developer, 'project', 'release', cwd=source)}
            if counting:
                s3server.reset_counts()
            steps['train'] = demo.run_forml(home, 'model', 'train', PROJECT)
            steps['list'] = demo.run_forml(home, 'model', 'list', PROJECT, demo.RELEASE)
            steps['apply'] = demo.run_forml(home, 'model', 'apply', PROJECT)
            requests = list(s3server.requests) if counting else None
            tasks = client.run(executed)
            after = client.run(os.getpid)  # a worker the nanny restarted (seen under heavy load) has a new address
    keys = sorted(o['Key'] for o in s3server.client().list_objects_v2(Bucket=bucket).get('Contents', []))
    return types.SimpleNamespace(
        s3server=s3server,
        bucket=bucket,
        shared=shared,
        steps=steps,
        keys=keys,
        workers=workers,
        after=after,
        tasks=tasks,
        requests=requests,
        printed={int(p.stem): p.read_text() for p in sorted(printed.glob('*.out'))},
    )


def output(world) -> str:
    return '\n'.join(f'--- {name}\n{done.stdout}\n{done.stderr[-2000:]}' for name, done in world.steps.items())


def test_trained_generation_is_listed_and_in_the_bucket(world):
    assert world.steps['list'].stdout.split() == ['1'], output(world)
    prefix = f'registry/{PROJECT}/{demo.RELEASE}'
    assert [k for k in world.keys if '/generations/' in k] == [f'{prefix}/generations/1.json']
    marker = json.loads(
        world.s3server.client().get_object(Bucket=world.bucket, Key=f'{prefix}/generations/1.json')['Body'].read()
    )
    assert len(marker['tag']['states']) == 2, 'two stateful actors'
    # one object per state, or one pack when the worker that wrote them also committed them within a second
    stored = {k for k in world.keys if '/states/' in k}
    assert set(layout.Layout('registry').stored(PROJECT, demo.RELEASE, marker)) == stored


def test_the_cluster_workers_ran_the_pipeline_and_committed_it(world):
    """Our two worker processes (not the CLI, not a private cluster) ran the tasks and closed the generation."""
    assert len(set(world.workers.values())) == 2
    assert set(world.tasks) == set(world.after) and sum(world.tasks.values()) > 0, (world.tasks, world.workers)
    marker = json.loads(
        world.s3server.client()
        .get_object(Bucket=world.bucket, Key=f'registry/{PROJECT}/{demo.RELEASE}/generations/1.json')['Body']
        .read()
    )
    pid = int(marker['writer'].rsplit(':', 1)[1])
    assert pid in {*world.workers.values(), *world.after.values()}, (marker['writer'], world.workers, world.after)


def test_apply_on_the_cluster_predicts_what_the_pipeline_computes_locally(world):
    """The stdout sink ran on a worker: its print is there, not in the CLI's output."""
    assert set(world.printed) == set(world.workers.values())
    printing = {pid: text for pid, text in world.printed.items() if text.strip()}
    assert len(printing) == 1, (world.printed, output(world))
    predictions = parse_predictions(next(iter(printing.values())))
    assert len(predictions) == demo.BATCH_ROWS, (printing, output(world))
    numpy.testing.assert_allclose(predictions, reference(), rtol=2e-5, atol=1e-8)


def test_staging_holds_one_tree_installed_from_one_download(world):
    """Train and apply both mounted the release into the shared staging path: one tree, one package GET."""
    installed = staging.staged(world.shared)
    assert [(r['project'], r['release']) for r in installed] == [(PROJECT, demo.RELEASE)]
    assert staging.leftovers(world.shared) == []
    tree = pathlib.Path(installed[0]['path'])
    assert tree.parent == world.shared / PROJECT  # <release>-<sha256[:16]>
    assert (tree / 'forml_s3_demo' / 'pipeline.py').is_file()
    if world.requests is None:
        pytest.skip(f'request counts need the embedded moto server ({world.s3server})')
    package_gets = [r for r in world.requests if r.method == 'GET' and r.path.endswith('.4ml')]
    assert len(package_gets) == 1, package_gets
