"""Which URLs a registry serves, through the real ``forml`` CLI: a URL without a scheme and an unsupported protocol
are refused with one line saying what to write; ``single_writer = true`` admits another fsspec protocol (with no
protection against concurrent writers)."""

import forml
import pytest

from forml_s3 import demo
from forml_s3.registry import Registry

from .helpers import PROJECT, commit


def forml_list(tmp_path, url: str, **registry) -> tuple[str, str]:
    """``forml model list`` with the registry at ``url``: (stdout, stderr)."""
    home = tmp_path / 'home'
    demo.render_config(home, registry_url=url, registry=registry)
    done = demo.run_forml(home, 'model', 'list')
    return done.stdout, done.stderr


@pytest.mark.parametrize(
    'url, message',
    [
        (
            'bucket/forml',
            "Registry url 'bucket/forml' has no scheme: write s3://bucket/prefix, gs://..., az://..., "
            'file:///absolute/path or memory://name',
        ),
        (
            'ftp://x/y',
            "Registry url 'ftp://x/y': the ftp:// protocol is not supported (supported: abfs://, abfss://, az://, "
            'file://, gcs://, gs://, memory://, s3://, s3a://); set single_writer = true to use it anyway, with no '
            'protection against concurrent writers',
        ),
    ],
    ids=['no-scheme', 'ftp'],
)
def test_the_forml_cli_refuses_the_url_in_one_line(tmp_path, url, message):
    stdout, stderr = forml_list(tmp_path, url)
    assert stdout.strip() == ''
    assert stderr.strip() == message  # that line and nothing else: no traceback
    assert not (tmp_path / 'home' / 'bucket').exists()  # never a folder under the current directory


def test_single_writer_admits_another_protocol_through_the_forml_cli(tmp_path, package_factory):
    url = f'local://{tmp_path}/registry'  # fsspec's local file system under a name forml-s3 does not serve
    _, refused = forml_list(tmp_path, url)
    assert 'the local:// protocol is not supported' in refused

    registry = Registry(url, single_writer=True, storage_options={'auto_mkdir': True}, cache_dir=tmp_path / 'cache')
    registry.push(package_factory('0.1'))
    commit(registry, 1)
    stdout, stderr = forml_list(tmp_path, url, single_writer=True, storage_options={'auto_mkdir': True})
    assert stdout.split() == [PROJECT], stderr
    assert (tmp_path / 'registry' / PROJECT / '0.1' / 'generations' / '1.json').exists()


def test_single_writer_accepts_an_ftp_url_as_fsspec_reads_it():
    registry = Registry('ftp://files.example:2121/forml', single_writer=True)  # constructing connects to nothing
    assert registry.url == 'ftp://files.example:2121/forml'
    assert registry._store.root == '/forml' and registry._store._options == {'host': 'files.example', 'port': 2121}
    assert registry._store.exclusive_create is False
    with pytest.raises(forml.InvalidError, match='fsspec knows no nosuch:// protocol'):
        Registry('nosuch://x/y', single_writer=True)
