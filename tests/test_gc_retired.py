"""``forml-s3 gc --retired-older-than``: what an S3 lifecycle rule on the retired tag expires, for stores without
such rules - the states and retired markers of generations retired long enough ago, never a live generation's,
never the tombstone that keeps the number taken (memory, local disk, S3 on moto's HTTP server; GCS and Azure
emulators in test_backends_cloud)."""

import json

import forml
import pytest

from forml_s3.ops import snapshot as inspect
from forml_s3.registry import Conflict
from forml_s3.runtime import retention

from .helpers import PROJECT, commit, run_cli


def test_expires_retired_generations_only(make_registry, package_factory, tmp_path):
    registry = make_registry(pack_states=False)
    registry.push(package_factory('0.1'))
    sids = {g: commit(registry, g, payloads=(f'{g}a'.encode(), f'{g}b'.encode()))[1] for g in (1, 2, 3)}
    assert retention.retire(registry._store, registry._layout, PROJECT, '0.1', keep=1) == [1, 2]
    options = [f'--option={k}={v if isinstance(v, str) else json.dumps(v)}' for k, v in make_registry.options.items()]
    st, lay = registry._store, registry._layout
    before = set(inspect.snapshot(st).objects)
    expected = {lay.state(PROJECT, '0.1', sid) for g in (1, 2) for sid in sids[g]}
    expected |= {lay.retired_marker(PROJECT, '0.1', g) for g in (1, 2)}

    recent = run_cli('gc', make_registry.url, '--retired-older-than', '1', '--dry-run', *options)
    assert recent.exit_code == 0 and ', 0 objects of generations retired more than 1 days ago would be' in recent.stdout

    dry = run_cli('gc', make_registry.url, '--retired-older-than', '0', '--dry-run', *options)
    assert dry.exit_code == 0, dry.output
    listed = {line.split()[3] for line in dry.stdout.splitlines() if line.startswith('would delete (retired)')}
    assert listed == {st.url_of(p) for p in expected}
    assert set(inspect.snapshot(st).objects) == before

    done = run_cli('gc', make_registry.url, '--retired-older-than', '0', *options)
    assert done.exit_code == 0 and f'{len(expected)} objects of generations retired' in done.stdout, done.output
    assert set(inspect.snapshot(st).objects) == before - expected
    fresh = make_registry(cache_dir=tmp_path / 'fresh-cache')
    assert [int(g) for g in fresh.generations(PROJECT, '0.1')] == [3]
    assert {fresh.read(PROJECT, '0.1', 3, sid) for sid in sids[3]} == {b'3a', b'3b'}
    verified = run_cli('verify', make_registry.url, *options)
    assert verified.exit_code == 0, verified.output
    with pytest.raises((Conflict, forml.InvalidError)):  # the tombstone still holds the number
        commit(fresh, 1)
