"""``forml-s3 demo`` (a real ForML project through its life on an embedded S3) and ``forml-s3 serve-s3``.

The demo drives the real ``forml`` CLI in subprocesses, exactly as a user would, against moto's S3 server
on 127.0.0.1. The ``forml`` CLI exits 0 even on its own errors, so every step is checked by what it left in
the bucket (or printed), and the demo stops at the first step that did not do its job.
"""

import contextlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import tempfile
import threading
import time
import typing
import urllib.error
import urllib.request

import click

from forml_s3.demo import lifetime

BUCKET = 'forml-demo'
REGISTRY_PREFIX = 'registry'
INVENTORY_PREFIX = 'apps'


class StepFailed(click.ClickException):
    """A demo step ran but did not do its job."""


@click.command()
@click.option(
    '--keep',
    type=click.Path(file_okay=False, path_type=pathlib.Path),
    help='Keep the ForML home, project copy and logs in this directory (default: a temporary one, removed).',
)
@click.option('--no-serve', is_flag=True, help='Skip publishing the application and serving a prediction.')
@click.option('-v', '--verbose', is_flag=True, help="Show the forml CLI's log output of every step.")
def demo(keep: pathlib.Path | None, no_serve: bool, verbose: bool) -> None:
    """Take a real ForML project through its life against an embedded S3 endpoint (no cloud account).

    Starts moto's S3 server on 127.0.0.1 (an ephemeral port), writes a ForML config.toml selecting the
    forml-s3 registry and inventory in bucket s3://forml-demo, then runs the real forml CLI: project
    release, model train (twice: new data arrives in between), model list, model apply, application
    put/list/serve with one prediction over HTTP; finally prints the bucket's key tree.
    """
    from forml_s3.demo import endpoint as embedded

    if why := embedded.missing():
        raise click.ClickException(why)
    with contextlib.ExitStack() as stack:
        if keep:
            keep.mkdir(parents=True, exist_ok=True)
            workdir = keep.resolve()
        else:
            workdir = pathlib.Path(stack.enter_context(tempfile.TemporaryDirectory(prefix='forml-s3-demo-')))
        server = stack.enter_context(embedded.Server())
        server.create_bucket(BUCKET)
        click.secho(f'Embedded S3 endpoint {server.endpoint}, bucket s3://{BUCKET}', bold=True)
        Demo(workdir, server.storage_options(), verbose).run(serve=not no_serve)
        if keep:
            from forml_s3.demo import snapshot

            saved = snapshot.save(server.client(), BUCKET, server.port, workdir)
            click.echo(f'\nKept the ForML home in {workdir / "home"} and the bucket ({saved} objects) in {workdir}.')
            click.echo(f'To use it, serve the bucket again:  forml-s3 serve-s3 --state {workdir}')
            click.echo(f'then, in another terminal:           FORML_HOME={workdir / "home"} forml model list')


class Demo:
    """The demo's steps, each a real ``forml`` command checked by its outcome."""

    def __init__(self, workdir: pathlib.Path, storage_options: dict[str, typing.Any], verbose: bool = False):
        from forml_s3 import demo as project
        from forml_s3 import registry, storage

        self.project = project
        self.workdir = workdir
        self.home = workdir / 'home'
        self.verbose = verbose
        self.storage_options = storage_options
        self.registry_url = f's3://{BUCKET}/{REGISTRY_PREFIX}'
        self.gateway_port = free_port()
        self.data = workdir / 'data.csv'
        self.config = project.render_config(
            self.home,
            registry_url=self.registry_url,
            storage_options=storage_options,
            inventory_url=f's3://{BUCKET}/{INVENTORY_PREFIX}',
            data=project.write_data(self.data, batch=1),
            gateway_port=self.gateway_port,
        )
        self.source = workdir / 'project'
        if not self.source.exists():
            project.copy_project(self.source)
        self.last: subprocess.CompletedProcess | None = None
        # the demo's own view of the bucket, to check what each forml command left there
        self.registry = registry.Registry(
            self.registry_url, storage_options=storage_options, cache_dir=workdir / 'check-cache', listing_ttl=0
        )
        self.store = storage.open_store(f's3://{BUCKET}', storage_options)

    def run(self, serve: bool = True) -> None:
        name = self.project.PROJECT
        click.echo(f'ForML config: {self.config}')
        self.forml('project', 'release', cwd=self.source)
        self.expect(lambda: [str(r) for r in self.registry.releases(name)] == [self.project.RELEASE], 'release 0.1')
        self.forml('model', 'train', name)
        self.expect(lambda: self.generations() == [1], 'generation 1')
        self.project.new_data(self.home, self.data, batch=2)
        click.echo(f'\nNew readings arrived ({len(self.project.rows(2))} rows in {self.data.name}); training again.')
        self.forml('model', 'train', name)
        self.expect(lambda: self.generations() == [1, 2], 'generations 1 and 2')
        self.forml('model', 'list', name, show=True)
        self.forml('model', 'list', name, self.project.RELEASE, show=True)
        applied = self.forml('model', 'apply', name)
        predictions = parse_predictions(applied.stdout)
        if not predictions:
            raise StepFailed(f'forml model apply printed no predictions:\n{_tail(applied)}')
        shown = ' '.join(f'{p:.3f}' for p in predictions[:8])
        click.echo(f'{len(predictions)} failure probabilities, one per reading: {shown} ...')
        if serve:
            self.forml('application', 'put', str(self.source / 'application.py'))
            listed = self.forml('application', 'list', show=True)
            if name not in listed.stdout:
                raise StepFailed(f'forml application list does not show {name}')
            self.serve_one()
        self.print_tree()

    def forml(self, *args: str, cwd: pathlib.Path | None = None, show: bool = False) -> subprocess.CompletedProcess:
        """Run one ``forml`` command, echoing it (and its stdout when ``show``)."""
        click.secho(f'\n$ forml {" ".join(args)}', fg='cyan', bold=True)
        done = self.project.run_forml(self.home, *args, cwd=cwd or self.home)
        if show and done.stdout.strip():
            click.echo(done.stdout.rstrip())
        if self.verbose:
            click.echo(done.stderr.rstrip(), err=True)
        self.last = done
        return done

    def expect(self, check: typing.Callable[[], bool], what: str) -> None:
        """Fail the demo (with the command's output) unless ``check`` holds."""
        if not check():
            raise StepFailed(
                f'Expected {what} in {self.registry_url}, but it is not there. The forml CLI said:\n{_tail(self.last)}'
            )
        click.secho(f'  ok: {what} committed in {self.registry_url}', fg='green')

    def generations(self) -> list[int]:
        return [int(g) for g in self.registry.generations(self.project.PROJECT, self.project.RELEASE)]

    def serve_one(self) -> None:
        """Start ``forml application serve``, ask for one prediction over HTTP, stop the gateway."""
        url = f'http://127.0.0.1:{self.gateway_port}/{self.project.PROJECT}'
        click.secho('\n$ forml application serve   (in the background)', fg='cyan', bold=True)
        with Gateway(self.project, self.home) as gateway:
            body = json.dumps(self.project.QUERY).encode()
            click.echo(f'$ curl -X POST -H "Content-Type: application/json" -d \'{body.decode()}\' {url}')
            try:
                answer = gateway.post(url, body)
            except (OSError, urllib.error.HTTPError) as err:
                raise StepFailed(f'The gateway did not answer: {err}\n{gateway.output()}') from err
        click.echo(answer)
        click.secho('  ok: prediction served by the latest generation loaded from the bucket', fg='green')

    def print_tree(self) -> None:
        click.secho(f'\nKeys in s3://{BUCKET}:', bold=True)
        objects = sorted((path.split('/', 1)[1], entry.size) for path, entry in self.store.walk(BUCKET))
        for line in render_tree(objects):
            click.echo(line)


class Gateway:
    """``forml application serve`` in its own process group; stopped with SIGINT to the group."""

    def __init__(self, project: typing.Any, home: pathlib.Path):
        self._project = project
        self._home = home
        self._log = home / 'gateway.log'
        self._process: subprocess.Popen | None = None

    def __enter__(self) -> 'Gateway':
        with self._log.open('w') as log:
            self._process = subprocess.Popen(  # our own forml CLI
                [*self._project.forml_command(), 'application', 'serve'],
                cwd=self._home,
                env=self._project.forml_env(self._home),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=lifetime.die_with_parent,  # (a killed demo leaves no gateway behind)
            )
        return self

    def __exit__(self, *exc: object) -> None:
        stop(self._process)

    def output(self) -> str:
        return self._log.read_text()[-3000:] if self._log.exists() else ''

    def post(self, url: str, body: bytes, timeout: float = 90) -> str:
        """POST ``body`` as JSON once the gateway listens (retrying while it starts); the response text."""
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise OSError(f'forml application serve exited with {self._process.returncode}')
            request = urllib.request.Request(url, body, {'Content-Type': 'application/json'}, method='POST')
            try:
                with urllib.request.urlopen(request, timeout=60) as response:  # http://127.0.0.1
                    return response.read().decode()
            except urllib.error.HTTPError:
                raise
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)


def stop(process: subprocess.Popen | None, timeout: float = 20) -> None:
    """Stop a process started with ``start_new_session``: SIGINT to its group (uvicorn's clean stop), then KILL."""
    if process is None or process.poll() is not None:
        return
    for signum, wait in ((signal.SIGINT, timeout), (signal.SIGKILL, 5)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)
        try:
            process.wait(wait)
            break
        except subprocess.TimeoutExpired:
            continue
    with contextlib.suppress(ProcessLookupError):  # children left behind in the group
        os.killpg(process.pid, signal.SIGKILL)


def render_tree(objects: typing.Iterable[tuple[str, int]]) -> list[str]:
    """Sorted ``(key, size)`` pairs as an indented tree, directories once, sizes on the leaves."""
    from forml_s3.ops.snapshot import human

    lines: list[str] = []
    shown: list[str] = []
    for key, size in objects:
        *folders, leaf = key.split('/')
        common = 0
        while common < min(len(shown), len(folders)) and shown[common] == folders[common]:
            common += 1
        for depth in range(common, len(folders)):
            lines.append(f'{"  " * depth}{folders[depth]}/')
        shown = folders
        lines.append(f'{"  " * len(folders)}{leaf}  ({human(size)})')
    return lines


def parse_predictions(stdout: str) -> list[float]:
    """The numbers of the array ``forml model apply`` prints to its stdout sink (empty if none)."""
    start, end = stdout.find('['), stdout.rfind(']')
    if start < 0 or end < start:
        return []
    try:
        return [float(value) for value in stdout[start + 1 : end].replace('[', ' ').replace(']', ' ').split()]
    except ValueError:
        return []


def _tail(done: subprocess.CompletedProcess | None) -> str:
    if done is None:
        return ''
    return (done.stdout + done.stderr)[-3000:]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@click.command(name='serve-s3')
@click.option('-p', '--port', type=int, default=0, show_default=True, help='Port on 127.0.0.1 (0: a free one).')
@click.option('-b', '--bucket', multiple=True, default=['forml'], show_default=True, help='Bucket to create.')
@click.option(
    '--state',
    type=click.Path(file_okay=False, exists=True, path_type=pathlib.Path),
    help='A folder kept by `forml-s3 demo --keep`: serve its bucket on its port, and save it back on Ctrl-C.',
)
@click.option('-v', '--verbose', is_flag=True, help='Log every request.')
def serve_s3(port: int, bucket: tuple[str, ...], state: pathlib.Path | None, verbose: bool) -> None:
    """Run the embedded S3 endpoint (moto's server) on 127.0.0.1 until Ctrl-C.

    Prints the endpoint and the environment that points boto3, s3fs and the forml CLI at it
    (AWS_ENDPOINT_URL and dummy credentials). Data lives in memory and is gone when it stops, unless --state
    names a folder kept by the demo: then its bucket is served again and saved back when the server stops.
    """
    from forml_s3.demo import endpoint as embedded

    if why := embedded.missing():
        raise click.ClickException(why)
    if state is None:
        argv = ['--port', str(port)] + [arg for name in bucket for arg in ('--bucket', name)]
        embedded.main(argv + (['--verbose'] if verbose else []))
        return
    from forml_s3.demo import snapshot

    try:
        recorded = snapshot.endpoint(state)
    except FileNotFoundError:
        raise click.ClickException(
            f'{state} holds no saved bucket ({snapshot.FOLDER}/endpoint.json): keep one with `forml-s3 demo --keep DIR`'
        ) from None
    try:
        server = embedded.Server(port or recorded['port'], verbose=verbose).start()
    except OSError as err:
        raise click.ClickException(
            f'Cannot listen on 127.0.0.1:{port or recorded["port"]}, the port the kept config.toml uses ({err}): '
            'stop what holds it, or pass --port and change endpoint_url in the kept config.toml'
        ) from None
    try:
        restored = snapshot.restore(server.client(), state)
        click.echo(f'Embedded S3 endpoint: {server.endpoint}, bucket s3://{recorded["bucket"]} ({restored} objects)')
        click.echo(f'FORML_HOME={state / "home"} forml ... uses it. Press Ctrl-C to stop (the bucket is saved back).')
        stopped = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stopped.set())
        while not stopped.wait(1):
            pass
        saved = snapshot.save(server.client(), recorded['bucket'], server.port, state)
        click.echo(f'Saved {saved} objects to {state}. Stopped.')
    finally:
        server.stop()
