"""``forml-s3 lifecycle`` (plan, apply, show, preview, remove), ``retire`` and ``pin``: thin click commands over
:mod:`forml_s3.ops.lifecycle` and :mod:`forml_s3.runtime.retention`.

Each takes the registry as a URL or, without one, the ForML config's (see :func:`.ops.registry_command`).

Exit codes: 0 success; 2 bad usage or input (invalid days, unknown storage class, a name that is not a valid
project, release or generation), or the bucket could not be read or written (missing, access denied).
"""

import datetime
import json
import typing

import click

from ..ops import policy as defaults
from .ops import Fatal, fatal_errors, open_store, progress_bar, registry_command


def _days(name: str, default: int, text: str, **extra: typing.Any) -> typing.Callable:
    """A ``--NAME DAYS`` option of the policy (0 leaves its rule out)."""
    shown = {'show_default': True} if default else {}
    return click.option(name, type=int, default=default, metavar='DAYS', help=text, **shown, **extra)


def policy_options(func: typing.Callable) -> typing.Callable:
    """The options that shape the rules forml-s3 recommends (0 days leaves a rule out; defaults: ops/policy.py)."""
    options = [
        _days(
            '--expire-uncommitted-after',
            defaults.EXPIRE_UNCOMMITTED_AFTER,
            'Expire uncommitted uploads (tag forml-s3=uncommitted: abandoned pushes and trainings). '
            'Must exceed your longest training. 0: no such rule.',
        ),
        click.option(
            '--expire-staging-after',
            type=int,
            hidden=True,
            deprecated='use --expire-uncommitted-after (the rule expires uncommitted uploads, not staging)',
        ),
        _days(
            '--abort-multipart-after',
            defaults.ABORT_MULTIPART_AFTER,
            'Abort multipart uploads left incomplete (a killed writer of a large state). 0: no such rule.',
        ),
        _days(
            '--expire-retired-after',
            defaults.EXPIRE_RETIRED_AFTER,
            'Expire retired generations (tag forml-s3=retired, see `forml-s3 retire`). 0: no such rule.',
        ),
        _days(
            '--transition-releases-after',
            0,
            "Move the registry's objects (128 KiB and larger) to --storage-class after DAYS. Default: never.",
        ),
        click.option(
            '--storage-class',
            default=defaults.STORAGE_CLASS,
            show_default=True,
            help='Target of --transition-releases-after: STANDARD_IA, ONEZONE_IA, INTELLIGENT_TIERING or '
            'GLACIER_IR (archives are refused: ForML could not read states from them).',
        ),
        _days(
            '--noncurrent-versions-after',
            0,
            'Expire noncurrent versions DAYS after they were replaced (versioned buckets). Default: never.',
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _policy(params: dict[str, typing.Any]):
    import dataclasses

    from forml_s3.ops import lifecycle

    names = [f.name for f in dataclasses.fields(lifecycle.Policy)]
    deprecated = params.pop('expire_staging_after')
    if deprecated is not None:
        params['expire_uncommitted_after'] = deprecated
    values = {name: params.pop(name) for name in names}
    for name, value in values.items():
        if name != 'storage_class' and value == 0:
            values[name] = None
    try:
        return lifecycle.Policy(**values)
    except Exception as err:
        raise click.BadParameter(str(err)) from err


def _s3_store(url: str | None, options: tuple[str, ...], registry: str | None):
    st = open_store(url, options, registry)
    with fatal_errors():
        _ = st.bucket  # lifecycle rules exist only on S3: say so before anything else
    return st


@click.group()
def lifecycle() -> None:
    """S3 lifecycle rules for a registry: what forml-s3 recommends, applied without touching other rules.

    S3 keeps one lifecycle configuration per bucket. forml-s3 owns the rules whose ID starts with
    "forml-s3:<registry prefix>/:" and replaces only those; every other rule of the bucket is kept as it is.
    Each subcommand works on the registry at URL or, without one, on the ForML config's ($FORML_HOME/config.toml;
    --registry NAME for another section). Rules expire uncommitted uploads (tag forml-s3=uncommitted), incomplete
    multipart uploads and retired
    generations (tag forml-s3=retired), and optionally move old objects to a cheaper class or expire
    noncurrent versions. S3 runs them about once a day.

    \b
    Typical use:
      forml-s3 lifecycle plan s3://my-bucket/forml --expire-retired-after 14
      forml-s3 lifecycle apply s3://my-bucket/forml --expire-retired-after 14 --dry-run
      forml-s3 lifecycle apply s3://my-bucket/forml --expire-retired-after 14
      forml-s3 lifecycle preview s3://my-bucket/forml --at 2027-01-01
    """


WHOLE_BUCKET = click.option(
    '--whole-bucket',
    is_flag=True,
    help='Accept rules that act on the whole bucket (a registry at the bucket root, or nested with another '
    'registry that has forml-s3 rules); the output lists what else in the bucket they would touch.',
)


def _outside(st, rules: list[dict[str, typing.Any]], limit: int = 10) -> None:
    """Print (to stderr) what the rules would touch in the bucket that is not the registry's, from the preview."""
    from forml_s3.ops import lifecycle as lc

    found = lc.outside(st, lc.preview(st, rules))
    if not found:
        click.echo(f'--whole-bucket: the rules touch nothing in s3://{st.bucket} but the registry, as of now', err=True)
    for effect, targets in found:
        click.echo(f'--whole-bucket: {effect.rule.get("ID")} would {effect.action} for {len(targets)} objects, '
                   'versions or uploads outside the registry:', err=True)  # fmt: skip
        what = 'upload' if lc.action_of(effect.rule)[1] == 'uploads' else 'version'
        for target in targets[:limit]:
            click.echo(f'    {target.key}{f" ({what} {target.version})" if target.version else ""}', err=True)
        if len(targets) > limit:
            click.echo(f'    ... {len(targets) - limit} more (`forml-s3 lifecycle preview --planned --json`)', err=True)


@registry_command(lifecycle)
@policy_options
@WHOLE_BUCKET
def plan(
    url: str | None, registry: str | None, options: tuple[str, ...], whole_bucket: bool, **params: typing.Any
) -> None:
    """Print the lifecycle rules forml-s3 recommends for the registry at URL.

    The output is the JSON PutBucketLifecycleConfiguration takes (`aws s3api
    put-bucket-lifecycle-configuration --lifecycle-configuration file://rules.json`), with only this
    registry's rules: `forml-s3 lifecycle apply` merges them with the bucket's other rules. Reads the bucket's
    current rules (to refuse a registry nested with another) and, with --whole-bucket, previews the rules.
    """
    from forml_s3.ops import lifecycle as lc

    policy = _policy(params)
    st = _s3_store(url, options, registry)
    with fatal_errors():
        lc.check_scope(st, [], whole_bucket)  # the bucket root: refused before any request
        lc.check_scope(st, st.lifecycle_rules(), whole_bucket)
        rules = lc.plan(st, policy)
        if whole_bucket:
            _outside(st, rules)
    click.echo(lc.dumps(rules))


@registry_command(lifecycle)
@policy_options
@click.option('--dry-run', is_flag=True, help='Print the change as a diff, apply nothing.')
@WHOLE_BUCKET
def apply(
    url: str | None,
    registry: str | None,
    options: tuple[str, ...],
    dry_run: bool,
    whole_bucket: bool,
    **params: typing.Any,
) -> None:
    """Put forml-s3's rules for the registry at URL into its bucket's lifecycle configuration.

    Replaces the rules forml-s3 owns for this registry (by ID) with the planned ones and keeps every other
    rule of the bucket. Re-applying the same options changes nothing. The change is made under a lock object
    (.forml-s3-lifecycle.lock at the bucket root), so forml-s3 processes applying or removing rules of other
    registries of the bucket at the same time do not lose each other's, and it is read back to verify. Needs
    s3:GetLifecycleConfiguration and s3:PutLifecycleConfiguration on the bucket, and s3:GetObject,
    s3:PutObject and s3:DeleteObject on the lock object.
    """
    from forml_s3.ops import lifecycle as lc

    policy = _policy(params)
    st = _s3_store(url, options, registry)
    with fatal_errors():
        lc.check_scope(st, [], whole_bucket)
        current = st.lifecycle_rules()
        lc.check_scope(st, current, whole_bucket)
        planned = lc.plan(st, policy)
        if whole_bucket:
            _outside(st, planned)
        new = lc.merge(current, planned, st)
        if lc.same(current, new):
            click.echo(f's3://{st.bucket}: lifecycle rules already as planned, nothing to change')
            return
        if dry_run:
            click.echo(lc.diff(current, new, st.bucket), nl=False)
            click.echo('Dry run: nothing applied.', err=True)
            return

        def change(rules: list[dict[str, typing.Any]]) -> list[dict[str, typing.Any]]:
            lc.check_scope(st, rules, whole_bucket)  # another registry may have got rules meanwhile
            return lc.merge(rules, planned, st)

        current, new = lc.update(st, change)
    if lc.same(current, new):
        click.echo(f's3://{st.bucket}: lifecycle rules already as planned, nothing to change')
        return
    click.echo(lc.diff(current, new, st.bucket), nl=False)
    ours = sum(lc.owned(r, st) for r in new)
    click.echo(f'Applied {ours} forml-s3 rules to s3://{st.bucket} ({len(new) - ours} other rules kept)', err=True)


@registry_command(lifecycle)
@click.option('--dry-run', is_flag=True, help='Print the change as a diff, apply nothing.')
def remove(url: str | None, registry: str | None, options: tuple[str, ...], dry_run: bool) -> None:
    """Remove forml-s3's rules for the registry at URL from its bucket (other rules are kept).

    Made under the same lock as `apply` and read back: the bucket's configuration is deleted only when no
    other rule is left in it.
    """
    from forml_s3.ops import lifecycle as lc

    st = _s3_store(url, options, registry)
    with fatal_errors():
        current = st.lifecycle_rules()
        new = lc.merge(current, [], st)
        if lc.same(current, new):
            click.echo(f's3://{st.bucket}: no forml-s3 rules for this registry, nothing to remove')
            return
        if dry_run:
            click.echo(lc.diff(current, new, st.bucket), nl=False)
            return
        current, new = lc.update(st, lambda rules: lc.merge(rules, [], st))
    if lc.same(current, new):
        click.echo(f's3://{st.bucket}: no forml-s3 rules for this registry, nothing to remove')
        return
    click.echo(lc.diff(current, new, st.bucket), nl=False)
    click.echo(f'Removed {len(current) - len(new)} forml-s3 rules from s3://{st.bucket} ({len(new)} other rules '
               'kept)', err=True)  # fmt: skip


def _describe_filter(rule: dict[str, typing.Any]) -> str:
    from forml_s3.ops import lifecycle as lc

    found = lc.RuleFilter.of(rule)
    parts = [f'prefix {found.prefix!r}']
    parts += [f'tag {k}={v}' for k, v in found.tags.items()]
    if found.above is not None:
        parts.append(f'size > {found.above}')
    if found.below is not None:
        parts.append(f'size < {found.below}')
    return ', '.join(parts)


@registry_command(lifecycle)
@click.option('--json', 'as_json', is_flag=True, help='Print the configuration as JSON.')
def show(url: str | None, registry: str | None, options: tuple[str, ...], as_json: bool) -> None:
    """The lifecycle rules of the bucket of URL, forml-s3's marked.

    Each rule is marked "forml-s3" (owned for this registry), "forml-s3, other registry" (owned for another
    prefix of the same bucket) or "foreign" (not forml-s3's; never changed by it).
    """
    from forml_s3.ops import lifecycle as lc

    st = _s3_store(url, options, registry)
    with fatal_errors():
        rules = st.lifecycle_rules()
    if as_json:
        click.echo(lc.dumps(rules))
        return
    if not rules:
        click.echo(f"s3://{st.bucket}: no lifecycle rules (`forml-s3 lifecycle apply {st.url}` adds forml-s3's)")
    for rule in rules:
        owner = 'forml-s3' if lc.owned(rule, st) else 'forml-s3, other registry' if lc.owned(rule) else 'foreign'
        click.echo(f'[{owner}] {rule.get("ID") or "(no id)"} ({rule.get("Status")})')
        click.echo(f'    {lc.action_of(rule)[0]}; {_describe_filter(rule)}')


def _moment(value: str | None) -> datetime.datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.datetime.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f'{value!r}: expected a date or time such as 2027-01-31', param_hint='--at') from None
    return moment if moment.tzinfo else moment.replace(tzinfo=datetime.UTC)


@registry_command(lifecycle)
@policy_options
@click.option('--planned', is_flag=True, help="Preview the rules `plan` would make, not the bucket's current ones.")
@click.option('--at', 'at', metavar='DATE', help='Evaluate as of this date/time, UTC (default: now).')
@click.option('--limit', type=click.IntRange(min=0), default=20, show_default=True, help='Keys shown per rule.')
@click.option('--json', 'as_json', is_flag=True, help='Print every matched object as JSON.')
def preview(
    url: str | None,
    registry: str | None,
    options: tuple[str, ...],
    planned: bool,
    at: str | None,
    limit: int,
    as_json: bool,
    **params: typing.Any,
) -> None:
    """Which objects of the registry at URL each lifecycle rule would act on (S3 has no dry run).

    Evaluates each enabled rule's prefix, tags, size bounds and age (S3 rounds each moment up to the next
    midnight UTC) against the registry's objects, noncurrent versions and incomplete multipart uploads.
    "matched" counts what the rule's filter selects; "due" what it acts on by --at. Costs one LIST per
    1,000 objects and one GetObjectTagging per object under a tag-filtered rule.
    """
    from forml_s3.ops import lifecycle as lc
    from forml_s3.ops import snapshot as inspect

    policy = _policy(params)
    moment = _moment(at) or datetime.datetime.now(datetime.UTC)
    st = _s3_store(url, options, registry)
    with fatal_errors():
        rules = lc.plan(st, policy) if planned else st.lifecycle_rules()
        effects = lc.preview(st, rules, moment)
    if as_json:

        def target(t: lc.Target) -> dict[str, typing.Any]:
            return {'key': t.key, 'size': t.size, 'since': t.since.isoformat(), 'due': t.due.isoformat(),
                    'version': t.version}  # fmt: skip

        data = [
            {
                'id': e.rule.get('ID'),
                'owned': e.owned,
                'action': e.action,
                'note': e.note,
                'matched': [target(t) for t in e.matched],
                'due': [target(t) for t in e.due],
            }
            for e in effects
        ]
        click.echo(json.dumps({'at': moment.isoformat(), 'url': st.url, 'rules': data}, indent=1))
        return
    if not effects:
        click.echo(f's3://{st.bucket}: no enabled lifecycle rules' + ('' if planned else ' (try --planned)'))
    for effect in effects:
        size = inspect.human(sum(t.size for t in effect.due))
        mark = ' [forml-s3]' if effect.owned else ''
        click.echo(f'{effect.rule.get("ID") or "(no id)"}{mark}: {effect.action}')
        click.echo(f'    matched {len(effect.matched)}, due by {moment:%Y-%m-%d %H:%M} UTC: {len(effect.due)} ({size})')
        if effect.note:
            click.echo(f'    note: {effect.note}')
        for item in effect.matched[:limit]:
            click.echo(f'    {item.due:%Y-%m-%d} ({lc.human_days(item.due, moment)})  {item.key}')
        if len(effect.matched) > limit:
            click.echo(f'    ... {len(effect.matched) - limit} more (--limit, --json)')


# retire and pin ---------------------------------------------------------------------------------------------
@registry_command()
@click.option('--keep', type=int, required=True, help='How many of the newest generations of each release to keep.')
@click.option('--project', help='Only this project (default: all).')
@click.option('--release', help='Only this release of --project.')
@click.option('--dry-run', is_flag=True, help='Show what would be retired, retire nothing.')
def retire(
    url: str | None,
    registry: str | None,
    options: tuple[str, ...],
    keep: int,
    project: str | None,
    release: str | None,
    dry_run: bool,
) -> None:
    """Retire all but the newest --keep generations of each release at URL.

    A retired generation disappears from listings (`forml model list`) at once; its states are tagged
    forml-s3=retired so the lifecycle rule (`forml-s3 lifecycle apply`) deletes them later. Pinned
    generations (`forml-s3 pin`) and the newest --keep are never retired. Off S3 retiring only hides. Without
    URL, the registry of the ForML config ($FORML_HOME/config.toml; --registry NAME for another section).

    \b
    Examples:
      forml-s3 retire s3://my-bucket/forml --keep 3 --dry-run
      forml-s3 retire s3://my-bucket/forml --keep 3 --project churn --release 1.2

    Exit code 0: done; 2: bad usage (a --project or --release the registry does not hold), or it could not
    complete (the generations retired before the failure are listed).
    """
    from forml_s3.model import layout
    from forml_s3.runtime import retention

    if keep < 1:
        raise click.BadParameter(f'{keep}: the newest generation is always kept, use 1 or more', param_hint='--keep')
    st = open_store(url, options, registry)
    lay = layout.Layout(st.root)
    total = 0
    with fatal_errors():
        for name, version in _existing(st, lay, project, release):
            todo = retention.plan(st, lay, name, version, keep)
            if dry_run or not (todo.retired or todo.tombstones):
                retired = todo.retired
            else:
                with progress_bar(2 * len(todo.retired), f'Retiring {name}-{version}') as bar:
                    retired = retention.retire(st, lay, name, version, keep, planned=todo, progress=bar.update)
            if not todo.retired:
                continue
            meanwhile = sorted(set(todo.retired) - set(retired))  # pinned or aliased while this ran: kept
            total += len(retired)
            verb = 'would retire' if dry_run else 'retired'
            pinned = f'; pinned {_numbers(todo.pinned)}' if todo.pinned else ''
            pinned += f'; pinned or aliased meanwhile {_numbers(meanwhile)}' if meanwhile else ''
            kept = _numbers(sorted(todo.kept + meanwhile))
            click.echo(f'{name}-{version}: {verb} {_numbers(retired)} (kept {kept}{pinned})')
    click.echo(f'{total} generations {"would be " if dry_run else ""}retired', err=True)


def _existing(st, lay, project: str | None, release: str | None) -> list[tuple[str, str]]:
    """The (project, release) pairs to act on; a --project or --release the registry does not hold is an error
    (exit 2), so a typo never passes for "nothing to do"."""
    from forml_s3.model import names
    from forml_s3.runtime import retention

    if project is None:
        return retention.releases(st, lay, project, release)
    found = retention.releases(st, lay, project)
    if not found:
        raise Fatal(f'No project {project} in {st.url} (or it has no release): `forml-s3 ls {st.url}` lists them')
    if release is not None:
        found = [(p, r) for p, r in found if names.release(r) == names.release(release)]  # any PEP 440 spelling
        if not found:
            raise Fatal(f'No release {project}-{release} in {st.url}: `forml-s3 ls {st.url}` lists them')
    return found


def _numbers(numbers: list[int]) -> str:
    return ', '.join(map(str, numbers)) or '-'


@registry_command()
@click.argument('project')
@click.argument('release')
@click.argument('generation', type=int, required=False)
@click.option('--note', default='', help='Why it is pinned (stored with the pin).')
@click.option('--remove', is_flag=True, help='Remove the pin of GENERATION instead.')
def pin(
    url: str | None,
    registry: str | None,
    project: str,
    release: str,
    generation: int | None,
    options: tuple[str, ...],
    note: str,
    remove: bool,
) -> None:
    """Pin GENERATION of PROJECT-RELEASE at URL so it is never retired (without GENERATION: list the pins).

    Without URL (a first argument with a / or :), the registry of the ForML config ($FORML_HOME/config.toml;
    --registry NAME for another section): `forml-s3 pin churn 1.2 7`.

    \b
    Examples:
      forml-s3 pin s3://my-bucket/forml churn 1.2 7 --note "audited model"
      forml-s3 pin s3://my-bucket/forml churn 1.2
      forml-s3 pin s3://my-bucket/forml churn 1.2 7 --remove

    Exit code 0: done; 2: no such project, release or live generation (or the pin could not be stored).
    """
    from forml_s3.model import layout
    from forml_s3.runtime import retention

    st = open_store(url, options, registry)
    lay = layout.Layout(st.root)
    with fatal_errors():
        if generation is None:
            if remove:
                raise click.BadParameter('--remove needs a GENERATION', param_hint='GENERATION')
            _existing(st, lay, project, release)
            click.echo(f'{project}-{release} pinned: {_numbers(retention.pins(st, lay, project, release))}')
        elif remove:
            if not retention.unpin(st, lay, project, release, generation):
                raise Fatal(f'Generation {generation} of {project}-{release} is not pinned')
            click.echo(f'Unpinned generation {generation} of {project}-{release}')
        else:
            retention.pin(st, lay, project, release, generation, note)
            click.echo(f'Pinned generation {generation} of {project}-{release}')
