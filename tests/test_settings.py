"""Configuration typos (issue 17, item 2): one line naming the key, the accepted ones and the nearest, before any
request - through the real ``forml`` CLI (which prints a ForML error and exits 0, see docs/forml.md) and the real
``forml-s3`` CLI (exit 2) - and the bucket is left exactly as it was."""

import pathlib
import subprocess
import sys
import uuid

import forml
import pytest
import toml

from forml_s3 import demo, settings
from forml_s3.inventory import Inventory
from forml_s3.registry import Registry

from .helpers import PROJECT, commit

CASES = [
    ({'stagin': '/x'}, None, r"Unknown forml-s3 registry setting 'stagin': did you mean 'staging'\? \(accepted: url, "),
    ({'url': None}, None, 'Missing forml-s3 registry setting url: add it'),
    ({'cache_size': '10GB'}, None, "Invalid forml-s3 registry setting cache_size = '10GB': expected a whole number"),
    ({'tag_uncommitted': 'no'}, None, "tag_uncommitted = 'no': expected true or false"),
    ({'listing_ttl': True}, None, 'listing_ttl = True: expected a number'),
    ({'storage_options': 'x'}, None, "storage_options = 'x': expected a table"),
    ({}, {'regoin': 'x'}, r"Unknown storage option 'regoin': did you mean 'region'\? \(accepted: anon, "),
    ({}, {'profle': 'x'}, "did you mean 'profile'"),
    ({}, {'region': 3}, 'Invalid storage option region = 3: expected a string'),
    ({}, {'max_attempts': 'three'}, "max_attempts = 'three': expected a whole number"),
    ({}, {'connect_retries': 'two'}, "connect_retries = 'two': expected a whole number"),
    ({}, {'anon': 'yes'}, "anon = 'yes': expected true or false"),
    ({}, {'client_kwargs': 'eu'}, "client_kwargs = 'eu': expected a table"),
    ({}, {'retry_mode': 'standrd'}, r"retry_mode = 'standrd': did you mean 'standard'\? \(expected one of legacy, "),
]


@pytest.mark.parametrize('settings_, options, message', CASES)
def test_each_typo_is_one_line(settings_, options, message, tmp_path):
    kwargs = {'url': 's3://bucket/forml', 'cache_dir': tmp_path, **settings_}
    if options is not None:
        kwargs['storage_options'] = options
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    with pytest.raises(forml.InvalidError, match=message) as err:
        Registry(**kwargs)
    assert isinstance(err.value, settings.Invalid) and '\n' not in str(err.value)


def test_good_settings_pass_and_the_inventory_is_checked_too(tmp_path):
    options = {'profile': 'p', 'client_kwargs': {'region_name': 'eu-west-1'}, 'anon': False, 'max_attempts': 3,
               'connect_timeout': 1.5, 'connect_retries': 0, 'retry_mode': 'adaptive',
               'use_listings_cache': False}  # fmt: skip
    Registry('s3://bucket/forml', storage_options=options, cache_dir=str(tmp_path), listing_ttl=0, staging=tmp_path)
    with pytest.raises(settings.Invalid, match="Unknown forml-s3 inventory setting 'urll': did you mean 'url'"):
        Inventory(urll='s3://bucket/apps')


@pytest.fixture
def released(s3server, bucket, package_factory, tmp_path):
    """A registry holding one release with one generation; its bucket's keys."""
    url = f's3://{bucket}/registry'
    registry = Registry(url, storage_options=s3server.storage_options(), cache_dir=tmp_path / 'cache')
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    return url


def keys(s3server, bucket) -> list[tuple[str, str]]:
    return sorted((o['Key'], o['ETag']) for o in s3server.client().list_objects_v2(Bucket=bucket).get('Contents', []))


def home_with(s3server, url, root, registry=None, storage_options=None, drop=()):
    """A ForML home whose [REGISTRY.s3] section has the given extra settings (``drop``: keys taken out)."""
    home = root / f'home-{uuid.uuid4().hex[:6]}'
    path = demo.render_config(
        home, registry_url=url, storage_options={**s3server.storage_options(), **(storage_options or {})},
        registry=registry,
    )  # fmt: skip
    config = toml.loads(path.read_text())
    for key in drop:
        del config['REGISTRY']['s3'][key]
    path.write_text(toml.dumps(config))
    return home


def test_forml_and_forml_s3_say_which_setting_is_wrong(s3server, bucket, released, tmp_path):
    before = keys(s3server, bucket)
    typo = home_with(s3server, released, tmp_path, registry={'stagin': str(tmp_path / 'staging')})
    no_url = home_with(s3server, released, tmp_path, drop=('url',))
    option = home_with(s3server, released, tmp_path, storage_options={'regoin': 'eu-west-1'})
    for home, message in (
        (typo, "Unknown forml-s3 registry setting 'stagin' in [REGISTRY.s3] of {}: did you mean 'staging'? (accepted:"),
        (no_url, 'Missing forml-s3 registry setting url in [REGISTRY.s3] of {}: add it (e.g. url = "s3://'),
        (option, "Unknown storage option 'regoin' in [REGISTRY.s3] of {}: did you mean 'region'? (accepted: anon, "),
    ):
        done = demo.run_forml(home, 'model', 'list', timeout=300)
        assert done.returncode == 0, done.stderr  # ForML's CLI prints its errors and exits 0
        assert done.stderr.strip().startswith(message.format(home / 'config.toml')), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1 and done.stdout == '', done.stderr

    forml_s3 = [str(pathlib.Path(sys.executable).with_name('forml-s3'))]
    done = subprocess.run(
        [*forml_s3, 'ls'], env=demo.forml_env(option), capture_output=True, text=True, check=False, timeout=300
    )  # the same section, read by the operator CLI (no URL: the ForML config's registry)
    assert done.returncode == 2, done.stderr
    where = option / 'config.toml'
    assert done.stderr.startswith(f"Error: Unknown storage option 'regoin' in [REGISTRY.s3] of {where}: did you mean")
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    args = [*forml_s3, 'ls', released, '-o', 'max_attempts=three']
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    assert done.returncode == 2 and done.stderr == (
        "Error: Invalid storage option max_attempts = 'three': expected a whole number\n"
    ), done.stderr
    assert keys(s3server, bucket) == before  # nothing written, nothing lost
    assert [str(p) for p in Registry(released, storage_options=s3server.storage_options()).projects()] == [PROJECT]
