"""One setup or measured run, in a fresh process (forked from a forkserver that has the libraries imported).

The measured protocol over the pipe to the parent:

1. the child builds its provider and the job (client, warm-up request, listings ForML makes first), then
   sends ``('ready', None)``;
2. the parent clears the S3 endpoint's request log and answers ``'go'``;
3. the child resets its peak-RSS mark, notes its RSS (the baseline), makes the job's input (untimed: random
   state bytes, whose memory counts), runs the job under the clock and sends ``('result', {...})``.

Peak memory is the kernel's own high-water mark (``VmHWM`` in ``/proc/self/status``), reset just before the
job with ``/proc/self/clear_refs`` (``5``), minus the baseline RSS: what the job itself added at its peak. For the
CLI rows it is the peak RSS of the ``forml`` (or floor) subprocess itself (``RUSAGE_CHILDREN``).
"""

from __future__ import annotations

import gc
import logging
import os
import re
import resource
import time
import traceback
import typing

if typing.TYPE_CHECKING:
    from multiprocessing import connection

_STATUS = re.compile(r'^(Vm\w+):\s+(\d+) kB$', re.MULTILINE)


def _status() -> dict[str, int]:
    """``Vm*`` fields of ``/proc/self/status`` in bytes."""
    with open('/proc/self/status') as status:
        return {name: int(kb) * 1024 for name, kb in _STATUS.findall(status.read())}


def _reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark of this process (Linux >= 4.0); False where not allowed."""
    try:
        with open('/proc/self/clear_refs', 'w') as refs:
            refs.write('5')
    except OSError:
        return False
    return True


def _io() -> dict[str, int]:
    """Bytes this process passed through read/write system calls (``/proc/self/io``: rchar, wchar)."""
    try:
        with open('/proc/self/io') as stats:
            fields = dict(line.split(': ') for line in stats.read().splitlines())
    except OSError:
        return {'rchar': 0, 'wchar': 0}
    return {'rchar': int(fields.get('rchar', 0)), 'wchar': int(fields.get('wchar', 0))}


def main(conn: connection.Connection, context: dict[str, typing.Any], phase: str, job: str, rep: int) -> None:
    """Entry point of the child process (see the module docstring)."""
    # forml-s3 logs each push, commit and install at INFO: keep the harness output to its own lines
    logging.getLogger('forml_s3').setLevel(logging.WARNING)
    try:
        from benchmarks import providers

        ctx = providers.Context.from_dict(context)
        provider = providers.PROVIDERS[ctx.provider](ctx)
        if phase == 'setup':
            start = time.perf_counter()
            provider.setup(job)
            conn.send(('result', {'seconds': time.perf_counter() - start}))
            return
        work = provider.job(job, rep)
        conn.send(('ready', None))
        if conn.recv() != 'go':
            return
        conn.send(('result', measure(work)))
    except BaseException:  # everything goes back to the parent, which reports it in the row
        conn.send(('error', traceback.format_exc()))
    finally:
        conn.close()


def measure(work: typing.Any) -> dict[str, typing.Any]:
    """Run a job under the clock; see the module docstring for what each number means."""
    from benchmarks import httpcount

    gc.collect()
    reset = _reset_peak()
    baseline = _status()['VmRSS']
    data = work.make_input() if work.make_input else None
    io_before = _io()
    httpcount.reset()
    start = time.perf_counter()
    info = work.run(data) or {}
    seconds = time.perf_counter() - start
    http = httpcount.totals()
    io_after = _io()
    status = _status()
    if work.peak_is_subprocess:
        peak, kind = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024, 'subprocess'
    else:
        # without a resettable mark, VmHWM is the whole life's peak: still an upper bound of the job's
        peak, kind = status['VmHWM'] - baseline, 'delta' if reset else 'delta-unreset'
    del data
    return {
        'seconds': seconds,
        'peak': peak,
        'peak_kind': kind,
        'baseline': baseline,
        'disk_bytes': (io_after['rchar'] - io_before['rchar']) + (io_after['wchar'] - io_before['wchar']),
        'http': info.pop('http', None) or (http if http['requests'] else None),
        'info': info,
        'pid': os.getpid(),
    }
