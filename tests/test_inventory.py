"""The Inventory provider on memory://, file:// and S3 (moto over HTTP): list, get, put, bad input."""

import pathlib
import re
import threading
import uuid

import forml
import pytest
from forml import application
from forml.io import asset

from forml_s3.inventory import Inventory

from .conftest import registry_url

DESCRIPTOR = """
from forml import application
application.setup(application.Generic({name!r}))
"""


@pytest.fixture
def inventory(backend, tmp_path, request):
    url, options = registry_url(backend, tmp_path, request)
    return Inventory(url + '-apps', storage_options=options)


def handle(tmp_path: pathlib.Path, name: str, body: str | None = None) -> application.Descriptor.Handle:
    path = tmp_path / f'src-{uuid.uuid4().hex[:6]}' / f'{name}.py'
    path.parent.mkdir(parents=True)
    path.write_text(body if body is not None else DESCRIPTOR.format(name=name))
    return application.Descriptor.Handle(path)


def test_put_list_get(inventory, tmp_path):
    assert list(inventory.list()) == []
    inventory.put(handle(tmp_path, 'forml-s3-demo'))
    inventory.put(handle(tmp_path, 'other-app'))
    assert list(inventory.list()) == ['forml-s3-demo', 'other-app']
    descriptor = inventory.get('forml-s3-demo')
    assert isinstance(descriptor, application.Descriptor)
    assert descriptor.name == 'forml-s3-demo'


def test_get_leaves_no_stray_files(inventory, tmp_path, monkeypatch):
    monkeypatch.setenv('TMPDIR', str(tmp_path / 'tmp'))
    (tmp_path / 'tmp').mkdir()
    import tempfile

    monkeypatch.setattr(tempfile, 'tempdir', None)
    inventory.put(handle(tmp_path, 'app'))
    inventory.get('app')
    assert list((tmp_path / 'tmp').iterdir()) == []


def test_unknown_application_is_missing(inventory):
    with pytest.raises(forml.MissingError, match="Application 'nope' not found.*forml application list"):
        inventory.get('nope')


@pytest.mark.parametrize(
    'body',
    [
        'this is not python (',
        'raise RuntimeError("boom")',
        'X = 1  # no descriptor set up',
        'import sys; sys.exit(3)',
        'raise KeyboardInterrupt',
    ],
    ids=['syntax-error', 'raises', 'no-descriptor', 'exits', 'interrupts'],
)
def test_a_descriptor_that_is_not_a_valid_module_is_invalid(inventory, tmp_path, body):
    good = handle(tmp_path, 'broken')
    good.path.write_text(body)  # the handle was valid when made; the stored module is not
    inventory.put(good)
    with pytest.raises(forml.InvalidError, match="Descriptor of 'broken' .* not a valid descriptor module"):
        inventory.get('broken')


@pytest.mark.parametrize(
    'name, message',
    [
        ('../escape', 'use letters, digits'),
        ('a/b', 'use letters, digits'),
        ('', 'Invalid application name: empty'),
        ('x' * 300, 'longer than 128 characters'),
        ('bad\nname', 'no "/", "..", spaces or control characters'),
    ],
)
def test_names_that_would_escape_are_refused(inventory, name, message):
    with pytest.raises(asset.Level.Invalid, match=re.escape(message)):
        inventory.get(name)


def test_put_replaces_atomically_while_readers_read(inventory, tmp_path):
    old = DESCRIPTOR.format(name='app') + '# ' + 'o' * 20000 + '\n'
    new = DESCRIPTOR.format(name='app') + '# ' + 'n' * 30000 + '\n'
    inventory.put(handle(tmp_path, 'app', old))
    key = inventory._layout.descriptor('app')
    seen, stop = set(), threading.Event()

    def read():
        while not stop.is_set():
            seen.add(inventory._store.read(key))

    readers = [threading.Thread(target=read) for _ in range(3)]
    for reader in readers:
        reader.start()
    for i in range(10):
        inventory.put(handle(tmp_path, 'app', new if i % 2 == 0 else old))
    stop.set()
    for reader in readers:
        reader.join()
    assert seen <= {old.encode(), new.encode()}  # never a torn mix
    assert inventory.get('app').name == 'app'


def test_missing_bucket_is_a_clear_error(s3server):
    inventory = Inventory('s3://no-such-bucket-here/apps', storage_options=s3server.storage_options())
    with pytest.raises(forml.MissingError, match="Bucket 'no-such-bucket-here' does not exist"):
        inventory.list()
