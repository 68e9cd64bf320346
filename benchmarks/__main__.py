"""``python -m benchmarks``: run the side-by-side benchmark (see :mod:`benchmarks.harness` and ``--help``)."""

import sys

from benchmarks import harness

if __name__ == '__main__':
    if '--scale' in sys.argv[1:]:  # costs on a release with a long history: benchmarks.scale
        from benchmarks import scale

        sys.exit(scale.main())
    sys.exit(harness.main())
