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
"""

import dataclasses
import datetime
import difflib
import hashlib
import json
import logging
import math
import typing

import forml

from . import layout, storage, transfers

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

    expire_staging_after: int | None = 7
    abort_multipart_after: int | None = 7
    expire_retired_after: int | None = 30
    transition_releases_after: int | None = None
    storage_class: str = 'STANDARD_IA'
    noncurrent_versions_after: int | None = None

    def __post_init__(self):
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

    if policy.expire_staging_after:
        rule('uncommitted', layout.UNCOMMITTED_TAG, Expiration={'Days': policy.expire_staging_after})
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


def dumps(rules: list[dict[str, typing.Any]]) -> str:
    """Rules as the JSON ``aws s3api put-bucket-lifecycle-configuration --lifecycle-configuration`` takes."""
    return json.dumps({'Rules': rules}, indent=2, sort_keys=True, default=str)


def diff(current: list[dict[str, typing.Any]], new: list[dict[str, typing.Any]], bucket: str) -> str:
    """A unified diff of two configurations (empty when they are the same)."""
    lines = difflib.unified_diff(
        dumps(current).splitlines(keepends=True),
        dumps(new).splitlines(keepends=True),
        fromfile=f's3://{bucket} (current)',
        tofile=f's3://{bucket} (after apply)',
    )
    return ''.join(lines)


def same(current: list[dict[str, typing.Any]], new: list[dict[str, typing.Any]]) -> bool:
    return dumps(current) == dumps(new)


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
    wanted = [key for key, _ in objects if any(key.startswith(p) for p in tagged)]

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
        for version in sorted(versions, key=lambda v: (v['Key'], _timestamp(v['LastModified'])), reverse=True):
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
