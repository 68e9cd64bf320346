"""The workloads, as each provider does them.

Every provider implements the same jobs (one per table row) on its own bucket or directory:

=================  ====================================================================================
``push``           push a release package (``Sizes.package`` bytes of incompressible data)
``small``          write ``Sizes.small_count`` states of ``Sizes.small_size`` one at a time, close a generation
``large_write``    write one ``Sizes.large`` state and close a generation
``large_read``     open that generation and read the state back (fresh process, empty local cache)
``list``           list a release with ``Sizes.generations`` generations (fresh process)
``cli``            a cold ``forml model list <project> <release>`` of that release (the real CLI, a subprocess)
``read_all``       open a generation and read every one of its ``Sizes.small_count`` states (fresh process)
``mount_first``    mount a release with a ``Sizes.package`` package into an empty staging directory
``mount_second``   mount it again from a second process on the same machine (same cache and staging)
=================  ====================================================================================

``setup(name)`` prepares what a job reads (untimed, once per run); ``job(name, rep)`` returns a :class:`Job`
whose ``run`` is what the clock measures. Before the clock starts, each provider makes one request to open its
client and connection (``warm``), and the ForML providers make the listing calls ForML itself makes before it
uses a level (``prime``): the clock measures the operation, not client construction.

The floors (raw boto3, raw s3fs) do the same data reads and writes with no registry protocol: the same objects,
the same part size and concurrency as forml-s3 (taken from :mod:`forml_s3.storage.s3` and
:mod:`forml_s3.runtime.transfers` by the harness), plus a small JSON object standing for each commit marker.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import datetime
import io
import json
import os
import pathlib
import shutil
import subprocess
import sys
import typing
import uuid
import zipfile

MiB = 2**20
KiB = 2**10

RELEASE = '1.0'
PROJECTS = {
    'push': 'benchpush',
    'small': 'benchsmall',
    'large_write': 'benchlargew',
    'large_read': 'benchlarger',
    'list': 'benchlist',
    'cli': 'benchlist',  # lists the release the ``list`` setup made
    'read_all': 'benchread',
    'mount_first': 'benchmount',
    'mount_second': 'benchmount',
}
"""Project of each job: letters only, because ForML's MLflow provider accepts only ``\\w+`` experiment names."""

SETUP_OF = {
    'small': 'small',
    'large_write': 'large_write',
    'large_read': 'large_read',
    'list': 'list',
    'read_all': 'read_all',
    'mount_first': 'mount',
}
"""The setup each job needs (jobs not named here need none, or reuse another's: ``cli`` and ``mount_second``)."""

PACKAGE_MODULE = 'benchpkg'
WRITE_SLICE = 256 * 2**10
"""How much of a downloaded part a floor writes to a file at a time (forml-s3 writes its chunks of this size)."""


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Workload sizes (full run, or ``--quick``)."""

    package: int
    small_count: int
    small_size: int
    large: int
    generations: int
    repetitions: int


FULL = Sizes(package=50 * MiB, small_count=100, small_size=64 * KiB, large=256 * MiB, generations=1000, repetitions=5)
QUICK = Sizes(package=4 * MiB, small_count=20, small_size=16 * KiB, large=40 * MiB, generations=100, repetitions=1)


@dataclasses.dataclass(frozen=True)
class Context:
    """What a child process needs to know (JSON-able: it crosses the process boundary)."""

    provider: str
    endpoint: str
    bucket: str
    workdir: str
    """The provider's own local directory (caches, staging, posix registry, ForML homes)."""
    packages: str
    """Release packages built once by the parent (see :func:`package_path`)."""
    sizes: Sizes
    part_size: int
    """forml-s3's multipart part / ranged GET size: the floors use the same."""
    part_concurrency: int
    """forml-s3's parts in flight per large transfer: the floors use the same."""
    workers: int
    """forml-s3's background transfer pool size: the floors' thread pools use the same."""
    pool_connections: int
    """forml-s3's HTTP connection pool size: the floors' clients use the same."""
    mlflow_uri: str | None = None
    repo: str = ''
    """The repository root (on ``PYTHONPATH`` of subprocesses that import :mod:`benchmarks`)."""

    @classmethod
    def from_dict(cls, data: dict[str, typing.Any]) -> Context:
        return cls(**{**data, 'sizes': Sizes(**data['sizes'])})


@dataclasses.dataclass
class Job:
    """One measured operation: ``make_input`` runs before the clock (its memory counts), ``run`` is timed."""

    run: typing.Callable[[typing.Any], dict[str, typing.Any] | None]
    make_input: typing.Callable[[], typing.Any] | None = None
    peak_is_subprocess: bool = False
    """The memory that matters is the peak RSS of a subprocess ``run`` waits for (the forml CLI)."""


def package_path(packages: str | pathlib.Path, project: str, version: str) -> pathlib.Path:
    return pathlib.Path(packages) / f'{project}-{version}.4ml'


def build_package(packages: str | pathlib.Path, project: str, version: str, size: int) -> pathlib.Path:
    """A real ForML package (``.4ml``) of a one-module project carrying ``size`` bytes of random data."""
    from forml import project as prj

    path = package_path(packages, project, version)
    if path.exists():
        return path
    source = pathlib.Path(packages) / 'src' / f'{project}-{version}'
    (source / PACKAGE_MODULE).mkdir(parents=True, exist_ok=True)
    (source / PACKAGE_MODULE / '__init__.py').write_text(f'VERSION = {version!r}\n')
    if size:
        (source / PACKAGE_MODULE / 'data.bin').write_bytes(os.urandom(size))  # incompressible: stays ``size``
    prj.Package.create(source, prj.Manifest(project, version, PACKAGE_MODULE), path)
    shutil.rmtree(source)
    return path


def push_versions(sizes: Sizes) -> list[str]:
    """The release versions the ``push`` job pushes, one per repetition (increasing: ForML requires it)."""
    return [f'1.0.{rep}' for rep in range(sizes.repetitions)]


def tag(states: typing.Sequence[uuid.UUID] = ()) -> typing.Any:
    """A ForML generation tag as a trainer makes it."""
    from forml.io import asset

    now = datetime.datetime(2026, 11, 24, 3, 4, 5)
    return asset.Tag(training=asset.Tag.Training(timestamp=now, ordinal=None), states=list(states))


def random_states(count: int, size: int) -> list[tuple[uuid.UUID, bytes]]:
    return [(uuid.uuid4(), os.urandom(size)) for _ in range(count)]


def extract(archive: pathlib.Path, target: pathlib.Path) -> None:
    """Unzip a package next to ``target`` and rename it into place (what a raw client would do to stage it)."""
    temp = target.with_name(f'.{target.name}.{os.getpid()}')
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(temp)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, target)


class Provider:
    """One provider's way of doing the jobs; subclasses implement ``setup_*`` and ``job_*``."""

    name: str = ''
    s3: bool = True
    """Whether the provider's bytes go through the S3 endpoint (posix: local disk)."""
    groups: tuple[str, ...] | None = None
    """The workload groups it takes part in (None: all)."""

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.sizes = ctx.sizes
        self.workdir = pathlib.Path(ctx.workdir)

    def dir(self, *parts: str) -> pathlib.Path:
        path = self.workdir.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def setup(self, name: str) -> None:
        getattr(self, f'setup_{name}')()

    def job(self, name: str, rep: int) -> Job:
        return getattr(self, f'job_{name}')(rep)

    # the cold ``forml model list`` is the same for every ForML provider but for its registry section
    def registry_section(self, home: pathlib.Path) -> dict[str, typing.Any]:
        raise NotImplementedError

    def cli_env(self, home: pathlib.Path) -> dict[str, str]:
        return {}

    def job_cli(self, rep: int) -> Job:
        import toml

        from forml_s3 import demo

        home = self.dir('cli', str(rep))
        config = demo.render_config(home, registry_url='s3://unused/unused', cache_dir=home / 'cache')
        settings = toml.loads(config.read_text())
        settings['REGISTRY'] = {'default': 'bench', 'bench': self.registry_section(home)}
        if self.name.startswith('forml-s3'):
            settings['REGISTRY']['path'] = ['forml_s3.registry']
        config.write_text(toml.dumps(settings))
        project = PROJECTS['cli']
        env = self.cli_env(home)

        def run(_: typing.Any) -> dict[str, typing.Any]:
            done = demo.run_forml(home, 'model', 'list', project, RELEASE, env=env, timeout=600)
            listed = [line for line in done.stdout.split() if line.strip().isdigit()]
            # the forml CLI exits 0 on its own errors: the caller checks ``listed`` against the expected count
            return {'listed': len(listed), 'returncode': done.returncode, 'stderr_tail': done.stderr[-2000:]}

        return Job(run, peak_is_subprocess=True)


# --- providers of ForML's registry interface: forml-s3, ForML's posix and MLflow registries ---------------------
def keys(job: str) -> tuple[typing.Any, typing.Any]:
    """The project and release of a job as ForML's key objects (what ForML passes to a registry: the MLflow
    provider's caches are keyed by them, so plain strings would miss)."""
    from forml.io import asset

    return asset.Project.Key(PROJECTS[job]), asset.Release.Key(RELEASE)


class _Forml(Provider):
    """A provider of ``forml.io.asset.Registry``, driven through the calls ForML makes, in ForML's order."""

    def registry(self, tag_: str) -> typing.Any:
        """A new registry instance; ``tag_`` names its local cache and staging directories."""
        raise NotImplementedError

    def warm(self) -> None:
        """Open the client and its first connection before the clock starts (nothing to open on local disk)."""

    def prime(self, registry: typing.Any, job: str, generations: bool = True) -> None:
        """The listings ForML makes before it uses a release. The MLflow provider needs them: it resolves projects,
        releases and generations to MLflow entities only by listing them."""
        project, release = keys(job)
        list(registry.projects())
        list(registry.releases(project))
        if generations:
            list(registry.generations(project, release))

    # setups
    def _release(self, job: str, size: int = 0) -> typing.Any:
        from forml import project as prj

        registry = self.registry('setup')
        registry.push(prj.Package(build_package(self.dir('packages'), PROJECTS[job], RELEASE, size)))
        return registry

    def _generation(self, job: str, states: list[tuple[uuid.UUID, bytes]]) -> None:
        registry = self._release(job)
        project, release = keys(job)
        for sid, state in states:
            registry.write(project, release, sid, state)
        registry.close(project, release, 1, tag([s for s, _ in states]))

    def setup_small(self) -> None:
        self._release('small')

    def setup_large_write(self) -> None:
        self._release('large_write')

    def setup_large_read(self) -> None:
        self._generation('large_read', random_states(1, self.sizes.large))

    def setup_read_all(self) -> None:
        self._generation('read_all', random_states(self.sizes.small_count, self.sizes.small_size))

    def setup_list(self) -> None:
        registry = self._release('list')
        project, release = keys('list')
        for generation in range(1, self.sizes.generations + 1):
            registry.close(project, release, generation, tag())

    def setup_mount(self) -> None:
        from forml import project as prj

        self.registry('setup').push(prj.Package(package_path(self.ctx.packages, PROJECTS['mount_first'], RELEASE)))

    # jobs
    def job_push(self, rep: int) -> Job:
        from forml import project as prj

        registry = self.registry(f'push-{rep}')
        package = prj.Package(package_path(self.ctx.packages, PROJECTS['push'], push_versions(self.sizes)[rep]))
        self.warm()
        return Job(lambda _: registry.push(package))

    def _write_close(self, job: str, rep: int, count: int, size: int) -> Job:
        from forml.io import asset

        project, release = keys(job)
        registry = self.registry(f'{job}-{rep}')
        self.warm()
        self.prime(registry, job)

        def run(states: list[tuple[uuid.UUID, bytes]]) -> None:
            for sid, state in states:  # one at a time, as ForML's runner dumps them
                registry.write(project, release, sid, state)
            registry.close(project, release, asset.Generation.Key(rep + 1), tag([s for s, _ in states]))

        return Job(run, lambda: random_states(count, size))

    def job_small(self, rep: int) -> Job:
        return self._write_close('small', rep, self.sizes.small_count, self.sizes.small_size)

    def job_large_write(self, rep: int) -> Job:
        return self._write_close('large_write', rep, 1, self.sizes.large)

    def _open_read(self, job: str, rep: int) -> Job:
        from forml.io import asset

        project, release = keys(job)
        generation = asset.Generation.Key(1)
        registry = self.registry(f'{job}-{rep}')
        self.warm()
        self.prime(registry, job)

        def run(_: typing.Any) -> dict[str, typing.Any]:
            opened = registry.open(project, release, generation)
            read = [registry.read(project, release, generation, sid) for sid in opened.states]
            return {'states': len(read), 'bytes': sum(len(r) for r in read)}

        return Job(run)

    def job_large_read(self, rep: int) -> Job:
        return self._open_read('large_read', rep)

    def job_read_all(self, rep: int) -> Job:
        return self._open_read('read_all', rep)

    def job_list(self, rep: int) -> Job:
        project, release = keys('list')
        registry = self.registry(f'list-{rep}')
        self.warm()
        self.prime(registry, 'list', generations=False)  # the generations listing is what the clock measures
        return Job(lambda _: {'listed': len(list(registry.generations(project, release)))})

    def _mount(self, rep: int) -> Job:
        project, release = keys('mount_first')
        registry = self.registry(f'mount-{rep}')  # both mounts of a repetition share cache and staging
        self.warm()
        self.prime(registry, 'mount_first', generations=False)

        def run(_: typing.Any) -> dict[str, typing.Any]:
            artifact = registry.mount(project, release)
            return {'installed': pathlib.Path(artifact.path).exists()}

        return Job(run)

    def job_mount_first(self, rep: int) -> Job:
        return self._mount(rep)

    def job_mount_second(self, rep: int) -> Job:
        return self._mount(rep)


class FormlS3(_Forml):
    """forml-s3 with its defaults (background uploads, prefetch, local cache, tag-based uncommitted marking)."""

    name = 'forml-s3'
    tagging = True

    @property
    def url(self) -> str:
        return f's3://{self.ctx.bucket}/registry'

    @property
    def options(self) -> dict[str, typing.Any]:
        from forml_s3.demo import endpoint as embedded

        return {
            'key': embedded.ACCESS_KEY,
            'secret': embedded.SECRET_KEY,
            'endpoint_url': self.ctx.endpoint,
            'client_kwargs': {'region_name': embedded.REGION},
        }

    def registry(self, tag_: str) -> typing.Any:
        from forml_s3.registry import Registry

        return Registry(
            self.url,
            storage_options=self.options,
            cache_dir=self.dir('cache', tag_),
            staging=self.dir('staging', tag_),
            tag_uncommitted=self.tagging,
        )

    def warm(self) -> None:
        """One HEAD and one GET through a separate store: they create the s3fs client the registry then shares
        (fsspec caches file system instances per thread and options) and the obstore client shared per s3fs
        client, and open the first connection of each (the HEAD through aiobotocore, the GET of the missing object
        through obstore, which also fetches its credentials), as the floors open theirs, without touching the
        registry's own listing caches."""
        from forml_s3 import storage

        store = storage.open_store(self.url, self.options)
        store.exists(f'{self.ctx.bucket}/warm-up')
        store.connect()
        with contextlib.suppress(FileNotFoundError):
            store.read(f'{self.ctx.bucket}/warm-up')

    def setup_list(self) -> None:
        from forml_s3.runtime import transfers

        registry = self._release('list')
        project, release = keys('list')
        transfers.run_all(lambda g: registry.close(project, release, g, tag()), range(1, self.sizes.generations + 1))

    def registry_section(self, home: pathlib.Path) -> dict[str, typing.Any]:
        section = {'provider': 's3', 'url': self.url, 'storage_options': self.options, 'cache_dir': str(home / 'cache')}
        return section if self.tagging else {**section, 'tag_uncommitted': False}


class FormlS3NoTag(FormlS3):
    """forml-s3 with ``tag_uncommitted = false``: no lifecycle tag on uncommitted objects, so no tag to clear at
    commit. Not a recommended setting (abandoned uploads are then left to ``forml-s3 gc``); it is here to show
    what the tag costs."""

    name = 'forml-s3-notag'
    tagging = False
    groups = ('push', 'small', 'large_write')  # the workloads that write: nothing to show elsewhere


# --- the floors: raw boto3 and raw s3fs -----------------------------------------------------------------------
class _Floor(Provider):
    """Shared shape of the floors: keys like forml-s3's, a JSON object standing for each marker."""

    root = 'registry'

    def key(self, job: str, *parts: str) -> str:
        return '/'.join((self.root, PROJECTS[job], RELEASE, *parts))

    def state_key(self, job: str, sid: uuid.UUID) -> str:
        return self.key(job, 'states', f'{sid}.bin')

    def marker_key(self, job: str, generation: int) -> str:
        return self.key(job, 'generations', f'{generation}.json')

    def package_key(self, job: str, version: str = RELEASE) -> str:
        return '/'.join((self.root, PROJECTS[job], version, 'package.4ml'))

    @staticmethod
    def marker(sids: typing.Iterable[uuid.UUID]) -> bytes:
        return json.dumps({'states': [str(s) for s in sids]}).encode()

    # primitives each floor implements
    def put(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        raise NotImplementedError

    def put_large(self, key: str, data: bytes) -> None:
        raise NotImplementedError

    def upload(self, key: str, path: pathlib.Path) -> None:
        raise NotImplementedError

    def get(self, key: str) -> bytes:
        raise NotImplementedError

    def get_many(self, keys: list[str]) -> list[bytes]:
        raise NotImplementedError

    def get_large(self, key: str) -> typing.Any:
        raise NotImplementedError

    def download(self, key: str, path: pathlib.Path) -> None:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        raise NotImplementedError

    def warm(self) -> None:
        raise NotImplementedError

    def cli_code(self, prefix: str) -> str:
        raise NotImplementedError

    # setups
    def setup_small(self) -> None:
        pass

    def setup_large_write(self) -> None:
        pass

    def setup_large_read(self) -> None:
        sid = uuid.uuid4()
        self.put_large(self.state_key('large_read', sid), os.urandom(self.sizes.large))
        self.put(self.marker_key('large_read', 1), self.marker([sid]))

    def setup_list(self) -> None:
        self.put_many([(self.marker_key('list', g), self.marker([])) for g in range(1, self.sizes.generations + 1)])

    def setup_read_all(self) -> None:
        states = random_states(self.sizes.small_count, self.sizes.small_size)
        self.put_many([(self.state_key('read_all', s), d) for s, d in states])
        self.put(self.marker_key('read_all', 1), self.marker([s for s, _ in states]))

    def setup_mount(self) -> None:
        self.upload(self.package_key('mount_first'), package_path(self.ctx.packages, PROJECTS['mount_first'], RELEASE))

    # jobs
    def job_push(self, rep: int) -> Job:
        version = push_versions(self.sizes)[rep]
        path = package_path(self.ctx.packages, PROJECTS['push'], version)
        self.warm()

        def run(_: typing.Any) -> None:
            self.upload(self.package_key('push', version), path)
            self.put(f'{self.root}/{PROJECTS["push"]}/releases/{version}.json', b'{"release": "%s"}' % version.encode())

        return Job(run)

    def _write_close(self, job: str, rep: int, count: int, size: int) -> Job:
        self.warm()

        def run(states: list[tuple[uuid.UUID, bytes]]) -> None:
            if count == 1:
                self.put_large(self.state_key(job, states[0][0]), states[0][1])
            else:
                self.put_many([(self.state_key(job, s), d) for s, d in states])
            self.put(self.marker_key(job, rep + 1), self.marker(s for s, _ in states))

        return Job(run, lambda: random_states(count, size))

    def job_small(self, rep: int) -> Job:
        return self._write_close('small', rep, self.sizes.small_count, self.sizes.small_size)

    def job_large_write(self, rep: int) -> Job:
        return self._write_close('large_write', rep, 1, self.sizes.large)

    def job_large_read(self, rep: int) -> Job:
        self.warm()

        def run(_: typing.Any) -> dict[str, typing.Any]:
            sids = json.loads(self.get(self.marker_key('large_read', 1)))['states']
            data = self.get_large(self.key('large_read', 'states', f'{sids[0]}.bin'))
            return {'states': 1, 'bytes': len(data)}

        return Job(run)

    def job_read_all(self, rep: int) -> Job:
        self.warm()

        def run(_: typing.Any) -> dict[str, typing.Any]:
            sids = json.loads(self.get(self.marker_key('read_all', 1)))['states']
            read = self.get_many([self.key('read_all', 'states', f'{s}.bin') for s in sids])
            return {'states': len(read), 'bytes': sum(len(r) for r in read)}

        return Job(run)

    def job_list(self, rep: int) -> Job:
        self.warm()
        prefix = self.key('list', 'generations') + '/'
        return Job(lambda _: {'listed': len(self.list(prefix))})

    def _mount(self, rep: int) -> Job:
        target = self.dir('staging', f'mount-{rep}') / PROJECTS['mount_first'] / RELEASE
        self.warm()

        def run(_: typing.Any) -> dict[str, typing.Any]:
            if not target.exists():  # a raw client's "second mount": the staged tree is there, fetch nothing
                archive = target.with_name(f'{target.name}.4ml')
                archive.parent.mkdir(parents=True, exist_ok=True)
                self.download(self.package_key('mount_first'), archive)
                extract(archive, target)
            return {'installed': target.exists()}

        return Job(run)

    def job_mount_first(self, rep: int) -> Job:
        return self._mount(rep)

    def job_mount_second(self, rep: int) -> Job:
        return self._mount(rep)

    def job_cli(self, rep: int) -> Job:
        """The floor of a cold CLI listing: a fresh interpreter importing the client and making the same LIST."""
        code = self.cli_code(self.key('list', 'generations') + '/')
        env = {**os.environ, 'PYTHONPATH': self.ctx.repo}

        def run(_: typing.Any) -> dict[str, typing.Any]:
            done = subprocess.run(
                [sys.executable, '-c', code], capture_output=True, text=True, env=env, timeout=600, check=False
            )
            return {'listed': int(done.stdout.strip() or 0), 'returncode': done.returncode}

        return Job(run, peak_is_subprocess=True)


class Boto3(_Floor):
    """Raw boto3: s3transfer for large objects (forml-s3's part size and concurrency), a thread pool of
    forml-s3's size for many small ones."""

    name = 'boto3'

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        import boto3
        from boto3.s3 import transfer
        from botocore import config

        self.client = boto3.client(
            's3',
            endpoint_url=ctx.endpoint,
            region_name='us-east-1',
            aws_access_key_id='testing',
            aws_secret_access_key='testing',
            config=config.Config(max_pool_connections=ctx.pool_connections),
        )
        self.transfer = transfer.TransferConfig(
            multipart_threshold=2 * ctx.part_size,  # s3fs (so forml-s3) splits objects from twice the part size up
            multipart_chunksize=ctx.part_size,
            max_concurrency=ctx.part_concurrency,
            use_threads=True,
            preferred_transfer_client='classic',
        )

    def warm(self) -> None:
        self.client.head_bucket(Bucket=self.ctx.bucket)

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.ctx.bucket, Key=key, Body=data)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        with concurrent.futures.ThreadPoolExecutor(self.ctx.workers) as pool:
            list(pool.map(lambda item: self.put(*item), items))

    def put_large(self, key: str, data: bytes) -> None:
        self.client.upload_fileobj(io.BytesIO(data), self.ctx.bucket, key, Config=self.transfer)

    def upload(self, key: str, path: pathlib.Path) -> None:
        self.client.upload_file(str(path), self.ctx.bucket, key, Config=self.transfer)

    def get(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.ctx.bucket, Key=key)['Body'].read()

    def get_many(self, keys: list[str]) -> list[bytes]:
        with concurrent.futures.ThreadPoolExecutor(self.ctx.workers) as pool:
            return list(pool.map(self.get, keys))

    def get_large(self, key: str) -> typing.Any:
        buffer = io.BytesIO()
        self.client.download_fileobj(self.ctx.bucket, key, buffer, Config=self.transfer)
        return buffer.getbuffer()  # the bytes as they landed, no extra copy

    def download(self, key: str, path: pathlib.Path) -> None:
        self.client.download_file(self.ctx.bucket, key, str(path), Config=self.transfer)

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        for page in self.client.get_paginator('list_objects_v2').paginate(
            Bucket=self.ctx.bucket, Prefix=prefix, Delimiter='/'
        ):
            keys.extend(o['Key'] for o in page.get('Contents', ()))
        return keys

    def cli_code(self, prefix: str) -> str:
        return (
            'import boto3\n'
            f"c = boto3.client('s3', endpoint_url={self.ctx.endpoint!r}, region_name='us-east-1', "
            "aws_access_key_id='testing', aws_secret_access_key='testing')\n"
            f"p = c.get_paginator('list_objects_v2').paginate(Bucket={self.ctx.bucket!r}, Prefix={prefix!r}, "
            "Delimiter='/')\n"
            "print(sum(len(page.get('Contents', ())) for page in p))\n"
        )


class S3fs(_Floor):
    """Raw s3fs: its multipart / ranged calls with forml-s3's part size and concurrency, its batch calls
    (``pipe``/``cat``) with forml-s3's pool size as batch size, listings cache off."""

    name = 's3fs'

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        import s3fs

        self.fs = s3fs.S3FileSystem(
            key='testing',
            secret='testing',
            endpoint_url=ctx.endpoint,
            client_kwargs={'region_name': 'us-east-1'},
            config_kwargs={'max_pool_connections': ctx.pool_connections},
            use_listings_cache=False,
            skip_instance_cache=True,
        )

    def path(self, key: str) -> str:
        return f'{self.ctx.bucket}/{key}'

    def warm(self) -> None:
        self.fs.exists(self.path('warm-up'))

    def put(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(key), data)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        self.fs.pipe({self.path(k): d for k, d in items}, batch_size=self.ctx.workers)

    def put_large(self, key: str, data: bytes) -> None:
        self.fs.pipe_file(self.path(key), data, chunksize=self.ctx.part_size, max_concurrency=self.ctx.part_concurrency)

    def upload(self, key: str, path: pathlib.Path) -> None:
        self.fs.put_file(
            str(path), self.path(key), chunksize=self.ctx.part_size, max_concurrency=self.ctx.part_concurrency
        )

    def get(self, key: str) -> bytes:
        return self.fs.cat_file(self.path(key))

    def get_many(self, keys: list[str]) -> list[bytes]:
        paths = [self.path(k) for k in keys]
        found = self.fs.cat(paths, batch_size=self.ctx.workers)
        return [found[p] for p in paths]

    def get_large(self, key: str) -> typing.Any:
        return self.fs.cat_file(self.path(key), chunksize=self.ctx.part_size, max_concurrency=self.ctx.part_concurrency)

    def download(self, key: str, path: pathlib.Path) -> None:
        self.fs.get_file(
            self.path(key), str(path), chunksize=self.ctx.part_size, max_concurrency=self.ctx.part_concurrency
        )

    def list(self, prefix: str) -> list[str]:
        return [e['name'] for e in self.fs.ls(self.path(prefix), detail=True) if e['type'] == 'file']

    def cli_code(self, prefix: str) -> str:
        return (
            'import s3fs\n'
            f"fs = s3fs.S3FileSystem(key='testing', secret='testing', endpoint_url={self.ctx.endpoint!r}, "
            "client_kwargs={'region_name': 'us-east-1'}, use_listings_cache=False)\n"
            f'print(len(fs.ls({self.path(prefix)!r})))\n'
        )


class Obstore(_Floor):
    """Raw obstore (Rust's ``object_store``): ranged GETs of forml-s3's part size, as many in flight as forml-s3's,
    for large reads; its multipart put of that part size and concurrency for large writes; a thread pool of
    forml-s3's size for many small objects. A large read hands over one contiguous buffer (the parts copied into
    it, as ForML needs a state's bytes in one piece); so does forml-s3."""

    name = 'obstore'

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        from obstore.store import S3Store

        self.store = S3Store(
            ctx.bucket,
            endpoint=ctx.endpoint,
            region='us-east-1',
            access_key_id='testing',
            secret_access_key='testing',
            client_options={'allow_http': True, 'timeout': '300s'},
        )

    def warm(self) -> None:
        import obstore

        with contextlib.suppress(FileNotFoundError):  # obstore's NotFoundError is one
            obstore.head(self.store, 'warm-up')

    def put(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, key, data, use_multipart=False)

    def put_many(self, items: list[tuple[str, bytes]]) -> None:
        with concurrent.futures.ThreadPoolExecutor(self.ctx.workers) as pool:
            list(pool.map(lambda item: self.put(*item), items))

    def put_large(self, key: str, data: bytes) -> None:
        import obstore

        obstore.put(self.store, key, data, chunk_size=self.ctx.part_size, max_concurrency=self.ctx.part_concurrency)

    def upload(self, key: str, path: pathlib.Path) -> None:
        import obstore

        obstore.put(self.store, key, path, chunk_size=self.ctx.part_size, max_concurrency=self.ctx.part_concurrency)

    def get(self, key: str) -> bytes:
        import obstore

        return bytes(obstore.get(self.store, key).bytes())

    def get_many(self, keys: list[str]) -> list[bytes]:
        with concurrent.futures.ThreadPoolExecutor(self.ctx.workers) as pool:
            return list(pool.map(self.get, keys))

    def _ranges(self, key: str, land: typing.Callable[[int, typing.Any], None], size: int | None = None) -> None:
        """The object (of ``size``, else a HEAD asks) in ranged GETs of the part size, the part concurrency of them
        in flight; each part is handed to ``land`` with its offset as it arrives (and freed after)."""
        import obstore

        if size is None:
            size = obstore.head(self.store, key)['size']

        def part(start: int) -> None:
            land(start, obstore.get_range(self.store, key, start=start, end=min(start + self.ctx.part_size, size)))

        with concurrent.futures.ThreadPoolExecutor(self.ctx.part_concurrency) as pool:
            list(pool.map(part, range(0, size, self.ctx.part_size)))

    def get_large(self, key: str) -> typing.Any:
        import obstore

        buffer = bytearray(obstore.head(self.store, key)['size'])  # the HEAD is part of a hand-written ranged read

        def land(start: int, data: typing.Any) -> None:
            buffer[start : start + len(data)] = data

        self._ranges(key, land, len(buffer))
        return buffer

    def download(self, key: str, path: pathlib.Path) -> None:
        def land(start: int, data: typing.Any) -> None:
            # in slices: one pwrite of a whole 16 MiB part took 0.6-0.7 s here against 0.06-0.08 s for the same
            # bytes in 256 KiB writes (docs/benchmarks.md, "Large reads")
            view = memoryview(data)
            for offset in range(0, len(view), WRITE_SLICE):
                os.pwrite(file.fileno(), view[offset : offset + WRITE_SLICE], start + offset)

        with path.open('wb') as file:
            self._ranges(key, land)

    def list(self, prefix: str) -> list[str]:
        import obstore

        return [o['path'] for o in obstore.list_with_delimiter(self.store, prefix)['objects']]

    def cli_code(self, prefix: str) -> str:
        return (
            'import obstore\n'
            'from obstore.store import S3Store\n'
            f"s = S3Store({self.ctx.bucket!r}, endpoint={self.ctx.endpoint!r}, region='us-east-1', "
            "access_key_id='testing', secret_access_key='testing', client_options={'allow_http': True})\n"
            f"print(len(obstore.list_with_delimiter(s, {prefix!r})['objects']))\n"
        )


class Posix(_Forml):
    """ForML's ``forml.provider.registry.filesystem.posix`` registry on the local disk."""

    name = 'posix'
    s3 = False

    def registry(self, tag_: str) -> typing.Any:
        from forml.provider.registry.filesystem import posix

        return posix.Registry(self.dir('registry'), staging=self.dir('staging', tag_))

    def registry_section(self, home: pathlib.Path) -> dict[str, typing.Any]:
        return {'provider': 'posix', 'path': str(self.dir('registry'))}


class Mlflow(_Forml):
    """ForML's ``forml.provider.registry.mlflow`` provider against a local tracking server (one worker) whose
    artifact root is on the same S3 endpoint (clients write artifacts straight to S3: ``--no-serve-artifacts``)."""

    name = 'mlflow'

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        from benchmarks import httpcount

        httpcount.install()

    def registry(self, tag_: str) -> typing.Any:
        from forml.provider.registry import mlflow

        return mlflow.Registry(tracking_uri=self.ctx.mlflow_uri, staging=self.dir('staging', tag_))

    def warm(self) -> None:
        """Open the REST session and the S3 artifact client: list the artifacts of a run made for this."""
        from mlflow import tracking

        client = tracking.MlflowClient(self.ctx.mlflow_uri)
        marker = self.workdir / 'warm-run'
        if not marker.exists():
            experiment = client.create_experiment(f'benchwarm{uuid.uuid4().hex[:8]}')
            run = client.create_run(experiment)
            scratch = self.dir('warm') / 'warm.txt'
            scratch.write_text('warm')
            client.log_artifact(run.info.run_id, str(scratch))
            marker.write_text(run.info.run_id)
        client.list_artifacts(marker.read_text())

    def setup(self, name: str) -> None:
        self.warm()
        super().setup(name)

    def setup_list(self) -> None:
        """1,000 generations: the provider commits one generation per instance (its unbound generation is a run
        per session), so each generation gets a fresh instance; four at a time to keep the setup short."""
        self._release('list')
        project, release = keys('list')

        def close(generation: int) -> None:
            self.registry('setup').close(project, release, generation, tag())

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            list(pool.map(close, range(1, self.sizes.generations + 1)))

    def registry_section(self, home: pathlib.Path) -> dict[str, typing.Any]:
        return {'provider': 'mlflow', 'tracking_uri': self.ctx.mlflow_uri, 'staging': str(home / 'staging')}

    def cli_env(self, home: pathlib.Path) -> dict[str, str]:
        from benchmarks import httpcount

        site = httpcount.sitecustomize_dir(home)
        path = os.pathsep.join(p for p in (str(site), self.ctx.repo, os.environ.get('PYTHONPATH', '')) if p)
        return {'PYTHONPATH': path, httpcount.ENV_FILE: str(home / 'httpcount.json')}

    def job_cli(self, rep: int) -> Job:
        job = super().job_cli(rep)
        counts = self.dir('cli', str(rep)) / 'httpcount.json'

        def run(data: typing.Any) -> dict[str, typing.Any]:
            info = job.run(data) or {}
            if counts.exists():  # written by the CLI process itself at exit (see benchmarks.httpcount)
                info['http'] = json.loads(counts.read_text())
            return info

        return Job(run, peak_is_subprocess=True)


PROVIDERS: dict[str, type[Provider]] = {p.name: p for p in (FormlS3, FormlS3NoTag, Boto3, S3fs, Obstore, Posix, Mlflow)}
"""Every provider by name, in table order."""
