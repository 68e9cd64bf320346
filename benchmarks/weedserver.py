"""The benchmark's SeaweedFS endpoint (``--server seaweedfs``): ``weed server -s3`` on 127.0.0.1, started and stopped
by the harness, with the request and byte counts read from its Prometheus metrics.

It offers what the harness uses of the embedded moto server (``endpoint``, ``client_env()``, ``client()``,
``create_bucket()``, ``reset_counts()``), but a request log it has not: SeaweedFS counts requests per bucket and
kind (``GET``, ``PUT``, ``LIST``, ``HEAD``, ``DELETE``, ...) and the body bytes it received and sent per bucket, so
:meth:`SeaweedFS.tally` gives the difference of those counters since :meth:`SeaweedFS.reset_counts`. Only one run
executes at a time, so the difference is that run's. SeaweedFS is a fast Go server: unlike moto, it does not hide
the client's own cost (moto copies the whole object for every ranged GET).
"""

from __future__ import annotations

import collections
import contextlib
import pathlib
import re
import time
import typing
import urllib.request

from benchmarks import soak

_SAMPLE = re.compile(r'^(?P<name>SeaweedFS_s3_\w+)\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')
SETTLE = 0.2
"""Seconds the counters must stay unchanged to be read as a run's final ones."""


class SeaweedFS:
    """``weed server -s3`` with its data under ``work`` (see :func:`benchmarks.soak.seaweedfs`)."""

    def __init__(self, work: pathlib.Path):
        self.work = work
        self.endpoint = ''
        self._metrics = ''
        self._stack = contextlib.ExitStack()
        self._base: tuple[collections.Counter[str], int] = (collections.Counter(), 0)

    def __enter__(self) -> SeaweedFS:
        port = soak._free_port()
        self._metrics = f'http://127.0.0.1:{port}/metrics'
        self.work.mkdir(parents=True, exist_ok=True)
        self.endpoint = self._stack.enter_context(soak.seaweedfs(self.work, [f'-metricsPort={port}'])).endpoint
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def client_env(self) -> dict[str, str]:
        from forml_s3.demo import endpoint as embedded

        return embedded.client_env(self.endpoint)

    def client(self) -> typing.Any:
        import boto3

        return boto3.client('s3', **soak._client_args(self.endpoint))

    def create_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def _counters(self) -> tuple[collections.Counter[str], int]:
        """Requests by kind and body bytes (received plus sent), over all buckets, as the server counts them now."""
        with urllib.request.urlopen(self._metrics, timeout=30) as response:  # our loopback server
            text = response.read().decode()
        kinds: collections.Counter[str] = collections.Counter()
        moved = 0
        for line in text.splitlines():
            sample = _SAMPLE.match(line)
            if not sample:
                continue
            labels = dict(_LABEL.findall(sample['labels']))
            if sample['name'] == 'SeaweedFS_s3_request_seconds_count' and labels.get('bucket'):
                kinds[labels.get('type', '?')] += int(float(sample['value']))
            elif sample['name'] in (
                'SeaweedFS_s3_bucket_traffic_received_bytes_total',
                'SeaweedFS_s3_bucket_traffic_sent_bytes_total',
            ):
                moved += int(float(sample['value']))
        return kinds, moved

    def _settled(self) -> tuple[collections.Counter[str], int]:
        """The counters once they stop moving: SeaweedFS counts a request after its handler has returned, so the
        client may hold the response of its last request (or read its first) before the count changes (seen: a
        LIST counted in the next operation's region). Only one run talks to the server at a time; a server that never
        settles (something else still talking to it) is read as it is after 10 s."""
        now = self._counters()
        for _ in range(int(10 / SETTLE)):
            time.sleep(SETTLE)
            then, now = now, self._counters()
            if now == then:
                break
        return now

    def reset_counts(self) -> None:
        self._base = self._settled()

    def tally(self) -> tuple[dict[str, int], int]:
        """Requests by kind and body bytes since :meth:`reset_counts`."""
        kinds, moved = self._settled()
        before, moved_before = self._base
        return {k: v - before[k] for k, v in sorted(kinds.items()) if v - before[k]}, moved - moved_before
