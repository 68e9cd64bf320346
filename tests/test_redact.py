"""botocore's DEBUG logs (request headers, canonical requests) never show the access key id, secret or session
token once a forml-s3 store exists: a real registry against the embedded server, with DEBUG logging on."""

import logging
import uuid

import pytest

from forml_s3.registry import Registry
from forml_s3.storage import redact

from .helpers import PROJECT

KEY_ID, SECRET, TOKEN = 'AKIAFORMLS3TESTKEY01', 'forml-s3-test-secret-value', 'FwoGZXIvYXdzEForMlS3SessionToken'


@pytest.mark.parametrize('source', ['storage_options', 'environment'])
def test_debug_logs_of_a_registry_show_no_credentials(s3server, bucket, tmp_path, caplog, monkeypatch, source):
    if source == 'environment':  # the standard chain: nothing configured for forml-s3 to know
        options = {k: v for k, v in s3server.storage_options().items() if k not in ('key', 'secret')}
        monkeypatch.setenv('AWS_ACCESS_KEY_ID', KEY_ID)
        monkeypatch.setenv('AWS_SECRET_ACCESS_KEY', SECRET)
        monkeypatch.setenv('AWS_SESSION_TOKEN', TOKEN)
    else:
        options = s3server.storage_options(key=KEY_ID, secret=SECRET, token=TOKEN)
    with caplog.at_level(logging.DEBUG):
        registry = Registry(f's3://{bucket}/forml', storage_options=options, cache_dir=tmp_path / 'cache')
        assert list(registry.projects()) == []
        registry._store.write(f'{bucket}/forml/probe', b'x' * 10)
    text = '\n'.join(r.getMessage() for r in caplog.records)
    sent = [r for r in caplog.records if r.name == 'botocore.endpoint' and 'Sending http request' in r.getMessage()]
    assert len(sent) >= 2 and 'Credential=***/' in sent[0].getMessage(), 'botocore logged its requests, redacted'
    assert any('x-amz-security-token' in r.getMessage().lower() for r in caplog.records if r.name == 'botocore.auth')
    for secret in (KEY_ID, SECRET, TOKEN):
        assert secret not in text


def test_scrub_masks_presigned_urls_and_headers():
    url = (
        f'GET /b/k?X-Amz-Credential={KEY_ID}%2F20261201%2Fus-east-1%2Fs3%2Faws4_request'
        f'&X-Amz-Security-Token={TOKEN}&X-Amz-Signature=0123456789abcdef0123456789abcdef'
    )
    headers = f"{{'Authorization': b'AWS4-HMAC-SHA256 Credential={KEY_ID}/2026', 'X-Amz-Security-Token': b'{TOKEN}'}}"
    for text in (url, headers, f'x-amz-security-token:{TOKEN}', f"{{'aws_secret_access_key': '{SECRET}'}}"):
        clean = redact.scrub(text)
        assert KEY_ID not in clean and TOKEN not in clean and SECRET not in clean and redact.MASK in clean
    assert redact.scrub('nothing secret here: s3://bucket/forml') == 'nothing secret here: s3://bucket/forml'


def test_a_record_logged_before_any_store_is_redacted_once_installed(caplog):
    redact.install([f'configured-{uuid.uuid4().hex}'])
    secret = next(iter(s for s in redact._secrets if s.startswith('configured-')))
    # the logger's own level too: forml-s3 quiets botocore.credentials to WARNING once an S3 store connects
    with caplog.at_level(logging.DEBUG), caplog.at_level(logging.DEBUG, logger='botocore.credentials'):
        logging.getLogger('botocore.credentials').debug('Found key %s', secret)
        logging.getLogger(__name__).debug('forml-s3 own logs are left as they are: %s', PROJECT)
    assert secret not in caplog.text and 'Found key ***' in caplog.text and PROJECT in caplog.text
