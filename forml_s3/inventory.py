"""ForML application inventory provider over object storage: ``forml.io.asset.Inventory`` on any fsspec URL.

Descriptors are stored as ``<url>/<application>.py`` objects. ``put`` replaces a descriptor with one PUT
(atomic on S3; temp file + rename on local disks), so a concurrent ``get`` reads the old or the new module,
never a torn one. ``get`` loads the module from a private temporary directory that is removed right after.
"""

import logging
import pathlib
import tempfile
import typing

import forml
from forml import application as appmod
from forml.io import asset

from . import settings, storage
from .model import layout, names

LOGGER = logging.getLogger(__name__)


class Inventory(asset.Inventory, alias='s3', metaclass=settings.Checked):
    """Application inventory in a bucket (or at any fsspec URL).

    Args:
        url: Inventory root, e.g. ``s3://my-bucket/forml-apps`` (keep it apart from the registry URL).
        storage_options: fsspec/s3fs options, as for the registry (see :mod:`forml_s3.storage.options`).
        single_writer: Accept a URL protocol without a verified exclusive create, as for the registry (no
                       protection against concurrent writers).

    The provider can be enabled using the following :ref:`platform configuration <platform-config>`:

    .. code-block:: toml
       :caption: config.toml

        [INVENTORY]
        default = "s3"

        [INVENTORY.s3]
        provider = "forml_s3.inventory:Inventory"   # or "s3" with path = ["forml_s3.inventory"] under [INVENTORY]
        url = "s3://my-bucket/forml-apps"
    """

    def __init__(
        self, url: str, storage_options: typing.Mapping[str, typing.Any] | None = None, single_writer: bool = False
    ):
        self._store: storage.Store = storage.open_store(url, storage_options, single_writer=bool(single_writer))
        self._layout: layout.InventoryLayout = layout.InventoryLayout(self._store.root)

    def __repr__(self):
        return f'S3-inventory({self._store.url})'

    def __hash__(self):
        return hash(self.__class__) ^ hash(self._store.url)

    def __eq__(self, other):
        return isinstance(other, self.__class__) and other._store.url == self._store.url

    def list(self) -> typing.Iterable[str]:
        found = []
        for name in layout.InventoryLayout.applications(e.name for e in self._store.listdir(self._store.root)):
            try:
                found.append(names.application(name))
            except asset.Level.Invalid:
                LOGGER.debug('Ignoring foreign object %s', name)
        return tuple(sorted(found))

    def get(self, application: str) -> appmod.Descriptor:
        key = self._layout.descriptor(application)
        try:
            source = self._store.read(key)
        except FileNotFoundError:
            raise forml.MissingError(
                f'Application {application!r} not found in {self._store.url} (`forml application list` shows '
                'what is there; publish it with `forml application put <descriptor.py>`)'
            ) from None
        with tempfile.TemporaryDirectory(prefix='forml-s3-app-') as temp:
            path = pathlib.Path(temp) / key.rsplit('/', 1)[-1]
            path.write_bytes(source)
            try:
                return appmod.Descriptor.Handle(path).descriptor
            except (Exception, SystemExit, KeyboardInterrupt) as err:  # see below
                # not a module, fails to import, or holds no descriptor; a module calling sys.exit() (or raising
                # KeyboardInterrupt) at import is a broken descriptor too: let through, it would stop the gateway
                raise forml.InvalidError(
                    f'Descriptor of {application!r} in {self._store.url_of(key)} is not a valid descriptor module: '
                    f'{type(err).__name__}: {err}'
                ) from err

    def put(self, descriptor: appmod.Descriptor.Handle) -> None:
        key = self._layout.descriptor(descriptor.descriptor.name)
        LOGGER.debug('Putting descriptor %s to %s', descriptor.path, self._store.url_of(key))
        self._store.write(key, pathlib.Path(descriptor.path).read_bytes())
