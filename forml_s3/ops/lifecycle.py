"""S3 lifecycle rules for a registry: plan them, merge them into a bucket's configuration, and preview them.

S3 keeps one lifecycle configuration per bucket, shared by everything in it, so forml-s3 only ever replaces the
rules it owns: their IDs read ``forml-s3:<registry prefix>/:<purpose>``, one set per registry, and every other
rule of the bucket is put back as it was read. The rules forml-s3 recommends (:class:`Policy`):

==================  ============================================================================================
``uncommitted``      expire objects tagged ``forml-s3=uncommitted``: uploads no marker committed (abandoned
                     pushes and trainings); must exceed the longest training, or a slow one loses its states
``multipart``        abort multipart uploads left incomplete (a killed writer of a large state or package)
``retired``          expire objects tagged ``forml-s3=retired`` (``forml-s3 retire``, ``keep_generations``)
``transition``       move the registry's objects to an instantly readable cheaper class after some days
``noncurrent``       expire noncurrent versions (versioned buckets keep every overwritten or deleted object)
==================  ============================================================================================

S3 runs lifecycle rules about once a day and gives no dry run: :func:`preview` evaluates rules (prefix, tags,
sizes and age, with S3's rounding to the next midnight UTC) against the registry's objects as they are now.

Rules only ever select the registry's own objects: every filter carries the registry's prefix (tag rules:
prefix and tag), so registries side by side in a bucket never touch each other's objects. That holds only if no
registry's prefix contains another's: :func:`check_scope` refuses a registry at the bucket root (its rules
would select everything in the bucket) unless the caller accepts the whole bucket, and one nested in (or
containing) another registry with forml-s3 rules. :func:`outside` says, from the preview, what else a
whole-bucket registry's rules would touch.

The configuration is one document per bucket, replaced whole by ``PutBucketLifecycleConfiguration`` (no
conditional write): :func:`update` serialises forml-s3's read-modify-write with a lock object
(:data:`LOCK` at the bucket root, created exclusively, expiring after :data:`LOCK_TTL` seconds so a crashed
holder blocks nobody for long), re-reads the configuration under the lock, and reads it back after writing.
"""

import contextlib
import dataclasses
import datetime
import difflib
import hashlib
import json
import logging
import math
import threading
import time
import typing
import uuid
import warnings

import forml

from .. import storage
from ..model import codec, layout
from ..runtime import transfers
from . import policy as defaults
from . import snapshot as inspect

LOGGER = logging.getLogger(__name__)

OWNER = 'forml-s3'
MAX_ID = 255
"""S3's limit on the length of a rule ID."""

INSTANT_CLASSES = ('STANDARD_IA', 'ONEZONE_IA', 'INTELLIGENT_TIERING', 'GLACIER_IR')
"""Storage classes whose objects read like STANDARD ones (ForML reads states synchronously at apply time)."""
ARCHIVE_CLASSES = ('GLACIER', 'DEEP_ARCHIVE')
IA_MINIMUM_DAYS = 30
"""S3 refuses transitions to STANDARD_IA or ONEZONE_IA earlier than 30 days after creation."""
TRANSITION_MINIMUM_SIZE = 128 * 1024
"""S3's default: objects smaller than 128 KiB are not transitioned (the registry's markers stay put)."""


def _days(name: str, value: typing.Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise forml.InvalidError(f'Invalid {name}: {value!r}; expected a whole number of days, at least 1')
    return value


@dataclasses.dataclass(frozen=True)
class Policy:
    """What the rules forml-s3 owns in a bucket should do, in days (``None``: no such rule)."""

    expire_uncommitted_after: int | None = defaults.EXPIRE_UNCOMMITTED_AFTER
    abort_multipart_after: int | None = defaults.ABORT_MULTIPART_AFTER
    expire_retired_after: int | None = defaults.EXPIRE_RETIRED_AFTER
    transition_releases_after: int | None = None
    storage_class: str = defaults.STORAGE_CLASS
    noncurrent_versions_after: int | None = None
    expire_staging_after: dataclasses.InitVar[int | None] = None
    """Deprecated spelling of ``expire_uncommitted_after`` (it never meant the staging directory); warns."""

    def __post_init__(self, expire_staging_after: int | None):
        if expire_staging_after is not None:
            warnings.warn(
                'Policy(expire_staging_after=...) is deprecated: use expire_uncommitted_after', DeprecationWarning, 3
            )
            object.__setattr__(self, 'expire_uncommitted_after', expire_staging_after)
        for field in dataclasses.fields(self):
            if field.name != 'storage_class':
                _days(field.name.replace('_', '-'), getattr(self, field.name))
        if self.storage_class in ARCHIVE_CLASSES:
            raise forml.InvalidError(
                f'Storage class {self.storage_class} is an archive: ForML could not read a state from it without a '
                f'restore first; use one of {", ".join(INSTANT_CLASSES)}'
            )
        if self.storage_class not in INSTANT_CLASSES:
            raise forml.InvalidError(
                f'Unknown storage class {self.storage_class!r}: use one of {", ".join(INSTANT_CLASSES)}'
            )
        after = self.transition_releases_after
        if after is not None and self.storage_class in ('STANDARD_IA', 'ONEZONE_IA') and after < IA_MINIMUM_DAYS:
            raise forml.InvalidError(
                f'Invalid transition-releases-after: {after}; S3 moves objects to {self.storage_class} no earlier '
                f'than {IA_MINIMUM_DAYS} days after creation'
            )


def scope(st: storage.Store) -> str:
    """The key prefix of the registry in its bucket (``forml/``; empty for a registry at the bucket's root)."""
    _ = st.bucket  # S3 only
    key = st.root.partition('/')[2]
    return f'{key}/' if key else ''


def id_prefix(st: storage.Store) -> str:
    """The start of the IDs of every rule forml-s3 owns for this registry."""
    prefix = scope(st)
    ident = f'{OWNER}:{prefix}:'
    if len(ident) + len('uncommitted') > MAX_ID:  # a very long registry prefix: identify it by its hash
        ident = f'{OWNER}:sha256-{hashlib.sha256(prefix.encode()).hexdigest()[:32]}:'
    return ident


def _filter(prefix: str, tag: tuple[str, str] | None = None) -> dict[str, typing.Any]:
    if tag is None:
        return {'Prefix': prefix}
    tagged = {'Key': tag[0], 'Value': tag[1]}
    return {'And': {'Prefix': prefix, 'Tags': [tagged]}} if prefix else {'Tag': tagged}


def plan(st: storage.Store, policy: Policy) -> list[dict[str, typing.Any]]:
    """The rules forml-s3 recommends for the registry at ``st``, as ``PutBucketLifecycleConfiguration`` takes
    them."""
    prefix, ident = scope(st), id_prefix(st)
    rules = []

    def rule(purpose: str, tag: tuple[str, str] | None, **action: typing.Any) -> None:
        rules.append({'ID': f'{ident}{purpose}', 'Status': 'Enabled', 'Filter': _filter(prefix, tag), **action})

    if policy.expire_uncommitted_after:
        rule('uncommitted', layout.UNCOMMITTED_TAG, Expiration={'Days': policy.expire_uncommitted_after})
    if policy.abort_multipart_after:
        rule('multipart', None, AbortIncompleteMultipartUpload={'DaysAfterInitiation': policy.abort_multipart_after})
    if policy.expire_retired_after:
        rule('retired', layout.RETIRED_TAG, Expiration={'Days': policy.expire_retired_after})
    if policy.transition_releases_after:
        rule(
            'transition',
            None,
            Transitions=[{'Days': policy.transition_releases_after, 'StorageClass': policy.storage_class}],
        )
    if policy.noncurrent_versions_after:
        rule('noncurrent', None, NoncurrentVersionExpiration={'NoncurrentDays': policy.noncurrent_versions_after})
    return rules


def owned(rule: typing.Mapping[str, typing.Any], st: storage.Store | None = None) -> bool:
    """Whether forml-s3 owns the rule: for the registry at ``st``, or for any registry in the bucket."""
    ident = str(rule.get('ID') or '')
    return ident.startswith(id_prefix(st)) if st is not None else ident.startswith(f'{OWNER}:')


def merge(
    current: list[dict[str, typing.Any]], planned: list[dict[str, typing.Any]], st: storage.Store
) -> list[dict[str, typing.Any]]:
    """The bucket's rules with this registry's forml-s3 rules replaced by ``planned`` (others kept, in order)."""
    return [r for r in current if not owned(r, st)] + list(planned)


# scope ------------------------------------------------------------------------------------------------------
def registries(rules: list[dict[str, typing.Any]]) -> set[str]:
    """The prefixes of the registries that have forml-s3 rules in a configuration (from the rules' filters)."""
    return {RuleFilter.of(r).prefix for r in rules if owned(r)}


def check_scope(st: storage.Store, rules: list[dict[str, typing.Any]], whole_bucket: bool = False) -> None:
    """Refuse rules that would select objects of anything but this registry, given the bucket's current rules.

    A registry at the bucket root needs ``whole_bucket``: its rules select every object of the bucket. A registry
    whose prefix contains (or lies inside) another registry's that has forml-s3 rules is refused too (unless
    ``whole_bucket``): either one's rules would expire the other's tagged objects on its own timers.
    """
    prefix, bucket = scope(st), st.bucket
    if not prefix and not whole_bucket:
        raise forml.InvalidError(
            f'The registry s3://{bucket} is the root of its bucket: its lifecycle rules would act on every object '
            f'in the bucket (other registries, unrelated data). Keep registries under a prefix (s3://{bucket}/forml; '
            '`forml-s3 copy` moves one), or pass --whole-bucket to accept that (the output then lists what else '
            'the rules would touch)'
        )
    if whole_bucket:
        return
    ours = id_prefix(st)
    for other in sorted(registries(r for r in rules if not str(r.get('ID') or '').startswith(ours))):
        if other.startswith(prefix) or prefix.startswith(other):
            where = f's3://{bucket}/{other}' if other else f's3://{bucket} (the bucket root)'
            raise forml.InvalidError(
                f'The registry s3://{bucket}/{prefix} and the registry {where} (which has forml-s3 lifecycle rules) '
                "are nested: one's rules would expire the other's objects. Keep registries side by side "
                "(s3://bucket/team-a and s3://bucket/team-b), or remove the other one's rules first "
                '(`forml-s3 lifecycle remove`)'
            )


def owns_key(key: str, prefix: str, projects: typing.Collection[str]) -> bool:
    """Whether a key (of the bucket) is one of the registry's objects: under a project of the registry."""
    if not key.startswith(prefix):
        return False
    name = key[len(prefix) :]
    first = name.split('/', 1)[0]
    return (first in projects and '/' in name) or name in {f'{p}{layout.MARKER}' for p in projects}


def outside(st: storage.Store, effects: list['Effect']) -> list[tuple['Effect', list['Target']]]:
    """Per rule, what it matches that is not the registry's own (for a registry at the bucket root: other
    registries' and unrelated objects, versions and uploads). The registry's projects are those with a marker."""
    prefix = scope(st)
    projects = set(layout.Layout.marker_names({e.name: e.size for e in st.listdir(st.root)}))
    found = []
    for effect in effects:
        foreign = [t for t in effect.matched if not owns_key(t.key, prefix, projects)]
        if foreign:
            found.append((effect, foreign))
    return found


# updating the bucket's configuration -------------------------------------------------------------------------
LOCK = '.forml-s3-lifecycle.lock'
"""The lock object's key at the bucket root (a dot name: never a registry's project)."""
LOCK_TTL = 60.0
"""Seconds a lock is honoured after its last renewal; its holder renews it every quarter of that while alive, so
only a holder that died (or stalled that long) is overridden."""
LOCK_WAIT = 120.0
"""Seconds to wait for another holder before giving up."""


class Lost(forml.FailedError):
    """The lifecycle lock was taken over while held (its holder stalled past its expiry)."""


@contextlib.contextmanager
def locked(st: storage.Store, ttl: float = LOCK_TTL, wait: float = LOCK_WAIT) -> typing.Iterator[threading.Event]:
    """Hold the bucket's forml-s3 lifecycle lock: an object created exclusively (``If-None-Match: *``), renewed
    every quarter of ``ttl`` while held, deleted on release; one that expired (its holder died) is deleted and
    taken over. Yields an event that is set once the lock was found taken over (check it before writing)."""
    key = f'{st.bucket}/{LOCK}'
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            st.create(key, _lock_body(token, ttl))
            break
        except FileExistsError:
            pass
        holder = _lock_of(st, key)
        if holder is not None and float(holder.get('expires') or 0) < time.time():
            if _lock_of(st, key) == holder:  # still that stale lock (not one taken over meanwhile)
                LOGGER.warning('Taking over the expired lifecycle lock of %s', holder.get('holder'))
                st.delete(key)
            continue
        if time.monotonic() > deadline:
            who = (holder or {}).get('holder', 'another process')
            raise forml.FailedError(
                f'The lifecycle configuration of s3://{st.bucket} is being changed by {who} (lock {st.url_of(key)}, '
                f'held for up to {ttl:.0f}s); try again later'
            )
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
    lost, stop = threading.Event(), threading.Event()
    renewal = threading.Thread(
        target=_renew, args=(st, key, token, ttl, lost, stop), name='forml-s3-lifecycle-lock', daemon=True
    )
    renewal.start()
    try:
        yield lost
    finally:
        stop.set()
        renewal.join()
        if (_lock_of(st, key) or {}).get('token') == token:
            st.delete(key)


def _lock_body(token: str, ttl: float) -> bytes:
    return json.dumps({'token': token, 'holder': codec.writer(), 'expires': time.time() + ttl}).encode()


def _renew(st: storage.Store, key: str, token: str, ttl: float, lost: threading.Event, stop: threading.Event) -> None:
    """Push the lock's expiry forward every quarter of ``ttl`` until ``stop``; set ``lost`` (and stop) once the
    lock is another holder's. A renewal that fails is tried again at the next turn (the expiry leaves three)."""
    while not stop.wait(ttl / 4):
        try:
            data, version = st.get(key)
            if json.loads(data).get('token') != token:
                raise FileNotFoundError(key)
            st.replace(key, _lock_body(token, ttl), version)  # only if no one took it over since the read
        except (FileNotFoundError, FileExistsError, ValueError):
            LOGGER.warning('The lifecycle lock %s was taken over by another process', st.url_of(key))
            lost.set()
            return
        except Exception as err:  # any failure to renew is retried: the lock has time left
            LOGGER.warning('Could not renew the lifecycle lock %s (%s): retrying', st.url_of(key), err)


def _lock_of(st: storage.Store, key: str) -> dict[str, typing.Any] | None:
    """The lock object's content (``None`` if there is none; an unreadable one counts as expired)."""
    try:
        found = json.loads(st.read(key))
    except FileNotFoundError:
        return None
    except ValueError:
        return {'expires': 0}
    return found if isinstance(found, dict) else {'expires': 0}


def update(
    st: storage.Store, change: typing.Callable[[list[dict[str, typing.Any]]], list[dict[str, typing.Any]]]
) -> tuple[list[dict[str, typing.Any]], list[dict[str, typing.Any]]]:
    """Apply ``change`` to the bucket's rules under the lock: re-read, write, read back to verify.

    Returns the configuration before and after. A read-back that differs (a writer that does not take the lock
    changed it meanwhile) is retried twice from a fresh read, then reported.
    """
    with locked(st) as lost:
        for _ in range(3):
            current = st.lifecycle_rules()
            new = change(current)
            if same(current, new):
                return current, new
            if lost.is_set():
                raise Lost(
                    f'The lifecycle lock of s3://{st.bucket} was taken over while this process was stalled: '
                    'nothing was written; apply again'
                )
            st.set_lifecycle_rules(new)
            back = st.lifecycle_rules()
            if _ids(back) == _ids(new):
                return current, new
            LOGGER.warning('The lifecycle configuration of s3://%s changed while it was written; again', st.bucket)
    raise forml.FailedError(
        f'The lifecycle configuration of s3://{st.bucket} keeps changing under forml-s3 (another tool writing it?): '
        'check it with `forml-s3 lifecycle show` and apply again'
    )


def _ids(rules: list[dict[str, typing.Any]]) -> list[str]:
    return sorted(json.dumps(r, sort_keys=True, default=str) if not r.get('ID') else str(r['ID']) for r in rules)


def dumps(rules: list[dict[str, typing.Any]]) -> str:
    """Rules as the JSON ``aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration`` takes."""
    return json.dumps({'Rules': rules}, indent=2, sort_keys=True, default=str)


def normal(rules: list[dict[str, typing.Any]]) -> list[dict[str, typing.Any]]:
    """Rules in one shape, so that what a server returns compares equal to what was put.

    S3-compatible servers answer the same configuration differently: Ceph RGW returns the rules sorted by ID and
    writes a filter of a prefix and one tag without its ``And`` (or a plain ``Tag`` filter inside one). The order of
    rules means nothing to S3 (each acts on its own), nor does the spelling of a filter: rules are sorted (by ID) and
    every filter is written in its shortest S3 form - ``Prefix`` alone, ``Tag`` alone, else ``And`` (tags sorted).
    """

    def shaped(rule: dict[str, typing.Any]) -> dict[str, typing.Any]:
        selector = RuleFilter.of(rule)
        parts: dict[str, typing.Any] = {}
        if selector.prefix:
            parts['Prefix'] = selector.prefix
        if selector.tags:
            parts['Tags'] = [{'Key': k, 'Value': v} for k, v in sorted(selector.tags.items())]
        for name, bound in (('ObjectSizeGreaterThan', selector.above), ('ObjectSizeLessThan', selector.below)):
            if bound is not None:
                parts[name] = int(bound)
        if len(parts) > 1 or len(parts.get('Tags', ())) > 1:
            found: dict[str, typing.Any] = {'And': parts}
        elif 'Tags' in parts:
            found = {'Tag': parts['Tags'][0]}
        else:
            found = parts or {'Prefix': ''}
        return {**{k: v for k, v in rule.items() if k not in ('Filter', 'Prefix')}, 'Filter': found}

    return sorted(
        map(shaped, rules), key=lambda r: (str(r.get('ID') or ''), json.dumps(r, sort_keys=True, default=str))
    )


def diff(current: list[dict[str, typing.Any]], new: list[dict[str, typing.Any]], bucket: str) -> str:
    """A unified diff of two configurations in their :func:`normal` shape (empty when they are the same)."""
    lines = difflib.unified_diff(
        dumps(normal(current)).splitlines(keepends=True),
        dumps(normal(new)).splitlines(keepends=True),
        fromfile=f's3://{bucket} (current)',
        tofile=f's3://{bucket} (after apply)',
    )
    return ''.join(lines)


def same(current: list[dict[str, typing.Any]], new: list[dict[str, typing.Any]]) -> bool:
    """Whether two configurations act the same: equal in their :func:`normal` shape (order and filter spelling
    aside)."""
    return dumps(normal(current)) == dumps(normal(new))


# preview ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Target:
    """One object, noncurrent version or incomplete upload a rule acts on."""

    key: str
    size: int
    since: datetime.datetime
    """When the rule's clock started: creation, becoming noncurrent, or initiation of the upload."""
    due: datetime.datetime
    version: str | None = None


@dataclasses.dataclass
class Effect:
    """What one rule does to the registry."""

    rule: dict[str, typing.Any]
    action: str
    owned: bool
    matched: list[Target] = dataclasses.field(default_factory=list)
    """Everything under the registry the rule's filter selects."""
    due: list[Target] = dataclasses.field(default_factory=list)
    """Of those, what the rule acts on by the preview's moment."""
    note: str = ''


@dataclasses.dataclass(frozen=True)
class RuleFilter:
    """A rule's filter: prefix, tags and size bounds (all must hold)."""

    prefix: str
    tags: dict[str, str]
    above: int | None
    below: int | None

    @classmethod
    def of(cls, rule: typing.Mapping[str, typing.Any]) -> 'RuleFilter':
        found = rule.get('Filter')
        if found is None:  # the legacy top-level prefix
            return cls(str(rule.get('Prefix') or ''), {}, None, None)
        both = found.get('And') or found
        tags = {t['Key']: t.get('Value', '') for t in both.get('Tags') or ()}
        if 'Tag' in found:
            tags[found['Tag']['Key']] = found['Tag'].get('Value', '')
        return cls(
            str(both.get('Prefix') or ''), tags, both.get('ObjectSizeGreaterThan'), both.get('ObjectSizeLessThan')
        )

    def selects(self, key: str, size: int, tags: typing.Mapping[str, str]) -> bool:
        return (
            key.startswith(self.prefix)
            and (self.above is None or size > self.above)
            and (self.below is None or size < self.below)
            and all(tags.get(k) == v for k, v in self.tags.items())
        )


def _due(since: datetime.datetime, days: int) -> datetime.datetime:
    """S3's moment of action: ``days`` after ``since``, rounded up to the next midnight UTC."""
    moment = since.astimezone(datetime.UTC) + datetime.timedelta(days=days)
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    return midnight if midnight == moment else midnight + datetime.timedelta(days=1)


def action_of(rule: typing.Mapping[str, typing.Any]) -> tuple[str, str, int | None, datetime.datetime | None]:
    """(what the rule does, to which population: current/transition/noncurrent/uploads/markers, days, date)."""
    if expiration := rule.get('Expiration'):
        days, date = expiration.get('Days'), _date(expiration.get('Date'))
        if days is None and date is None:
            return 'remove expired delete markers', 'markers', None, None
        return f'expire {f"after {days} days" if days is not None else f"on {date:%Y-%m-%d}"}', 'current', days, date
    if transitions := rule.get('Transitions'):
        first = transitions[0]
        days, date = first.get('Days'), _date(first.get('Date'))
        when = f'after {days} days' if days is not None else f'on {date:%Y-%m-%d}'
        return f'move to {first.get("StorageClass")} {when}', 'transition', days, date
    if noncurrent := rule.get('NoncurrentVersionExpiration'):
        days = noncurrent.get('NoncurrentDays')
        return f'expire noncurrent versions after {days} days', 'noncurrent', days, None
    if aborting := rule.get('AbortIncompleteMultipartUpload'):
        days = aborting.get('DaysAfterInitiation')
        return f'abort incomplete multipart uploads after {days} days', 'uploads', days, None
    return 'nothing forml-s3 can preview', 'none', None, None


def _date(value: typing.Any) -> datetime.datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    return datetime.datetime.fromisoformat(str(value).replace('Z', '+00:00'))


def _timestamp(value: typing.Any) -> datetime.datetime:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
    if isinstance(value, int | float):
        return datetime.datetime.fromtimestamp(value, datetime.UTC)
    return _date(value) or datetime.datetime.fromtimestamp(0, datetime.UTC)


def preview(
    st: storage.Store,
    rules: list[dict[str, typing.Any]],
    at: datetime.datetime | None = None,
) -> list[Effect]:
    """What each enabled rule does to the registry's objects by ``at`` (default: now).

    Costs one LIST per 1,000 objects, one GetObjectTagging per object under the prefix of a tag-filtered
    rule (in parallel), and, only where a rule needs them, a listing of versions or of multipart uploads.
    """
    at = at or datetime.datetime.now(datetime.UTC)
    at = at if at.tzinfo else at.replace(tzinfo=datetime.UTC)
    bucket = st.bucket
    active = [r for r in rules if r.get('Status') == 'Enabled']
    populations = {action_of(r)[1] for r in active}
    objects = [(p.partition('/')[2], e) for p, e in st.walk(st.root)] if populations & {'current', 'transition'} else []

    tagged = [f.prefix for f in map(RuleFilter.of, active) if f.tags]
    wanted = [key for key, _ in objects if any(key.startswith(p) for p in tagged) and _may_carry_tags(st, key)]

    def tags_of(key: str) -> dict[str, str]:
        try:
            return st.get_tags(f'{bucket}/{key}')
        except FileNotFoundError:  # deleted since the listing
            return {}

    LOGGER.info('Reading the tags of %d objects', len(wanted))
    tags = dict(zip(wanted, transfers.run_all(tags_of, wanted), strict=True))
    versions = st.versions(st.root) if 'noncurrent' in populations else []
    uploads = st.multipart_uploads(st.root) if 'uploads' in populations else []
    return [_effect(rule, st, at, objects, tags, versions, uploads) for rule in active]


UNTAGGED = (
    inspect.Kind.PROJECT_MARKER,
    inspect.Kind.RELEASE_MARKER,
    inspect.Kind.GENERATION_MARKER,
    inspect.Kind.PIN_MARKER,
    inspect.Kind.FLOOR,
)
"""Kinds of registry objects forml-s3 never tags (tombstones are generation markers): their tags are not read."""


def _may_carry_tags(st: storage.Store, key: str) -> bool:
    """Whether an object of the bucket may carry tags: anything but a marker forml-s3 never tags (states, packs,
    packages, retired markers and foreign objects may)."""
    return inspect.classify(layout.Layout(st.root), f'{st.bucket}/{key}')[0] not in UNTAGGED


def _effect(
    rule: dict[str, typing.Any],
    st: storage.Store,
    at: datetime.datetime,
    objects: list[tuple[str, storage.Entry]],
    tags: dict[str, dict[str, str]],
    versions: list[dict[str, typing.Any]],
    uploads: list[dict[str, typing.Any]],
) -> Effect:
    """What one rule does by ``at`` to the listed objects, versions and uploads of the registry."""
    action, population, days, date = action_of(rule)
    selector = RuleFilter.of(rule)
    effect = Effect(rule, action, owned(rule, st))
    never = datetime.datetime.max.replace(tzinfo=datetime.UTC)

    def add(key: str, size: int, since: datetime.datetime, version: str | None = None) -> None:
        due = _due(since, days) if days is not None else (date or never)
        effect.matched.append(Target(key, size, since, due, version))
        if due <= at:
            effect.due.append(effect.matched[-1])

    base = scope(st)
    if not (selector.prefix.startswith(base) or base.startswith(selector.prefix)):
        return effect  # the rule's prefix is outside the registry
    if population == 'markers':
        effect.note = 'delete markers are not previewed'
    elif population in ('current', 'transition'):
        for key, entry in objects:
            if not selector.selects(key, entry.size, tags.get(key, {})):
                continue
            if population == 'transition' and selector.above is None and entry.size < TRANSITION_MINIMUM_SIZE:
                continue  # S3 does not transition small objects by default
            add(key, entry.size, _timestamp(entry.modified or 0))
    elif population == 'noncurrent':
        if selector.tags:
            effect.note = 'tag filters on noncurrent versions are not previewed'
        successor: dict[str, datetime.datetime] = {}  # a version becomes noncurrent when its successor is written
        # newest first; within one second (S3 times are whole seconds) the latest version is the successor
        newest_first = sorted(
            versions, key=lambda v: (v['Key'], _timestamp(v['LastModified']), bool(v.get('IsLatest'))), reverse=True
        )
        for version in newest_first:
            key, size = version['Key'], int(version.get('Size') or 0)
            if not version.get('DeleteMarker') and key in successor and selector.selects(key, size, selector.tags):
                add(key, size, successor[key], version.get('VersionId'))
            successor[key] = _timestamp(version['LastModified'])
    elif population == 'uploads':
        for upload in uploads:
            if upload['Key'].startswith(selector.prefix):
                add(upload['Key'], 0, _timestamp(upload['Initiated']), upload.get('UploadId'))
    return effect


def human_days(moment: datetime.datetime, at: datetime.datetime) -> str:
    """``in 3 days`` / ``due`` for a rule's moment relative to the preview's."""
    if moment <= at:
        return 'due'
    return f'in {math.ceil((moment - at).total_seconds() / 86400)} days'
