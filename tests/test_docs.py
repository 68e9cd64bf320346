"""The documentation site builds with warnings as errors (MkDocs --strict)."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).parent.parent


def test_docs_build_strict(tmp_path):
    mkdocs = shutil.which('mkdocs', path=str(pathlib.Path(sys.executable).parent)) or shutil.which('mkdocs')
    assert mkdocs, 'mkdocs is a test dependency: pip install -e .[test]'
    result = subprocess.run(
        [mkdocs, 'build', '--strict', '--site-dir', str(tmp_path / 'site')], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / 'site' / 'consistency' / 'index.html').exists()
    pages = {p.stem for p in (ROOT / 'docs').glob('*.md')}
    nav = (ROOT / 'mkdocs.yml').read_text()
    assert not [p for p in pages if f'{p}.md' not in nav], 'every docs page is in the nav'
