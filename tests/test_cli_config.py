"""The operator CLI reads the ForML config (issue 17, items 3 and 5), run as the real ``forml-s3`` command:

* with no URL every registry command works on the config's default registry, storage options included
  (``--registry NAME`` for another section), and an explicit URL still wins;
* ``ls`` and ``verify`` on a URL that holds no registry exit 2 with "No registry at URL" (unless
  ``--allow-empty``), so a cron check on a mistyped URL does not stay green.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from forml_s3 import demo
from forml_s3.registry import Registry
from forml_s3.runtime import retention

from .helpers import PROJECT, commit, s3_options

FORML_S3 = str(pathlib.Path(sys.executable).with_name('forml-s3'))


def run(*args: str, home: pathlib.Path | None = None) -> subprocess.CompletedProcess:
    """The real ``forml-s3`` with no AWS settings in its environment: only the config (or -o) can reach the
    server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith('AWS_')}
    if home is not None:
        env['FORML_HOME'] = str(home)
    return subprocess.run([FORML_S3, *args], env=env, capture_output=True, text=True, check=False, timeout=300)


def keys(s3server, bucket) -> list[tuple[str, str]]:
    return sorted((o['Key'], o['ETag']) for o in s3server.client().list_objects_v2(Bucket=bucket).get('Contents', []))


@pytest.fixture
def configured(s3server, bucket, package_factory, tmp_path):
    """Two registries in one bucket: ``main`` (the config's default, 3 generations) and ``other`` (section
    ``[REGISTRY.other]``), with a ForML home whose config holds both, storage options included."""
    made = {}
    for name, release in (('main', '0.1'), ('other', '0.2')):
        url = f's3://{bucket}/{name}'
        made[name] = Registry(url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'c', listing_ttl=0)
        made[name].push(package_factory(release))
        for generation in (1, 2, 3) if name == 'main' else (1,):
            commit(made[name], generation, release=release)
    home = tmp_path / 'home'
    path = demo.render_config(
        home, registry_url=made['main'].url, storage_options=s3server.storage_options(), staging=tmp_path / 'stg'
    )
    import toml  # a ForML dependency

    config = toml.loads(path.read_text())
    config['REGISTRY']['other'] = {**config['REGISTRY']['s3'], 'url': made['other'].url}
    path.write_text(toml.dumps(config))
    return home, made


def test_registry_commands_use_the_forml_config(configured, s3server, tmp_path):
    home, made = configured
    done = run('ls', home=home)
    assert done.returncode == 0 and done.stdout.startswith(made['main'].url), done.stderr
    assert PROJECT in done.stdout and 'generation 3' in done.stdout, done.stdout

    done = run('verify', '--quick', home=home)
    assert done.returncode == 0 and '0 problems' in done.stderr, done.stderr

    done = run('pin', PROJECT, '0.1', '1', '--note', 'audited', home=home)  # a URL-less pin: PROJECT comes first
    assert done.returncode == 0 and 'Pinned generation 1' in done.stdout, done.stderr

    done = run('retire', '--keep', '1', home=home)
    assert done.returncode == 0 and f'{PROJECT}-0.1: retired 2 (kept 1, 3; pinned 1)' in done.stdout, done.stderr
    assert [int(g) for g in made['main'].generations(PROJECT, '0.1')] == [1, 3]
    assert retention.pins(made['main']._store, made['main']._layout, PROJECT, '0.1') == [1]

    done = run('lifecycle', 'plan', home=home)
    assert done.returncode == 0, done.stderr
    assert {r['ID'].split(':')[1] for r in json.loads(done.stdout)['Rules']} == {'main/'}, done.stdout

    done = run('ls', '--json', '--registry', 'other', home=home)
    assert done.returncode == 0, done.stderr
    tree = json.loads(done.stdout)
    assert tree['url'] == made['other'].url and tree['projects'][0]['releases'][0]['release'] == '0.2'
    assert [int(g) for g in made['other'].generations(PROJECT, '0.2')] == [1]  # untouched by the retire above

    done = run('staging', 'ls', '--json', home=home)
    assert done.returncode == 0 and json.loads(done.stdout)['staging'] == str(tmp_path / 'stg'), done.stderr


def test_no_registry_at_url_exits_2(configured, s3server, bucket):
    home, _ = configured
    s3server.client().put_object(Bucket=bucket, Key='data/readings.csv', Body=b'a,b\n')
    before = keys(s3server, bucket)
    options = s3_options(s3server)
    typo = f's3://{bucket}/mian'
    done = run('verify', typo, *options, home=home)  # an explicit URL wins over the config's registry
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f'Error: No registry at {typo}: check the URL (and --registry), or pass --allow-empty for a registry '
        'nothing was pushed to yet\n'
    )
    assert '0 problems' not in done.stderr and done.stdout == ''
    done = run('ls', f's3://{bucket}/data', *options)
    assert done.returncode == 2 and f'No registry at s3://{bucket}/data (1 objects, none of a registry)' in done.stderr
    done = run('verify', typo, '--allow-empty', *options)
    assert done.returncode == 0 and '0 committed objects checked (sizes and sha256), 0 problems' in done.stderr
    assert keys(s3server, bucket) == before  # nothing written, nothing lost
