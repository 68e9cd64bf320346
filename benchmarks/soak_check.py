"""The soak's final check: ``python -m benchmarks.soak_check CONFIG_JSON``, in a fresh process with an empty cache,
straight to the server (no faults). Prints one JSON object: figures and the violations found.

What it holds the registry to, given the writers' logs (what each writer was told):

* ``forml-s3 verify`` finds nothing wrong but orphans: every listed release and generation is complete and
  every object a marker names matches its size and sha256;
* every state of every committed generation reads back, through a fresh provider, as its writer made it;
* every commit a writer was told succeeded (``acked``) is there, with the states it wrote (or the package it
  pushed); no generation number was acknowledged to two writers; no writer was told "conflict" for a
  generation its own marker holds;
* no committed object carries the ``uncommitted`` tag (the lifecycle rule would expire it);
* every orphan left by killed writers is tagged ``uncommitted`` (expirable) or is removed by ``forml-s3 gc``,
  and ``gc`` removes nothing a marker names: ``verify`` after ``gc`` finds the same commits whole and no orphan;
* nothing the scheduled ``gc`` runs deleted during the load (``gc-*.jsonl``) is named by a marker: no commit
  was made of, or kept, an object gc took.
"""

from __future__ import annotations

import collections
import json
import pathlib
import sys
import tempfile
import typing
import uuid

from benchmarks import soak_roles


def logs(folder: pathlib.Path, role: str = 'writer') -> list[dict[str, typing.Any]]:
    entries = []
    for path in sorted(folder.glob(f'{role}-*.jsonl')):
        for line in path.read_text().splitlines():
            if line.endswith('}'):  # a line cut by SIGKILL mid-write has no closing brace
                entries.append({**json.loads(line), 'log': path.name})
    return entries


def check(config: dict[str, typing.Any]) -> dict[str, typing.Any]:
    from forml_s3.model import layout
    from forml_s3.ops import snapshot as inspect

    violations: list[str] = []
    store = inspect.store_for(config['url'], config['options'])
    lay = layout.Layout(store.root)
    snap, problems = inspect.verify(store, checksums=True, orphans=True)
    violations += [f'verify: {p.kind}: {p.message}' for p in problems if p.kind != 'orphan']
    committed = {
        (r.name, g.number): g for p in snap.projects if p.name == soak_roles.PROJECT for r in p.releases
        for g in r.generations
    }  # fmt: skip
    releases = {r.name: r for p in snap.projects for r in p.releases}

    # every committed state reads back as written, through a fresh provider with an empty cache
    with tempfile.TemporaryDirectory(prefix='soak-check-') as temp:
        reg = soak_roles.registry(config, pathlib.Path(temp) / 'cache')
        for (release, number), generation in sorted(committed.items()):
            for sid in generation.states:
                data = reg.read(soak_roles.PROJECT, release, number, uuid.UUID(sid))
                if problem := soak_roles.state_problem(uuid.UUID(sid), data):
                    violations.append(f'generation {number} of {release}: {problem}')

    # what the writers were told, against what is there
    entries = logs(pathlib.Path(config['logs']))
    acked: dict[tuple[str, int], list[dict]] = collections.defaultdict(list)
    told: collections.Counter[str] = collections.Counter()
    for entry in entries:
        if entry['op'] in ('push', 'close') and entry['phase'] != 'begin':
            told[f'{entry["op"]} {entry["phase"]}'] += 1
        if entry['op'] == 'close' and entry['phase'] == 'acked':
            acked[(entry['release'], entry['generation'])].append(entry)
    lost = 0
    for (release, number), acks in sorted(acked.items()):
        if len(acks) > 1:
            violations.append(f'generation {number} of {release} acknowledged to {len(acks)} writers: {acks}')
        generation = committed.get((release, number))
        if generation is None or any(sorted(generation.states) != sorted(a['sids']) for a in acks):
            lost += 1
            violations.append(f'acknowledged generation {number} of {release} is missing or holds other states')
    for entry in entries:
        if entry['op'] == 'push' and entry['phase'] == 'acked':
            found = releases.get(entry['release'])
            if found is None or (found.package or {}).get('sha256') != entry['sha256']:
                lost += 1
                violations.append(f'acknowledged release {entry["release"]} is missing or holds another package')
        if (
            entry['op'] == 'close'
            and entry['phase'] == 'conflict'
            and (entry['release'], entry['generation']) in committed
            and _marker_writer(store, lay, entry['release'], entry['generation']).endswith(f':{entry["pid"]}')
        ):
            violations.append(
                f'writer {entry["pid"]} was told generation {entry["generation"]} of {entry["release"]} '
                f'was committed by another writer, but the marker is its own ({entry["error"][:200]})'
            )

    # a close that failed (retries exhausted) yet whose marker is there: the client cannot know; counted, not wrong
    ambiguous = sum(
        entry['op'] == 'close'
        and entry['phase'] == 'failed'
        and (entry['release'], entry['generation']) in committed
        and _marker_writer(store, lay, entry['release'], entry['generation']).endswith(f':{entry["pid"]}')
        for entry in entries
    )

    # committed objects must not be expirable; orphans must be
    named = sorted(snap.named())
    tagged = []
    if store.object_tags:
        tagged = [path for path in named if store.get_tags(path).get(layout.UNCOMMITTED_TAG[0])]
        violations += [
            f'committed object {store.url_of(p)} is tagged uncommitted (lifecycle would expire it)' for p in tagged
        ]
    orphans = snap.orphans()
    expirable = [o for o in orphans if store.object_tags and store.get_tags(o.path).get(layout.UNCOMMITTED_TAG[0])]
    uploads = store.multipart_uploads(store.root) if store.multipart else []

    # the scheduled gc runs during the load took nothing a marker names
    runs = [e for e in logs(pathlib.Path(config['logs']), 'gc') if e['phase'] not in ('begin', 'killed')]
    killed = sum(e['phase'] == 'killed' for e in logs(pathlib.Path(config['logs']), 'gc'))
    uris = {store.url_of(p) for p in named}
    for entry in runs:
        violations += [
            f'scheduled gc run {entry["run"]} deleted committed object {u}' for u in entry['deleted'] if u in uris
        ]
    scheduled = {
        'runs': len(runs) + killed,
        'killed': killed,
        'completed': sum(e['phase'] == 'acked' for e in runs),
        'failed': sum(e['phase'] == 'failed' for e in runs),
        'deleted': sum(len(e['deleted']) for e in runs),
        'aborted': sum(e['aborted'] for e in runs),
        'dropped': sum(e['dropped'] for e in runs),
        'spared': sum(len(e['spared']) for e in runs),
    }

    # gc: removes the orphans, nothing committed. Releases a killed writer's lease still names are spared until
    # the lease expires (its ttl, 10 minutes): every writer is dead by now, so the leases are dropped as their
    # expiry would, and a second gc must take the rest.
    deleted, spared = gc(config, violations)
    leases = [path for path, _ in store.walk(lay.leases())] if spared else []
    for path in leases:
        store.delete(path)
    if spared:
        deleted += gc(config, violations)[0]
    for uri in deleted:
        if uri in uris:
            violations.append(f'forml-s3 gc deleted committed object {uri}')
    after, problems = inspect.verify(store, checksums=False, orphans=True)
    violations += [f'after gc: {p.kind}: {p.message}' for p in problems]
    still = {(r.name, g.number) for p in after.projects for r in p.releases for g in r.generations}
    if still != set(committed):
        violations.append(f'generations changed across gc: {sorted(set(committed) ^ still)}')
    return {
        'releases': len(releases),
        'generations': len(committed),
        'objects': len(snap.objects),
        'told': dict(told),
        'acknowledged': {
            'generations': len(acked),
            'releases': sum(e['op'] == 'push' and e['phase'] == 'acked' for e in entries),
        },
        'lost': lost,
        'failed_but_committed': ambiguous,
        'orphans': len(orphans),
        'orphans_tagged_uncommitted': len(expirable),
        'orphan_bytes': sum(o.size for o in orphans),
        'multipart_uploads_left': len(uploads),
        'gc_deleted': len(deleted),
        'gc_spared_for_killed_writers_leases': len(spared),
        'killed_writers_leases': len(leases),
        'scheduled_gc': scheduled,
        'committed_tagged_uncommitted': len(tagged),
        'violations': violations,
    }


def gc(config: dict[str, typing.Any], violations: list[str]) -> tuple[list[str], list[str]]:
    """Run ``forml-s3 gc`` (straight at the server): the URIs it deleted, and the releases it spared (leased).
    The command runs in this process (already a fresh one, and one interpreter start less per run)."""
    from tests.helpers import run_cli

    done = run_cli('gc', config['url'], *config['cli_options'], *config['gc_args'])
    if done.exit_code:
        violations.append(f'forml-s3 gc exited {done.exit_code}: {done.stderr.strip()[-500:]}')
    deleted = [line.split()[1] for line in done.stdout.splitlines() if line.startswith('deleted ')]
    spared = [line.split()[1].rstrip(':') for line in done.stderr.splitlines() if line.startswith('spared ')]
    return deleted, spared


def _marker_writer(store: typing.Any, lay: typing.Any, release: str, number: int) -> str:
    from forml_s3.model import codec

    key = lay.generation_marker(soak_roles.PROJECT, release, number)
    return str(codec.loads(store.read(key), store.url_of(key)).get('writer', ''))


def main() -> None:
    print(json.dumps(check(json.loads(sys.argv[1]))), flush=True)


if __name__ == '__main__':
    main()
