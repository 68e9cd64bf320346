"""No module of forml_s3 imports from a layer above its own (the package map in ``forml_s3/__init__.py``).

Every import is read with :mod:`ast` - lazy ones inside functions and ``TYPE_CHECKING`` ones included - so a
shortcut upwards fails here rather than in a reader's head.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).parent.parent / 'forml_s3'

LAYERS = (
    ('model', 'settings'),
    ('storage',),
    ('runtime',),
    ('registry', 'inventory', 'selector'),
    ('ops',),
    ('cli', 'ui', 'demo'),
)
"""Lowest first: a module may import from its own layer and the ones before it."""


def layer(module: str) -> int:
    """The layer of a dotted ``forml_s3...`` module name (the package root itself is the lowest)."""
    parts = module.split('.')
    if len(parts) == 1:
        return 0
    return next(n for n, names in enumerate(LAYERS) if parts[1] in names)


def module_of(path: pathlib.Path) -> str:
    parts = ['forml_s3', *path.relative_to(PACKAGE).with_suffix('').parts]
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def imported(path: pathlib.Path, source: str | None = None) -> list[tuple[int, str]]:
    """``(line, module)`` of every forml_s3 module (or name in one) that ``path`` (or ``source`` there) imports."""
    package = module_of(path) if path.name == '__init__.py' else module_of(path).rpartition('.')[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = '.'.join(package.split('.')[: len(package.split('.')) - node.level + 1])
                base = f'{base}.{node.module}' if node.module else base
            else:
                base = node.module or ''
            if base == 'forml_s3':  # `from forml_s3 import storage`: the names are the modules
                found += [(node.lineno, f'forml_s3.{a.name}') for a in node.names]
            else:
                found.append((node.lineno, base))
    return [(line, name) for line, name in found if name == 'forml_s3' or name.startswith('forml_s3.')]


SOURCES = sorted(p for p in PACKAGE.rglob('*.py') if 'project' not in p.relative_to(PACKAGE).parts)


def test_every_module_has_a_layer():
    """A new top-level module or subpackage is placed in the map before it is used."""
    unplaced = [str(p.relative_to(PACKAGE)) for p in SOURCES if p.name != '__init__.py' or p.parent != PACKAGE]
    for name in unplaced:
        top = name.split('/')[0].removesuffix('.py')
        assert any(top in names for names in LAYERS), f'forml_s3/{name}: add {top!r} to LAYERS and the package map'


@pytest.mark.parametrize('path', SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_from_a_layer_above(path):
    own = layer(module_of(path))
    upward = [f'line {line}: {name}' for line, name in imported(path) if layer(name) > own]
    assert not upward, f'{module_of(path)} (layer {LAYERS[own]}) imports from above: {upward}'


def test_the_check_sees_an_upward_import():
    """The parser resolves relative and lazy imports: a runtime module importing the CLI in a function is caught."""
    source = 'def f():\n    from ..cli import ops\n    from .. import registry\n    from . import cache\n'
    names = [name for _, name in imported(PACKAGE / 'runtime' / 'transfers.py', source)]
    assert names == ['forml_s3.cli', 'forml_s3.registry', 'forml_s3.runtime']
    assert [layer(n) > layer('forml_s3.runtime.transfers') for n in names] == [True, True, False]
