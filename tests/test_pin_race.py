"""Pin and retire racing as real ``forml-s3`` processes: never a generation both pinned and retired.

Each interleaving is forced, not timed: one process stops at a chosen storage call (``tests/hold.py``) while the
other runs, then goes on. Run on local disk and on moto's S3 server over HTTP.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

from forml_s3.model import layout
from forml_s3.registry import Registry

from . import conftest
from .helpers import PROJECT, commit, s3_options

ROOT = pathlib.Path(__file__).parent.parent


@pytest.fixture(params=['file', 's3'])
def world(request, tmp_path, package_factory):
    """A registry holding generations 1 and 2 of demo-proj 0.1, and the CLI arguments reaching it."""
    s3server = request.getfixturevalue('s3server') if request.param == 's3' else None
    url, options = conftest.registry_url(request.param, tmp_path, request)
    registry = Registry(url, storage_options=options, cache_dir=tmp_path / 'cache', listing_ttl=0)
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    commit(registry, 2)
    registry.s3server = s3server
    registry.cli = [*(s3_options(s3server) if s3server else [])]
    return registry


def cli(world, tmp_path: pathlib.Path, *args: str, hold: dict | None = None, name: str = '') -> subprocess.Popen:
    """``forml-s3 ARGS --option ...`` as its own process, held at ``hold`` (see tests/hold.py) if given; it signals
    ``ready<name>`` there and waits for ``go<name>``."""
    env = dict(os.environ)
    if hold:
        signals = {'ready': str(tmp_path / f'ready{name}'), 'go': str(tmp_path / f'go{name}')}
        env['FORML_S3_HOLD'] = json.dumps({**hold, **signals})
    command = [sys.executable, '-m', 'tests.hold', *args, *world.cli]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def held(proc: subprocess.Popen, tmp_path: pathlib.Path, name: str = '') -> None:
    """Wait until the process stands at its held call."""
    deadline = time.monotonic() + 120
    while not (tmp_path / f'ready{name}').exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, 'the held call was never reached'
        time.sleep(0.02)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def retire_args(world) -> list[str]:
    return ['retire', world.url, '--keep', '1', '--project', PROJECT, '--release', '0.1']


def pinned(world) -> list[int]:
    return sorted(int(e.name.removesuffix('.json')) for e in world._store.listdir(world._layout.pinned(PROJECT, '0.1')))


def tags(world, generation: int, retired: bool = False) -> list[str]:
    """The retired-tag value of each object of a generation (S3; '' where untagged), from its marker."""
    marker_key = (world._layout.retired_marker if retired else world._layout.generation_marker)(
        PROJECT, '0.1', generation
    )
    marker = json.loads(world._store.read(marker_key))
    keys = world._layout.stored(PROJECT, '0.1', marker)
    return [world._store.get_tags(key).get(layout.RETIRED_TAG[0], '') for key in keys]


def assert_live_and_pinned(world) -> None:
    assert [int(g) for g in world.generations(PROJECT, '0.1')] == [1, 2]
    assert pinned(world) == [1]
    assert not world._store.exists(world._layout.retired_marker(PROJECT, '0.1', 1))
    tag = world.open(PROJECT, '0.1', 1)
    assert [world.read(PROJECT, '0.1', 1, sid) for sid in tag.states] == [b'a', b'b']
    if world.s3server:  # nothing of generation 1 tagged for expiry
        assert set(tags(world, 1)) == {''}


def test_a_pin_between_the_retires_listing_and_its_tombstone_keeps_the_generation(world, tmp_path):
    """The issue's interleaving: retire lists (generation 1 unpinned), pin succeeds, then retire goes on."""
    retire = cli(world, tmp_path, *retire_args(world), hold={'method': 'write', 'contains': '/retired/'})
    held(retire, tmp_path)
    pin = finish(cli(world, tmp_path, 'pin', world.url, PROJECT, '0.1', '1'))
    assert pin[0] == 0 and 'Pinned generation 1 of demo-proj-0.1' in pin[1], pin
    (tmp_path / 'go').touch()
    code, out, err = finish(retire)

    assert code == 0, err
    assert f'{PROJECT}-0.1: retired - (kept 1, 2; pinned or aliased meanwhile 1)' in out, out
    assert '0 generations retired' in err
    assert_live_and_pinned(world)


def test_a_pin_and_a_retire_that_see_each_other_keep_the_generation_pinned(world, tmp_path):
    """Retire listed before the pin was stored, pin checks after the tombstone: both see the other; the retire puts
    the generation back before the pin checks, so the pin holds."""
    retire = cli(world, tmp_path, *retire_args(world), hold={'method': 'write', 'contains': '/retired/'}, name='r')
    held(retire, tmp_path, 'r')  # planned: generation 1 is to be retired
    after_storing = {'method': 'listdir', 'contains': '/generations', 'skip': 1}
    pin = cli(world, tmp_path, 'pin', world.url, PROJECT, '0.1', '1', hold=after_storing, name='p')
    held(pin, tmp_path, 'p')  # the pin is stored, its check not made
    assert pinned(world) == [1]
    (tmp_path / 'gor').touch()
    code, out, err = finish(retire)
    assert code == 0, err
    assert f'{PROJECT}-0.1: retired - (kept 1, 2; pinned or aliased meanwhile 1)' in out, out
    assert 'pinned or aliased meanwhile' in err
    (tmp_path / 'gop').touch()
    code, out, err = finish(pin)

    assert code == 0 and 'Pinned generation 1 of demo-proj-0.1' in out, (out, err)
    assert_live_and_pinned(world)


def test_a_pin_that_finds_its_generation_retired_meanwhile_fails_and_deletes_itself(world, tmp_path):
    """Pin checked generation 1 live, then retire ran whole (no pin to see), then the pin is stored: its second
    check sees the tombstone."""
    pin = cli(world, tmp_path, 'pin', world.url, PROJECT, '0.1', '1', hold={'method': 'write', 'contains': '/pinned/'})
    held(pin, tmp_path)
    code, out, err = finish(cli(world, tmp_path, *retire_args(world)))
    assert code == 0 and f'{PROJECT}-0.1: retired 1 (kept 2)' in out, (out, err)
    (tmp_path / 'go').touch()
    code, out, err = finish(pin)

    assert code == 2, (code, out, err)
    assert 'Generation 1 of demo-proj-0.1 was retired meanwhile' in err, err
    assert pinned(world) == []  # the failed pin deleted itself
    assert [int(g) for g in world.generations(PROJECT, '0.1')] == [2]
    if world.s3server:
        assert set(tags(world, 1, retired=True)) == {layout.RETIRED_TAG[1]}
