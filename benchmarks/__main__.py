"""``python -m benchmarks``: run the side-by-side benchmark (see :mod:`benchmarks.harness` and ``--help``)."""

import sys

from benchmarks import harness

if __name__ == '__main__':
    sys.exit(harness.main())
