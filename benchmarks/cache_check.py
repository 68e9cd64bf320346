"""What checking the local cache costs: ``open`` + ``read`` of committed states served from a warm cache.

Runs against the forml-s3 importable in the interpreter that runs it, so the same script measures two versions
side by side (e.g. ``/work/main/.venv/bin/python -m benchmarks.cache_check`` for the code before the check,
``.venv/bin/python -m benchmarks.cache_check`` for the code after). A file:// registry (no network: what is
left is the cache's own work) holds one generation of 100 states of 64 KiB and one of a single 256 MiB state;
a first reader fills the cache, then each repetition is a new Registry instance (a new serving process, nothing
in memory) opening the generation and reading every state. Prints one JSON line: median seconds per workload.
"""

import json
import os
import pathlib
import statistics
import sys
import tempfile
import time
import uuid

from forml_s3.registry import Registry
from tests.helpers import PROJECT, PackageFactory, commit

REPS = 7


def timed(url: str, cache: pathlib.Path, generation: int) -> float:
    registry = Registry(url, cache_dir=cache, staging=cache / 'staging')
    start = time.perf_counter()
    tag = registry.open(PROJECT, '0.1', generation)
    for sid in tag.states:
        registry.read(PROJECT, '0.1', generation, sid)
    return time.perf_counter() - start


def main() -> None:
    with tempfile.TemporaryDirectory(prefix='forml-s3-cache-check-') as temp:
        root = pathlib.Path(temp)
        url = f'file://{root}/registry'
        writer = Registry(url, cache_dir=root / 'writer', pack_states=False)
        writer.push(PackageFactory(root / 'packages')('0.1'))
        commit(writer, 1, payloads=[os.urandom(64 * 2**10) for _ in range(100)])
        commit(writer, 2, payloads=[os.urandom(256 * 2**20)])
        cache = root / f'reader-{uuid.uuid4().hex[:6]}'
        results = {}
        for name, generation in (('100 states of 64 KiB', 1), ('1 state of 256 MiB', 2)):
            timed(url, cache, generation)  # fills the cache (and the page cache)
            results[name] = statistics.median(timed(url, cache, generation) for _ in range(REPS))
    print(json.dumps({'python': sys.executable, 'seconds': results}))


if __name__ == '__main__':
    main()
