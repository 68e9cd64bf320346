"""Deprecated spellings keep working for one release, and say what replaces them."""

import pytest

from forml_s3.cli import retention as cli
from forml_s3.ops import lifecycle


def test_expire_staging_after_warns_and_sets_the_uncommitted_expiry():
    with pytest.warns(DeprecationWarning, match='use expire_uncommitted_after'):
        policy = lifecycle.Policy(expire_staging_after=3)
    assert policy.expire_uncommitted_after == 3
    assert policy == lifecycle.Policy(expire_uncommitted_after=3)


def test_the_cli_option_expire_staging_after_sets_the_uncommitted_expiry():
    params = {
        'expire_uncommitted_after': 7,
        'expire_staging_after': 3,
        'abort_multipart_after': 7,
        'expire_retired_after': 30,
        'transition_releases_after': 0,
        'storage_class': 'STANDARD_IA',
        'noncurrent_versions_after': 0,
    }
    assert cli._policy(params).expire_uncommitted_after == 3
    option = next(p for p in cli.lifecycle.commands['plan'].params if p.name == 'expire_staging_after')
    assert option.hidden and option.deprecated
