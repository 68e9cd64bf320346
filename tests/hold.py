"""The real ``forml-s3`` CLI in a process that stops at one chosen storage call until the test lets it go.

``python -m tests.hold ARGS...`` runs ``forml-s3 ARGS...``; with ``FORML_S3_HOLD`` set to a JSON object
``{"method": "write" | "listdir" | ..., "contains": "<part of the key>", "skip": N, "ready": PATH, "go": PATH}``
the store the command opens is wrapped so that the (N+1)-th call of ``method`` on a key containing ``contains``
first creates the file ``ready``, then waits until the file ``go`` exists, then runs. The test so forces one
interleaving of two real processes (for example a pin landing between a retire's listing and its tombstone),
on any backend, with no timing involved.
"""

import json
import os
import pathlib
import sys
import time
import typing

HOLD = 'FORML_S3_HOLD'


class Held:
    """A store whose calls of one method on matching keys stop at the chosen one (everything else delegated)."""

    def __init__(self, store: typing.Any, spec: dict[str, typing.Any]):
        self._store, self._spec, self._seen = store, spec, 0

    def __getattr__(self, name: str) -> typing.Any:
        attribute = getattr(self._store, name)
        if name != self._spec['method']:
            return attribute

        def call(key: str, *args: typing.Any, **kwargs: typing.Any) -> typing.Any:
            if self._spec['contains'] in key:
                self._seen += 1
                if self._seen == int(self._spec.get('skip', 0)) + 1:
                    self._wait()
            return attribute(key, *args, **kwargs)

        return call

    def _wait(self) -> None:
        pathlib.Path(self._spec['ready']).touch()
        deadline = time.monotonic() + 120
        while not os.path.exists(self._spec['go']):
            if time.monotonic() > deadline:
                raise TimeoutError('the test never let the held call go')
            time.sleep(0.01)


def main() -> None:
    from forml_s3.cli import main as cli
    from forml_s3.cli import ops, retention

    spec = json.loads(os.environ.get(HOLD) or 'null')
    if spec:
        opened = ops.open_store

        def open_store(*args: typing.Any, **kwargs: typing.Any) -> Held:
            return Held(opened(*args, **kwargs), spec)

        ops.open_store = retention.open_store = open_store
    sys.exit(cli(sys.argv[1:], prog_name='forml-s3'))


if __name__ == '__main__':
    main()
