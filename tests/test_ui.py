"""The registry browser's views (``forml-s3 ui``) through Starlette's test client, against registries on the
embedded moto server: what each page shows, what it costs in requests, escaping, and the guarded writes."""

import datetime
import html
import pathlib
import re
import subprocess
import sys
import uuid

import pytest
from forml.io import asset
from starlette.testclient import TestClient

from forml_s3 import storage
from forml_s3.model import codec, layout
from forml_s3.ops import lifecycle
from forml_s3.registry import Registry
from forml_s3.runtime import retention, transfers
from forml_s3.ui import app, config, highlight, model

from .helpers import PackageFactory, run_cli, s3_options

SCORES = {'alpha': [0.61, 0.74, 0.69], 'beta': [0.9], 'gamma': []}
DESCRIPTOR = '''"""Churn application <script>alert("descriptor")</script>."""
import forml
from forml import application

application.Generic(name='alpha')  # serves alpha's latest generation & more
'''


def scored(score: float, sids=(), when=None) -> asset.Tag:
    moment = when or datetime.datetime(2026, 11, 24, 3, 4, 5)
    return asset.Tag(
        training=asset.Tag.Training(timestamp=moment, ordinal=None),
        tuning=asset.Tag.Tuning(timestamp=moment, score=score),
        states=list(sids),
    )


class Seeded:
    """A registry with several projects (real packages, real commits) and an inventory, in one bucket."""

    def __init__(self, server, bucket: str, tmp_path, **options):
        self.server = server
        self.bucket = bucket
        self.options = server.storage_options(**options)
        self.url = f's3://{bucket}/forml'
        self.inventory_url = f's3://{bucket}/apps'
        self.registry = Registry(
            self.url, storage_options=self.options, cache_dir=tmp_path / 'seed-cache', listing_ttl=0
        )
        self.store = storage.open_store(self.url, self.options)
        self.layout = layout.Layout(self.store.root)
        packages = PackageFactory(tmp_path / 'packages')
        for project, scores in SCORES.items():
            self.registry.push(packages('0.1', project=project))
            for number, score in enumerate(scores, start=1):
                self.commit(project, number, score)
        storage.open_store(self.inventory_url, self.options).write(f'{bucket}/apps/alpha.py', DESCRIPTOR.encode())

    def commit(self, project: str, number: int, score: float, payloads=(b'state-one', b'state-two' * 50)) -> list:
        sids = [uuid.uuid4() for _ in payloads]
        for sid, payload in zip(sids, payloads, strict=True):
            self.registry.write(project, '0.1', sid, payload)
        self.registry.close(project, '0.1', number, scored(score, sids))
        return sids

    def browser(self, **kwargs) -> model.Browser:
        return model.Browser(
            storage.open_store(self.url, self.options), storage.open_store(self.inventory_url, self.options), **kwargs
        )

    def client(self, allow_writes: bool = False, **kwargs) -> TestClient:
        return TestClient(app.create_app(self.browser(**kwargs), allow_writes=allow_writes))


@pytest.fixture
def seeded(s3server, bucket, tmp_path) -> Seeded:
    return Seeded(s3server, bucket, tmp_path, secret=f'not-shown-{uuid.uuid4().hex}')


def text(response) -> str:
    """The page's visible text (tags dropped, entities decoded)."""
    return html.unescape(re.sub(r'<[^>]+>', ' ', response.text))


def csrf(response) -> str:
    return re.search(r'name="csrf" value="([0-9a-f]*)"', response.text).group(1)


def test_projects_page_lists_projects_releases_and_counts(seeded):
    page = seeded.client().get('/')
    assert page.status_code == 200
    rows = re.findall(r'<tr class="project">(.*?)</tr>', page.text, re.S)
    assert len(rows) == 3
    for row, (project, scores) in zip(rows, SCORES.items(), strict=True):
        assert f'href="/projects/{project}"' in row
        assert f'href="/projects/{project}/releases/0.1"' in row
        assert f'<td class="num">{len(scores)}</td>' in row


def test_release_page_shows_package_chart_and_generations(seeded):
    marker = codec.loads(seeded.store.read(seeded.layout.release_marker('alpha', '0.1')), 'x')
    page = seeded.client().get('/projects/alpha/releases/0.1')
    assert page.status_code == 200
    assert marker['package']['sha256'] in page.text
    assert f'({marker["package"]["size"]} bytes)' in page.text
    points = re.findall(r'<circle class="point" data-generation="(\d+)"', page.text)
    assert sorted(map(int, points)) == [1, 2, 3]  # one point per generation, each with its score known
    for score in SCORES['alpha']:
        assert f'tuning score {score}' in page.text
    rows = re.findall(r'<tr class="generation">\s*<td class="num"><a [^>]*>(\d+)<', page.text)
    assert [int(n) for n in rows] == [3, 2, 1]  # newest first


def test_release_page_reads_only_the_markers_of_the_page_shown(seeded, counted):
    """100 projects x 1,000 generations stay cheap: a release page costs its LISTs plus the GETs of one page of
    markers; a second view re-lists and reads nothing; another page reads only its own markers."""
    writes = [
        (
            seeded.layout.generation_marker('gamma', '0.1', n),
            codec.dumps(codec.generation_marker('gamma', '0.1', n, scored(n / 200), {}, 'seed')),
        )
        for n in range(1, 121)
    ]
    transfers.run_all(lambda item: seeded.store.create(*item), writes)
    client = seeded.client(listing_ttl=0, page=50)

    def requests() -> tuple[int, int]:
        records = counted.requests
        lists = sum(1 for r in records if r.method == 'GET' and 'list-type=2' in r.query)
        return lists, len(records) - lists

    counted.reset_counts()
    page = client.get('/projects/gamma/releases/0.1')
    assert page.status_code == 200
    assert requests() == (5, 51)  # releases, generations, pinned, retired, aliases; release + 50 generation markers
    assert len(re.findall(r'<circle class="point" ', page.text)) == 50  # scored: the page shown
    assert len(re.findall(r'<circle class="point unscored"', page.text)) == 70  # every generation has its point

    counted.reset_counts()
    client.get('/projects/gamma/releases/0.1')
    assert requests() == (5, 0)

    counted.reset_counts()
    second = client.get('/projects/gamma/releases/0.1?page=2')
    assert requests() == (5, 50)
    assert '<a href="/projects/gamma/releases/0.1/generations/70">70</a>' in second.text
    assert len(re.findall(r'<circle class="point" ', second.text)) == 100  # markers read before are shown too


def test_projects_page_lists_without_reading_markers(seeded, counted):
    client = seeded.client(listing_ttl=0)
    counted.reset_counts()
    assert client.get('/').status_code == 200
    methods = [(r.method, 'list-type=2' in r.query) for r in counted.requests]
    assert methods.count(('GET', True)) == 1 + 3 + 3  # projects; each project's releases; each release's generations
    assert len(methods) == 7


def test_generation_page_shows_tag_and_states(seeded):
    marker = codec.loads(seeded.store.read(seeded.layout.generation_marker('alpha', '0.1', 2)), 'x')
    page = seeded.client().get('/projects/alpha/releases/0.1/generations/2')
    assert page.status_code == 200
    assert 'tuning score 0.74' in ' '.join(text(page).split())
    for sid, info in marker['states'].items():
        assert sid in page.text and info['sha256'] in page.text
        assert ('packed in' in page.text) == ('pack' in info)


def test_verify_reports_a_corrupted_state(seeded):
    client = seeded.client()
    page = client.get('/projects/alpha/releases/0.1/generations/1/verify')
    checked = len(re.findall(r'<tr class="ok">', page.text))
    assert checked >= 1 and f'{checked} of {checked} objects verified' in page.text
    marker = codec.loads(seeded.store.read(seeded.layout.generation_marker('alpha', '0.1', 1)), 'x')
    key = next(iter(seeded.layout.stored('alpha', '0.1', marker)))
    body = seeded.store.read(key)
    seeded.server.client().put_object(Bucket=seeded.bucket, Key=key.partition('/')[2], Body=b'X' * len(body))
    page = client.get('/projects/alpha/releases/0.1/generations/1/verify')
    assert page.status_code == 200
    assert 'Checksum mismatch' in text(page)
    assert '1 of ' in page.text and 'failed verification' in page.text


def test_missing_and_invalid_names_are_one_clear_line(seeded):
    client = seeded.client()
    assert client.get('/projects/nope').status_code == 404
    missing = client.get('/projects/alpha/releases/0.1/generations/9')
    assert missing.status_code == 404 and 'No generation 9 of alpha-0.1' in text(missing)
    bad = client.get('/projects/alpha/releases/not..a..version')
    assert bad.status_code == 400 and 'Invalid release' in text(bad)


def test_writes_are_refused_without_allow_writes(seeded):
    client = seeded.client()
    page = client.get('/projects/alpha/releases/0.1/generations/1')
    assert '<button type="submit" disabled>Pin</button>' in page.text
    refused = client.post('/projects/alpha/releases/0.1/generations/1/pin', data={'csrf': csrf(page), 'action': 'pin'})
    assert refused.status_code == 403 and 'read-only' in text(refused)
    retire = client.post('/projects/alpha/releases/0.1/retire', data={'keep': '1', 'expected': '1,2'})
    assert retire.status_code == 403
    assert retention.pins(seeded.store, seeded.layout, 'alpha', '0.1') == []
    assert list(seeded.registry.generations('alpha', '0.1')) == [1, 2, 3]


def test_pin_and_unpin_need_the_csrf_token(seeded):
    client = seeded.client(allow_writes=True)
    page = client.get('/projects/alpha/releases/0.1/generations/2')
    path = '/projects/alpha/releases/0.1/generations/2/pin'
    assert client.post(path, data={'action': 'pin'}).status_code == 403
    assert client.post(path, data={'action': 'pin', 'csrf': 'f' * 64}).status_code == 403
    stranger = TestClient(client.app)  # another browser (no cookie) replaying the token
    assert stranger.post(path, data={'action': 'pin', 'csrf': csrf(page)}).status_code == 403
    assert retention.pins(seeded.store, seeded.layout, 'alpha', '0.1') == []

    done = client.post(path, data={'action': 'pin', 'csrf': csrf(page), 'note': 'audited'})
    assert done.status_code == 200 and 'Pinned generation 2' in done.text
    assert retention.pins(seeded.store, seeded.layout, 'alpha', '0.1') == [2]
    assert '<span class="badge pinned">pinned</span>' in client.get('/projects/alpha/releases/0.1').text
    unpinned = client.post(path, data={'action': 'unpin', 'csrf': csrf(page)})
    assert unpinned.status_code == 200
    assert retention.pins(seeded.store, seeded.layout, 'alpha', '0.1') == []
    again = client.post(path, data={'action': 'unpin', 'csrf': csrf(page)})
    assert again.status_code == 409 and 'not pinned' in again.text


def test_pin_of_a_generation_retired_meanwhile_is_a_conflict(seeded):
    client = seeded.client(allow_writes=True)
    page = client.get('/projects/alpha/releases/0.1/generations/1')
    assert retention.retire(seeded.store, seeded.layout, 'alpha', '0.1', 2) == [1]  # another operator, meanwhile
    conflict = client.post('/projects/alpha/releases/0.1/generations/1/pin', data={'action': 'pin', 'csrf': csrf(page)})
    assert conflict.status_code == 409 and 'is retired' in text(conflict)
    assert retention.pins(seeded.store, seeded.layout, 'alpha', '0.1') == []
    retired = client.get('/projects/alpha/releases/0.1/generations/1')
    assert '<span class="badge retired">retired</span>' in retired.text


def test_retire_applies_the_plan_shown_or_reports_the_change(seeded):
    client = seeded.client(allow_writes=True, listing_ttl=0)
    page = client.get('/projects/alpha/releases/0.1')
    expected = re.search(r'name="expected" value="([0-9,]*)"', page.text).group(1)
    assert expected == ''  # three generations, keep 3: nothing to retire
    seeded.commit('alpha', 4, 0.8)
    page = client.get('/projects/alpha/releases/0.1')
    assert re.search(r'name="expected" value="([0-9,]*)"', page.text).group(1) == '1'
    seeded.commit('alpha', 5, 0.82)  # a training lands after the page was shown: the plan would retire 1 and 2
    form = {'csrf': csrf(page), 'keep': '3', 'expected': '1'}
    conflict = client.post('/projects/alpha/releases/0.1/retire', data=form)
    assert conflict.status_code == 409 and 'would now retire [1, 2]' in text(conflict)
    assert sorted(seeded.registry.generations('alpha', '0.1')) == [1, 2, 3, 4, 5]

    done = client.post('/projects/alpha/releases/0.1/retire', data={**form, 'expected': '1,2'})
    assert done.status_code == 200 and 'Retired generations [1, 2]' in text(done)
    assert sorted(seeded.registry.generations('alpha', '0.1')) == [3, 4, 5]
    page = client.get('/projects/alpha/releases/0.1')
    assert re.findall(r'<circle class="point" data-generation="(\d+)"', page.text) == ['3', '4', '5']
    assert 'generations/1">1</a>' in re.search(r'<p id="retired">(.*?)</p>', page.text, re.S).group(1)


def test_user_controlled_text_is_escaped_and_no_secret_shown(seeded):
    tag = scored(0.5)
    hostile = codec.generation_marker('beta', '0.1', 2, tag, {}, writer='<script>alert("writer")</script>')
    seeded.store.create(seeded.layout.generation_marker('beta', '0.1', 2), codec.dumps(hostile))
    client = seeded.client()
    pages = [
        client.get(path)
        for path in (
            '/',
            '/projects/beta',
            '/projects/beta/releases/0.1',
            '/projects/beta/releases/0.1/generations/2',
            '/lifecycle',
            '/applications',
            '/applications/alpha',
        )
    ]
    assert all(p.status_code == 200 for p in pages), [p.status_code for p in pages]
    generation, application = pages[3], pages[6]
    assert '<script>' not in generation.text and '&lt;script&gt;alert(&#34;writer&#34;)' in generation.text
    assert '<script>' not in application.text and '&lt;script&gt;' in application.text
    shown = re.search(r'<pre class="source" id="source">(.*?)</pre>', application.text, re.S).group(1)
    assert html.unescape(re.sub(r'<[^>]+>', '', shown)) == DESCRIPTOR
    secret = seeded.options['secret']
    assert not any(secret in p.text or secret in str(p.headers) for p in pages)


def test_applications_page_and_highlighted_source(seeded):
    client = seeded.client()
    listing = client.get('/applications')
    assert 'href="/applications/alpha"' in listing.text and f'{len(DESCRIPTOR.encode())} B' in listing.text
    source = client.get('/applications/alpha')
    assert '<span class="k">import</span>' in source.text
    assert '<span class="c"># serves alpha&#39;s latest generation &amp; more</span>' in source.text
    assert client.get('/applications/nope').status_code == 404


def test_highlighter_keeps_the_source_and_escapes_it():
    for source in (DESCRIPTOR, 'x = """a\n<b>\n"""\n\tif x:\n  y = 1 \\\n  + 2\n', 'def f(:\n', 'broken """'):
        shown = highlight.python(source)
        assert '<b>' not in shown
        assert html.unescape(re.sub(r'<[^>]+>', '', str(shown))) == source


def test_lifecycle_page_previews_the_rules(seeded):
    st = seeded.store
    st.set_lifecycle_rules(lifecycle.plan(st, lifecycle.Policy()))
    markers = [codec.loads(st.read(seeded.layout.generation_marker('alpha', '0.1', g)), 'x') for g in (1, 2)]
    retention.retire(st, seeded.layout, 'alpha', '0.1', 1)  # generations 1 and 2: their states tagged retired
    tagged = sum(len(seeded.layout.stored('alpha', '0.1', m)) + 1 for m in markers)  # objects + retired marker
    client = seeded.client()
    rules = client.get('/lifecycle')  # the rules only: no listing of the registry
    assert rules.status_code == 200 and 'forml-s3:forml/:retired</b>' in rules.text and 'matched' not in rules.text
    now = client.get(f'/lifecycle?at={datetime.date.today()}')
    assert now.status_code == 200

    def retired_rule(page) -> tuple[str, int, int]:
        rule = next(c for c in page.text.split('<div class="box rule">')[1:] if 'forml-s3:forml/:retired</b>' in c)
        matched, due = re.search(r'matched <b>(\d+)</b>, due by [^:]*:\d\d UTC: <b>(\d+)</b>', rule).groups()
        return rule, int(matched), int(due)

    rule, matched, due = retired_rule(now)
    assert 'expire after 30 days' in rule and 'tag forml-s3=retired' in rule
    assert matched == tagged and due == 0
    _, matched, due = retired_rule(client.get('/lifecycle?at=2099-01-01'))
    assert matched == due == tagged
    assert client.get('/lifecycle?at=tomorrow').status_code == 400


def test_default_registry_from_the_forml_config(tmp_path, monkeypatch):
    from forml_s3 import demo

    options = {'endpoint_url': 'http://127.0.0.1:1', 'key': 'k', 'secret': 's'}
    demo.render_config(
        tmp_path / 'home', registry_url='s3://b/forml', storage_options=options, inventory_url='s3://b/apps'
    )
    monkeypatch.setenv('FORML_HOME', str(tmp_path / 'home'))
    assert config.default('REGISTRY') == ('s3://b/forml', options)
    assert config.default('INVENTORY') == ('s3://b/apps', options)
    monkeypatch.setenv('FORML_HOME', str(tmp_path / 'nowhere'))
    assert config.default('REGISTRY') is None
    (tmp_path / 'other').mkdir()
    (tmp_path / 'other' / 'config.toml').write_text('[REGISTRY]\ndefault = "x"\n[REGISTRY.x]\nprovider = "posix"\n')
    monkeypatch.setenv('FORML_HOME', str(tmp_path / 'other'))
    with pytest.raises(Exception, match='not a forml-s3 provider'):
        config.default('REGISTRY')


def test_loopback_hosts():
    from forml_s3.cli.ui import loopback

    assert loopback('127.0.0.1') and loopback('::1') and loopback('localhost') and loopback('127.0.0.2')
    assert not loopback('0.0.0.0') and not loopback('192.168.1.4') and not loopback('example.com')


def test_cli_without_url_or_default_registry_says_what_to_give(tmp_path, monkeypatch):
    monkeypatch.setenv('FORML_HOME', str(tmp_path / 'empty-home'))
    result = run_cli('ui')
    assert result.exit_code == 2
    assert 'No URL given and no default registry' in result.output and 'forml-s3 ui s3://' in result.output


def test_serving_beyond_loopback_warns(seeded):
    command = [str(pathlib.Path(sys.executable).with_name('forml-s3')), 'ui', seeded.url, '--host', '0.0.0.0']
    command += [*s3_options(seeded.server, '-o'), '--port', '0']
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = process.stdout.readline()
    finally:
        process.terminate()
        _, err = process.communicate(timeout=20)
    assert re.search(r'on http://0\.0\.0\.0:\d+/ \(read-only', started), started + err
    assert 'Warning: serving on 0.0.0.0' in err and 'no login' in err
    assert seeded.options['secret'] not in started + err


def test_damaged_markers_are_shown_as_such(seeded):
    client = seeded.client()
    seeded.server.client().put_object(
        Bucket=seeded.bucket, Key=seeded.layout.release_marker('beta', '0.1').partition('/')[2], Body=codec.dumps({})
    )
    key = seeded.layout.generation_marker('alpha', '0.1', 2).partition('/')[2]
    seeded.server.client().put_object(Bucket=seeded.bucket, Key=key, Body=b'{not json')
    assert client.get('/projects/beta').status_code == 200
    assert client.get('/projects/beta/releases/0.1').status_code == 200  # a marker without fields shows blanks
    release = client.get('/projects/alpha/releases/0.1')
    assert release.status_code == 200 and 'Corrupted marker' in release.text
    assert len(re.findall(r'<circle class="point', release.text)) == 3  # still listed, its score unknown
    generation = client.get('/projects/alpha/releases/0.1/generations/2')
    assert generation.status_code == 200 and 'not valid JSON' in generation.text
    assert client.get('/projects/alpha/releases/0.1/generations/2/verify').status_code == 400


def test_a_registry_on_local_disk_browses_too(tmp_path, package_factory):
    url = f'file://{tmp_path}/registry'
    registry = Registry(url, cache_dir=tmp_path / 'cache', listing_ttl=0)
    registry.push(package_factory('0.1'))
    sids = [uuid.uuid4()]
    registry.write('demo-proj', '0.1', sids[0], b'state')
    registry.close('demo-proj', '0.1', 1, scored(0.5, sids))
    client = TestClient(app.create_app(model.Browser(storage.open_store(url))))
    assert 'href="/projects/demo-proj/releases/0.1"' in client.get('/').text
    release = client.get('/projects/demo-proj/releases/0.1')
    assert re.findall(r'<circle class="point" data-generation="(\d+)"', release.text) == ['1']
    assert '1 of 1 objects verified' in client.get('/projects/demo-proj/releases/0.1/generations/1/verify').text
    lifecycle_page = client.get('/lifecycle')
    assert lifecycle_page.status_code == 200 and 'has no bucket lifecycle rules' in lifecycle_page.text
    assert 'No inventory configured' in client.get('/applications').text


def test_aliases_are_set_moved_and_removed_by_compare_and_swap(seeded):
    book = seeded.browser().alias_book
    client = seeded.client(allow_writes=True)
    path = '/projects/alpha/aliases'
    page = client.get('/projects/alpha/releases/0.1/generations/2')
    token = csrf(page)
    assert 'id="alias-new"' in page.text
    made = client.post(
        path, data={'csrf': token, 'name': 'champion', 'release': '0.1', 'generation': '2', 'expect': 'none'}
    )
    assert made.status_code == 200 and 'now points to 0.1#2' in made.text
    assert str(book.resolve('alpha', 'champion')) == '0.1#2'
    release = client.get('/projects/alpha/releases/0.1')
    assert re.search(r'generations/2">2</a>.*?<span class="badge">champion</span>', release.text, re.S)

    page = client.get('/projects/alpha/releases/0.1/generations/3')
    assert 'Move champion here' in page.text and 'value="0.1#2"' in page.text  # the form carries what it showed
    book.set('alpha', 'champion', '0.1', 1)  # another operator moves it meanwhile
    move = {'csrf': token, 'name': 'champion', 'release': '0.1', 'generation': '3', 'expect': '0.1#2'}
    conflict = client.post(path, data=move)
    assert conflict.status_code == 409 and 'points to 0.1#1, not 0.1#2' in text(conflict)
    assert str(book.resolve('alpha', 'champion')) == '0.1#1'
    moved = client.post(path, data={**move, 'expect': '0.1#1'})
    assert moved.status_code == 200 and str(book.resolve('alpha', 'champion')) == '0.1#3'

    project = client.get('/projects/alpha')
    assert '<span class="badge">champion</span>' in project.text and 'generations/3">0.1 #3</a>' in project.text
    removed = client.post(path, data={'csrf': token, 'action': 'remove', 'name': 'champion', 'expect': '0.1#3'})
    assert removed.status_code == 200 and book.live('alpha') == []
    bad = client.post(
        path, data={'csrf': token, 'name': 'champion', 'release': '0.1', 'generation': '3', 'expect': 'x'}
    )
    assert bad.status_code == 400

    readonly = seeded.client()
    page = readonly.get('/projects/alpha/releases/0.1/generations/2')
    refused = readonly.post(path, data={'csrf': csrf(page), 'name': 'c2', 'release': '0.1', 'generation': '2'})
    assert refused.status_code == 403 and book.live('alpha') == []
