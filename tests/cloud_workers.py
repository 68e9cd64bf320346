"""A racer for the cloud backends' tests: ``python -m tests.cloud_workers --url ... --go-push P --go-close C``.

One process runs both races of :mod:`tests.workers`, one after the other, so that the two races on a backend cost
one crowd of interpreters: it pushes release 1.0 when ``--go-push`` appears (every racer with its own package), then
writes its states and closes generation 1 of release 0.1 when ``--go-close`` appears. It prints one JSON line:
``{"push": <push-race result>, "close": <close-race result>}``.
"""

import argparse
import json
import sys

from . import workers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--url', required=True)
    parser.add_argument('--options', default='{}')
    parser.add_argument('--cache', required=True)
    parser.add_argument('--staging', default=None)
    parser.add_argument('--name', required=True)
    parser.add_argument('--package', required=True)
    parser.add_argument('--ready-push', required=True)
    parser.add_argument('--go-push', required=True)
    parser.add_argument('--ready-close', required=True)
    parser.add_argument('--go-close', required=True)
    args = parser.parse_args()
    common = {k: getattr(args, k) for k in ('url', 'options', 'cache', 'staging', 'name')} | {'settings': '{}'}
    push = workers.push_race(argparse.Namespace(**common, package=args.package, ready=args.ready_push, go=args.go_push))
    close = workers.close_race(
        argparse.Namespace(**common, release='0.1', generation=1, ready=args.ready_close, go=args.go_close)
    )
    print(json.dumps({'push': push, 'close': close}), flush=True)


if __name__ == '__main__':
    sys.exit(main())
