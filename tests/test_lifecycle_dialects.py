"""``forml-s3 lifecycle apply`` is idempotent on servers that answer the configuration in their own dialect: Ceph RGW
returns the rules sorted by ID and writes a one-tag ``And`` filter without its ``And`` (or a plain ``Tag`` filter
inside one). A proxy in front of moto answers ``GetBucketLifecycleConfiguration`` that way; the second apply must
find nothing to change and send no ``PutBucketLifecycleConfiguration``."""

import xml.etree.ElementTree as ET

import pytest

from forml_s3.ops import lifecycle

from .helpers import run_cli, s3_options
from .proxy import Proxy

NS = 'http://s3.amazonaws.com/doc/2006-03-01/'
USER_RULE = {'ID': 'a-user-rule', 'Status': 'Enabled', 'Filter': {'Prefix': 'logs/'}, 'Expiration': {'Days': 3}}
"""A rule of the bucket's owner, put before forml-s3's (and sorted first by ID, so the order the server returns
differs from the order put)."""


def q(name: str) -> str:
    return f'{{{NS}}}{name}'


def ceph_dialect(method: str, path: str, body: bytes) -> bytes:
    """The lifecycle configuration as Ceph RGW answers it: rules in ID order, a one-tag ``And`` unwrapped into
    ``Prefix`` + ``Tag`` and a plain ``Tag`` wrapped into an ``And``."""
    if method != 'GET' or not path.split('?', 1)[-1].startswith('lifecycle') or b'<Rule>' not in body:
        return body
    ET.register_namespace('', NS)
    root = ET.fromstring(body)
    rules = root.findall(q('Rule'))
    for rule in rules:
        root.remove(rule)
        found = rule.find(q('Filter'))
        both = found.find(q('And')) if found is not None else None
        if both is not None and len(both.findall(q('Tag'))) == 1:
            found.remove(both)
            found.extend(list(both))
        elif found is not None and found.find(q('Tag')) is not None and found.find(q('Prefix')) is None:
            tag = found.find(q('Tag'))
            found.remove(tag)
            ET.SubElement(found, q('And')).append(tag)
    for rule in sorted(rules, key=lambda r: r.findtext(q('ID')) or ''):
        root.append(rule)
    return ET.tostring(root, xml_declaration=True, encoding='utf-8')


@pytest.mark.parametrize('prefix', ['forml', ''], ids=['prefixed', 'bucket-root'])
def test_second_apply_puts_nothing_on_a_server_that_reshapes_rules(s3server, bucket, prefix):
    client = s3server.client()
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={'Rules': [USER_RULE]})
    url = f's3://{bucket}/{prefix}'.rstrip('/')
    extra = [] if prefix else ['--whole-bucket']
    with Proxy(s3server.endpoint, rewrite=ceph_dialect) as proxy:
        args = [a.replace(s3server.endpoint, proxy.endpoint) for a in s3_options(s3server)]
        first = run_cli('lifecycle', 'apply', url, *args, *extra)
        assert first.exit_code == 0, first.output
        assert 'Applied 3 forml-s3 rules' in first.stderr and '1 other rules kept' in first.stderr, first.stderr

        answered = client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']
        rules = lifecycle.normal(answered)
        assert [r['ID'] for r in rules][0] == USER_RULE['ID'] and len(rules) == 4
        proxy.seen.clear()
        reshaped = run_cli('lifecycle', 'apply', url, *args, *extra)
        assert reshaped.exit_code == 0, reshaped.output
        assert 'already as planned, nothing to change' in reshaped.output, reshaped.output
        puts = [p for m, p in proxy.seen if m == 'PUT' and p.split('?', 1)[-1].startswith('lifecycle')]
        gets = [p for m, p in proxy.seen if m == 'GET' and p.split('?', 1)[-1].startswith('lifecycle')]
        assert gets and not puts, proxy.seen
    # nothing lost: the bucket still holds the user's rule and forml-s3's three, as first applied
    after = client.get_bucket_lifecycle_configuration(Bucket=bucket)['Rules']
    assert lifecycle.normal(after) == rules
    assert lifecycle.RuleFilter.of(next(r for r in after if r['ID'] == USER_RULE['ID'])).prefix == 'logs/'


def test_normal_shape_ignores_order_and_filter_spelling():
    tag = {'Key': 'forml-s3', 'Value': 'retired'}
    put = [
        {'ID': 'b', 'Status': 'Enabled', 'Filter': {'And': {'Prefix': 'p/', 'Tags': [tag]}}, 'Expiration': {'Days': 1}},
        {'ID': 'a', 'Status': 'Enabled', 'Filter': {'Tag': tag}, 'Expiration': {'Days': 2}},
    ]
    answered = [
        {'ID': 'a', 'Status': 'Enabled', 'Filter': {'And': {'Tags': [tag]}}, 'Expiration': {'Days': 2}},
        {'ID': 'b', 'Status': 'Enabled', 'Filter': {'Prefix': 'p/', 'Tag': tag}, 'Expiration': {'Days': 1}},
    ]
    assert lifecycle.same(put, answered) and not lifecycle.diff(put, answered, 'b')
    changed = [dict(answered[0]), {**answered[1], 'Expiration': {'Days': 5}}]
    assert not lifecycle.same(put, changed)
    assert '"Days": 5' in lifecycle.diff(put, changed, 'b')
