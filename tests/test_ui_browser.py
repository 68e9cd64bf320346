"""The registry browser in a real browser: ``forml-s3 ui`` as a subprocess, headless Chromium driven by Selenium.

Needs Debian's ``chromium`` and ``chromium-driver`` (``.ci/run`` installs them). Without them the tests skip
with the reason, except under ``CI=true``, where a missing browser fails them. ``FORML_S3_UI_SCREENSHOTS=DIR``
also saves the screenshots of the main pages into DIR (how ``docs/img/ui-*.png`` are made).
"""

import contextlib
import os
import pathlib
import re
import shutil
import subprocess
import sys
import typing

import pytest

from forml_s3.model import codec
from forml_s3.ops import lifecycle

from .helpers import s3_options
from .test_ui import SCORES, Seeded

CHROMIUM = ('/usr/bin/chromium', '/usr/bin/chromedriver')
FLAGS = (
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--no-first-run',
    '--disable-dev-shm-usage',
    '--window-size=1180,900',
)


def _installed() -> tuple[str, str] | None:
    browser = shutil.which('chromium') or (CHROMIUM[0] if os.path.exists(CHROMIUM[0]) else None)
    driver = shutil.which('chromedriver') or (CHROMIUM[1] if os.path.exists(CHROMIUM[1]) else None)
    return (browser, driver) if browser and driver else None


@pytest.fixture(scope='module')
def chromium(tmp_path_factory):
    """A headless Chromium with a fresh profile, driven by Selenium."""
    found = _installed()
    if found is None:
        reason = 'needs chromium and chromium-driver (apt-get install -y chromium chromium-driver; see .ci/run)'
        if os.environ.get('CI', '').lower() in ('1', 'true', 'yes'):
            pytest.fail(f'CI is set but the browser is missing: {reason}')
        pytest.skip(reason)
    os.environ.setdefault('SE_OFFLINE', 'true')  # never let Selenium Manager download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = found[0]
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f'--user-data-dir={tmp_path_factory.mktemp("chromium-profile")}')
    driver = webdriver.Chrome(options=options, service=Service(executable_path=found[1]))
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


@contextlib.contextmanager
def serving(seeded: Seeded, *extra: str) -> typing.Iterator[str]:
    """``forml-s3 ui`` on an ephemeral port as a real process; yields its base URL."""
    command = [str(pathlib.Path(sys.executable).with_name('forml-s3')), 'ui', seeded.url]
    command += [*s3_options(seeded.server, '-o'), '--inventory', seeded.inventory_url, '--port', '0', *extra]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        found = re.search(r'on (http://127\.0\.0\.1:\d+)/', line)
        assert found, f'forml-s3 ui did not start: {line}{process.stderr.read() if process.poll() is not None else ""}'
        assert seeded.options['secret'] not in line
        yield found.group(1)
    finally:
        process.terminate()
        try:
            _, err = process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
        assert seeded.options['secret'] not in err, 'a secret reached the log'


@pytest.fixture
def seeded(s3server, bucket, tmp_path) -> Seeded:
    return Seeded(s3server, bucket, tmp_path, secret='browser-secret-never-shown')


def follow(driver, element) -> None:
    """Click ``element`` and wait until the page it leads to has loaded (a click returns before that).

    The old page is marked with a window property that a new document does not have; while Chromium swaps
    documents any call may fail (a stale node, or "Node with given id does not belong to the document"),
    which only means: not loaded yet.
    """
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.support.wait import WebDriverWait

    driver.execute_script('window.__formlS3OldPage = true')
    element.click()

    def loaded(d) -> bool:
        try:
            return d.execute_script(
                'return window.__formlS3OldPage === undefined && document.readyState === "complete"'
            )
        except WebDriverException:
            return False

    WebDriverWait(driver, 60).until(loaded)


def shoot(driver, name: str, tmp_path: pathlib.Path) -> None:
    """A screenshot of the page (a real PNG), also into ``$FORML_S3_UI_SCREENSHOTS`` when set."""
    target = tmp_path / f'ui-{name}.png'
    driver.save_screenshot(str(target))
    assert target.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    if os.environ.get('FORML_S3_UI_SCREENSHOTS'):
        shutil.copy(target, pathlib.Path(os.environ['FORML_S3_UI_SCREENSHOTS']) / target.name)


def test_browse_project_to_generation_and_verify_a_corrupted_state(chromium, seeded, tmp_path):
    from selenium.webdriver.common.by import By

    driver = chromium
    with serving(seeded) as base:
        driver.get(f'{base}/')
        rows = driver.find_elements(By.CSS_SELECTOR, 'tr.project')
        assert [r.find_element(By.TAG_NAME, 'a').text for r in rows] == list(SCORES)
        shoot(driver, 'projects', tmp_path)

        follow(driver, driver.find_element(By.LINK_TEXT, 'alpha'))
        assert driver.find_element(By.TAG_NAME, 'h1').text == 'alpha'
        follow(driver, driver.find_element(By.CSS_SELECTOR, '#releases a'))
        assert driver.current_url == f'{base}/projects/alpha/releases/0.1'
        points = driver.find_elements(By.CSS_SELECTOR, 'svg#chart circle.point')
        assert sorted(int(p.get_attribute('data-generation')) for p in points) == [1, 2, 3]
        heights = {int(p.get_attribute('data-generation')): float(p.get_attribute('cy')) for p in points}
        assert heights[2] < heights[3] < heights[1]  # scores 0.74 > 0.69 > 0.61: higher score, higher point
        assert 'unscored' not in ' '.join(p.get_attribute('class') for p in points)
        shoot(driver, 'release', tmp_path)

        follow(driver, driver.find_element(By.CSS_SELECTOR, '#generations a[href$="/generations/1"]'))
        assert 'generation 1' in driver.find_element(By.TAG_NAME, 'h1').text
        states = driver.find_elements(By.CSS_SELECTOR, '#states tr')[1:]
        assert len(states) == 2
        follow(driver, driver.find_element(By.ID, 'verify'))
        assert 'objects verified' in driver.find_element(By.ID, 'verdict').text

        marker = codec.loads(seeded.store.read(seeded.layout.generation_marker('alpha', '0.1', 1)), 'x')
        key = next(iter(seeded.layout.stored('alpha', '0.1', marker)))
        size = len(seeded.store.read(key))
        seeded.server.client().put_object(Bucket=seeded.bucket, Key=key.partition('/')[2], Body=b'\0' * size)
        follow(driver, driver.find_element(By.ID, 'verify'))
        verdict = driver.find_element(By.ID, 'verdict').text
        assert 'failed verification' in verdict, verdict
        bad = driver.find_elements(By.CSS_SELECTOR, '#verified tr.bad')
        assert len(bad) == 1 and 'Checksum mismatch' in bad[0].text and key.rsplit('/', 1)[-1] in bad[0].text
        shoot(driver, 'generation', tmp_path)

        driver.get(f'{base}/applications/alpha')
        assert driver.find_elements(By.CSS_SELECTOR, '#source span.k')
        assert '<script>alert("descriptor")</script>' in driver.find_element(By.ID, 'source').text
        shoot(driver, 'application', tmp_path)
        assert 'browser-secret-never-shown' not in driver.page_source


def test_writes_refused_without_allow_writes_then_applied_with_it(chromium, seeded, tmp_path):
    from selenium.webdriver.common.by import By

    driver = chromium
    page = '/projects/alpha/releases/0.1/generations/2'
    with serving(seeded) as base:
        driver.get(f'{base}{page}')
        button = driver.find_element(By.CSS_SELECTOR, '#pin button')
        assert not button.is_enabled()  # the page offers no write
        # a user (or another page) submitting the form anyway: the server refuses it
        driver.execute_script('document.querySelectorAll("#pin [disabled]").forEach(e => e.disabled = false)')
        follow(driver, driver.find_element(By.CSS_SELECTOR, '#pin button'))
        assert driver.find_element(By.TAG_NAME, 'h1').text == 'Refused'
        assert 'read-only' in driver.find_element(By.ID, 'message').text
    assert seeded.browser().generation('alpha', '0.1', 2)[0].pinned is False

    with serving(seeded, '--allow-writes') as base:
        driver.get(f'{base}{page}')
        driver.find_element(By.CSS_SELECTOR, '#pin input[name=note]').send_keys('audited <b>model</b>')
        follow(driver, driver.find_element(By.CSS_SELECTOR, '#pin button'))
        assert 'Pinned generation 2 of alpha-0.1' in driver.find_element(By.ID, 'message').text
        follow(driver, driver.find_element(By.LINK_TEXT, 'Back'))
        assert 'pinned' in driver.find_element(By.TAG_NAME, 'h1').text
        assert seeded.browser().generation('alpha', '0.1', 2)[0].pinned is True
        driver.find_element(By.CSS_SELECTOR, '#alias-new input[name=name]').send_keys('champion')
        follow(driver, driver.find_element(By.CSS_SELECTOR, '#alias-new button'))
        assert 'Alias champion of alpha now points to 0.1#2' in driver.find_element(By.ID, 'message').text
        follow(driver, driver.find_element(By.LINK_TEXT, 'Back'))
        assert driver.find_element(By.CSS_SELECTOR, '#alias-box .here').text == 'champion'
        shoot(driver, 'generation-writable', tmp_path)

        seeded.commit('alpha', 4, 0.8)
        driver.get(f'{base}/projects/alpha/releases/0.1')
        assert len(driver.find_elements(By.CSS_SELECTOR, 'svg#chart circle.point')) == 4
        shoot(driver, 'release-writable', tmp_path)
        follow(driver, driver.find_element(By.CSS_SELECTOR, '#retire button'))  # keep 3: retires 1 (2 is pinned anyway)
        assert 'Retired generations [1] of alpha-0.1' in driver.find_element(By.ID, 'message').text
        assert sorted(seeded.registry.generations('alpha', '0.1')) == [2, 3, 4]

        seeded.store.set_lifecycle_rules(lifecycle.plan(seeded.store, lifecycle.Policy()))
        driver.get(f'{base}/lifecycle')
        assert len(driver.find_elements(By.CSS_SELECTOR, '.rule')) == 3
        driver.execute_script('document.querySelector("input[name=at]").value = "2099-01-01"')
        follow(driver, driver.find_element(By.ID, 'preview'))
        retired = next(r for r in driver.find_elements(By.CSS_SELECTOR, '.rule') if ':retired' in r.text)
        assert re.search(r'matched ([1-9]\d*), due by 2099-01-01 00:00 UTC: \1 ', retired.text), retired.text
        shoot(driver, 'lifecycle', tmp_path)
