"""Runs LocalStack's S3 in this process, on the host, without docker: 127.0.0.1 only, nothing written outside ROOT.

    .venv-localstack/bin/python localstack/serve.py --port 4566 --root /tmp/forml-s3-localstack

Needs the LocalStack venv (``localstack/requirements.txt``, see ``localstack/README.md``). This is LocalStack's own
entry point (``python -m localstack.runtime.main``) with settings that matter on a machine that is not a LocalStack
container. They are forced here, not defaults, because LocalStack's defaults are wrong for it:

* ``OVERRIDE_IN_DOCKER=0``: LocalStack decides it runs in its container when ``/.dockerenv`` exists (true on many CI
  machines and dev containers). It then listens on 0.0.0.0 by default, writes to ``/var/lib/localstack``,
  ``/etc/localstack`` and ``/usr/lib/localstack``, and - with its DNS server on - rewrites ``/etc/resolv.conf``.
* ``DNS_ADDRESS=0``: no DNS server (by default one on 0.0.0.0:53, forwarding to the upstream resolver).
* ``GATEWAY_LISTEN=127.0.0.1:PORT``: the S3 endpoint. LocalStack 4.9's default (twisted) server binds an IPv4
  listener to every interface whatever host ``GATEWAY_LISTEN`` names (``# TODO: interface = host?`` in
  ``localstack/runtime/server/twisted.py``): patched below to bind 127.0.0.1 only.
* ``FILESYSTEM_ROOT``, ``TMPDIR``, ``CONFIG_DIR``, ``LOCALSTACK_VOLUME_DIR`` under ROOT, and the S3 object store's
  directory (hard-coded to ``/tmp/localstack-s3-storage`` in LocalStack 4.9) moved to ``ROOT/s3``.
* ``SKIP_SSL_CERT_DOWNLOAD=1``, ``DISABLE_EVENTS=1``: nothing is fetched from or sent to the internet at run time
  (by default it tries to download a TLS certificate and posts usage analytics). Its S3 provider resolves the public
  name ``s3.localhost.localstack.cloud`` once at start (``localstack.utils.aws.aws_stack.get_s3_hostname``):
  patched below to use ``localhost`` without asking DNS.
* ``SERVICES=s3``, ``EAGER_SERVICE_LOADING=1``, ``PERSISTENCE=0``: S3 only, started before the health endpoint
  reports it, empty at every start.
"""

import argparse
import functools
import os
import pathlib
import sys
import tempfile
import types


def settings(port: int, root: pathlib.Path) -> dict[str, str]:
    """The environment LocalStack is configured from (it reads it when its modules are imported)."""
    return {
        'OVERRIDE_IN_DOCKER': '0',
        'DNS_ADDRESS': '0',
        'GATEWAY_LISTEN': f'127.0.0.1:{port}',
        'FILESYSTEM_ROOT': str(root / 'filesystem'),
        'TMPDIR': str(root / 'tmp'),
        'CONFIG_DIR': str(root / 'config'),
        'LOCALSTACK_VOLUME_DIR': str(root / 'volume'),
        'SKIP_SSL_CERT_DOWNLOAD': '1',
        'DISABLE_EVENTS': '1',
        'SERVICES': 's3',
        'EAGER_SERVICE_LOADING': '1',
        'PERSISTENCE': '0',
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--port', type=int, default=4566, help='port on 127.0.0.1 (default 4566)')
    parser.add_argument('--root', type=pathlib.Path, required=True, help='directory for all LocalStack writes')
    args = parser.parse_args()
    root = args.root.resolve()
    for name in ('filesystem', 'tmp', 'config', 'volume', 's3'):
        (root / name).mkdir(parents=True, exist_ok=True)
    os.environ.update(settings(args.port, root))
    tempfile.tempdir = os.environ['TMPDIR']

    # these imports read the settings above (localstack.config reads the environment when it is imported)
    from localstack.runtime import main as runtime
    from localstack.runtime.server import twisted as gateway
    from localstack.services.s3 import provider
    from localstack.utils.aws import aws_stack
    from twisted.internet import endpoints

    provider.DEFAULT_S3_TMP_DIR = str(root / 's3')  # read when the S3 provider is created, after this
    aws_stack.CACHE_S3_HOSTNAME_DNS_STATUS = False  # "s3.localhost.localstack.cloud does not resolve": localhost
    gateway.endpoints = types.SimpleNamespace(
        TCP4ServerEndpoint=functools.partial(endpoints.TCP4ServerEndpoint, interface='127.0.0.1'),
        TCP6ServerEndpoint=endpoints.TCP6ServerEndpoint,
    )

    sys.argv[0] = 'localstack'
    runtime.main()


if __name__ == '__main__':
    main()
