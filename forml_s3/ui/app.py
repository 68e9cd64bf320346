"""The browser's web application (Starlette): routes, views and the guard of its few writes.

Views are plain functions that ask :class:`forml_s3.ui.model.Browser` for data and render a Jinja2 template
(autoescaped: every name, tag field and descriptor line reaches the page escaped). Writes (pin, unpin, retire)
exist only with ``allow_writes``; each is a POST carrying a CSRF token (an HMAC of a per-browser cookie under a
per-process secret) and calls the same :mod:`forml_s3.runtime.retention` functions as the CLI. A write whose premise no
longer holds (the generation was retired meanwhile, the release gained generations since the page was shown)
is reported as a conflict (HTTP 409) and not applied.
"""

import datetime
import hashlib
import hmac
import logging
import pathlib
import secrets
import typing
import urllib.parse

import forml
import jinja2
from starlette import applications, concurrency, requests, responses, routing
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..cli.retention import _describe_filter as describe_filter
from ..ops import lifecycle
from ..ops import snapshot as inspect
from ..runtime import aliases as aliasmod
from ..runtime import retention
from . import chart, highlight, model

LOGGER = logging.getLogger(__name__)

COOKIE = 'forml_s3_ui'
MAX_FORM = 16 * 1024
CSP = "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
"""Pages load nothing from anywhere (CSS is inline, the chart is inline SVG) and run no script."""
TEMPLATES = pathlib.Path(__file__).parent / 'templates'


class Refused(Exception):
    """A write the server will not do (read-only server, bad CSRF token)."""


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.ChainableUndefined
    )
    env.filters['human'] = inspect.human
    env.filters['when'] = model.when
    return env


def create_app(
    browser: model.Browser,
    *,
    allow_writes: bool = False,
    allowed_hosts: typing.Sequence[str] = ('*',),
) -> applications.Starlette:
    """The browser application over ``browser``.

    Args:
        browser: The registry (and inventory) to show.
        allow_writes: Enable pin, unpin and retire (default: read-only).
        allowed_hosts: Host headers accepted (a loopback server accepts only loopback names: DNS rebinding).
    """
    env = _environment()
    secret = secrets.token_bytes(32)
    st = browser.store

    def token(request: requests.Request) -> str:
        session = request.cookies.get(COOKIE, '')
        return hmac.new(secret, session.encode(), hashlib.sha256).hexdigest() if session else ''

    def render(
        request: requests.Request, template: str, status: int = 200, **context: typing.Any
    ) -> responses.Response:
        session = request.cookies.get(COOKIE)
        fresh = None
        if not session:  # a new browser: give it a session so its forms carry a token
            fresh = secrets.token_urlsafe(32)
            request.cookies[COOKIE] = fresh
        context.update(
            url=st.url,
            inventory=browser.inventory.url if browser.inventory is not None else None,
            writes=allow_writes,
            csrf=token(request),
            request=request,
            status=status,
        )
        response = responses.HTMLResponse(env.get_template(template).render(**context), status_code=status)
        if fresh:
            response.set_cookie(COOKIE, fresh, httponly=True, samesite='lax')
        response.headers['Content-Security-Policy'] = CSP
        response.headers['X-Content-Type-Options'] = 'nosniff'
        return response

    def problem(request: requests.Request, status: int, title: str, message: str) -> responses.Response:
        return render(
            request, 'message.html', status, title=title, message=message, back=request.headers.get('referer')
        )

    def conflict(request: requests.Request, message: str, back: str) -> responses.Response:
        """A write whose premise no longer holds: shown, not applied."""
        return render(request, 'message.html', 409, title='Conflict: not applied', message=message, back=back)

    def applied(request: requests.Request, message: str, back: str) -> responses.Response:
        LOGGER.info('%s (through the browser)', message)
        return render(request, 'message.html', title='Done', message=message, back=back)

    def page_of(request: requests.Request) -> int:
        try:
            return max(1, int(request.query_params.get('page', '1')))
        except ValueError:
            return 1

    # views --------------------------------------------------------------------------------------------------
    def projects(request: requests.Request) -> responses.Response:
        rows, pages, total = browser.projects(page_of(request))
        return render(request, 'projects.html', rows=rows, pages=pages, page=page_of(request), total=total)

    def project(request: requests.Request) -> responses.Response:
        name = request.path_params['project']
        releases = browser.project(name)
        return render(request, 'project.html', project=name, releases=releases, aliases=browser.aliases(name))

    def release(request: requests.Request) -> responses.Response:
        p, r = request.path_params['project'], request.path_params['release']
        view = browser.release(p, r, page_of(request))
        base = request.url_for('release', project=view.project, release=view.release).path
        figure = chart.build(view.live, lambda n: f'{base}/generations/{n}')
        keep = max(1, min(3, len(view.live)))
        plan = browser.retire_plan(view.project, view.release, keep) if allow_writes and view.live else None
        return render(request, 'release.html', view=view, chart=figure, base=base, plan=plan, keep=keep)

    def generation(request: requests.Request) -> responses.Response:
        return generation_page(request, verify=False)

    def verify(request: requests.Request) -> responses.Response:
        return generation_page(request, verify=True)

    def generation_page(request: requests.Request, verify: bool) -> responses.Response:
        """A generation; with ``verify``, each object holding its states checked too."""
        p, r, n = request.path_params['project'], request.path_params['release'], request.path_params['generation']
        row, retired, states = browser.generation(p, r, n)
        checked = browser.verify(p, r, n) if verify else None
        for key, _, message in checked or ():
            if message:
                LOGGER.warning('Verify %s: %s', st.url_of(key), message)
        return render(request, 'generation.html', project=p, release=r, row=row, retired=retired, states=states,
                      checked=checked, aliases=browser.aliases(p))  # fmt: skip

    def lifecycle_page(request: requests.Request) -> responses.Response:
        raw = request.query_params.get('at')
        try:
            at = datetime.datetime.fromisoformat(raw) if raw else datetime.datetime.now(datetime.UTC)
        except ValueError:
            return problem(request, 400, 'Bad date', f'{raw!r} is not a date: use YYYY-MM-DD')
        at = at if at.tzinfo else at.replace(tzinfo=datetime.UTC)
        rules, effects, note = [], None, None
        if not st.lifecycle:
            note = f'{st.url} has no bucket lifecycle rules forml-s3 can read ({st.protocol} store)'
        else:
            rules = st.lifecycle_rules()
            if raw:  # the preview walks the whole registry: only when asked for
                effects = lifecycle.preview(st, rules, at)
        return render(
            request,
            'lifecycle.html',
            rules=rules,
            owned=lambda rule: lifecycle.owned(rule, st),
            action=lambda rule: lifecycle.action_of(rule)[0],
            effects=effects,
            note=note,
            at=at,
            human_days=lifecycle.human_days,
            describe=describe_filter,
        )

    def applications_page(request: requests.Request) -> responses.Response:
        return render(request, 'applications.html', applications=browser.applications())

    def application(request: requests.Request) -> responses.Response:
        name = request.path_params['application']
        source = browser.descriptor(name).decode('utf-8', errors='replace')
        return render(request, 'application.html', name=name, source=highlight.python(source), size=len(source))

    # writes -------------------------------------------------------------------------------------------------
    async def guard(request: requests.Request) -> dict[str, str]:
        """The form of an acceptable write request (else :class:`Refused`)."""
        if not allow_writes:
            raise Refused('This browser is read-only: start it with `forml-s3 ui --allow-writes` to pin or retire')
        form = await _form(request)
        expected = token(request)
        if not expected or not hmac.compare_digest(expected, str(form.get('csrf', ''))):
            raise Refused('Missing or wrong CSRF token: reload the page and submit its form again')
        origin = request.headers.get('origin')
        if origin and origin.split('://', 1)[-1] != request.headers.get('host'):
            raise Refused(f'Cross-origin write from {origin} refused')
        return form

    async def pin(request: requests.Request) -> responses.Response:
        return await concurrency.run_in_threadpool(do_pin, request, await guard(request))

    def do_pin(request: requests.Request, form: dict[str, str]) -> responses.Response:
        p, r, n = request.path_params['project'], request.path_params['release'], request.path_params['generation']
        back = request.url_for('generation', project=p, release=r, generation=n).path
        try:
            if form.get('action') == 'unpin':
                if not retention.unpin(st, browser.layout, p, r, n):
                    return conflict(request, f'Generation {n} of {p}-{r} is not pinned (unpinned meanwhile?)', back)
                done = f'Unpinned generation {n} of {p}-{r}'
            else:
                retention.pin(st, browser.layout, p, r, n, form.get('note', ''))
                done = f'Pinned generation {n} of {p}-{r}'
        except forml.MissingError as err:
            return conflict(request, str(err), back)
        finally:
            browser.invalidate(p, r)
        return applied(request, done, back)

    async def alias(request: requests.Request) -> responses.Response:
        return await concurrency.run_in_threadpool(do_alias, request, await guard(request))

    def do_alias(request: requests.Request, form: dict[str, str]) -> responses.Response:
        """Set, move or remove an alias by compare-and-swap from what the page showed (``expect``)."""
        p = request.path_params['project']
        back = form.get('back') if form.get('back', '').startswith('/projects/') else None
        back = back or request.url_for('project', project=p).path
        try:
            expect = _target(form.get('expect', ''))
            generation = int(form.get('generation') or 0)
        except (ValueError, forml.InvalidError):
            return problem(
                request, 400, 'Bad request', 'expect must be RELEASE#GENERATION or none; generation a number'
            )
        name = form.get('name', '').strip()
        try:
            if form.get('action') == 'remove':
                browser.alias_book.remove(p, name, expect=expect)
                return applied(request, f'Removed alias {name} of {p} (its history is kept)', back)
            done = browser.alias_book.set(p, name, form.get('release', ''), generation, expect=expect)
        except (aliasmod.Conflict, forml.MissingError) as err:
            return conflict(request, str(err), back)
        return applied(request, f'Alias {done.name} of {p} now points to {done.target}', back)

    async def retire(request: requests.Request) -> responses.Response:
        return await concurrency.run_in_threadpool(do_retire, request, await guard(request))

    def do_retire(request: requests.Request, form: dict[str, str]) -> responses.Response:
        p, r = request.path_params['project'], request.path_params['release']
        back = request.url_for('release', project=p, release=r).path
        try:
            keep = int(form.get('keep', ''))
            shown = sorted(int(g) for g in form.get('expected', '').split(',') if g)
        except ValueError:
            return problem(request, 400, 'Bad request', 'keep and expected must be whole numbers')
        browser.invalidate(p, r)
        now = browser.retire_plan(p, r, keep)
        if now.retired != shown:  # the release changed since the page was shown: the user did not see this plan
            message = (
                f'{p}-{r} changed since the page was shown: retiring all but the newest {keep} would now retire '
                f'{now.retired or "nothing"}, not {shown or "nothing"}. Review it again.'
            )
            return conflict(request, message, back)
        done = retention.retire(st, browser.layout, p, r, keep)
        browser.invalidate(p, r)
        return applied(request, f'Retired generations {done} of {p}-{r}', back)

    # errors -------------------------------------------------------------------------------------------------
    async def refused(request: requests.Request, err: Exception) -> responses.Response:
        return problem(request, 403, 'Refused', str(err))

    async def missing(request: requests.Request, err: Exception) -> responses.Response:
        return problem(request, 404, 'Not found', str(err))

    async def invalid(request: requests.Request, err: Exception) -> responses.Response:
        status = 400 if isinstance(err, forml.InvalidError) else 502  # else: the store failed (retries exhausted)
        return problem(request, status, 'Cannot show this', str(err))

    routes = [
        routing.Route('/', projects, name='projects'),
        routing.Route('/projects/{project}', project, name='project'),
        routing.Route('/projects/{project}/aliases', alias, methods=['POST'], name='alias'),
        routing.Route('/projects/{project}/releases/{release}', release, name='release'),
        routing.Route('/projects/{project}/releases/{release}/retire', retire, methods=['POST'], name='retire'),
        routing.Route(
            '/projects/{project}/releases/{release}/generations/{generation:int}', generation, name='generation'
        ),
        routing.Route(
            '/projects/{project}/releases/{release}/generations/{generation:int}/verify', verify, name='verify'
        ),
        routing.Route(
            '/projects/{project}/releases/{release}/generations/{generation:int}/pin', pin, methods=['POST'], name='pin'
        ),
        routing.Route('/lifecycle', lifecycle_page, name='lifecycle'),
        routing.Route('/applications', applications_page, name='applications'),
        routing.Route('/applications/{application}', application, name='application'),
    ]
    return applications.Starlette(
        routes=routes,
        middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))],
        exception_handlers={Refused: refused, forml.MissingError: missing, forml.AnyError: invalid},
    )


async def _form(request: requests.Request) -> dict[str, str]:
    """A small URL-encoded form (the browser's forms; parsed here so no multipart library is needed)."""
    if request.headers.get('content-type', '').split(';')[0].strip() != 'application/x-www-form-urlencoded':
        raise Refused('Expected a form (application/x-www-form-urlencoded)')
    body = await request.body()
    if len(body) > MAX_FORM:
        raise Refused(f'Form larger than {MAX_FORM} bytes')
    return {k: v[-1] for k, v in urllib.parse.parse_qs(body.decode('utf-8', errors='replace')).items()}


def _target(shown: str) -> aliasmod.Target | None:
    """What a page showed an alias pointing to (``RELEASE#GENERATION``; empty or ``none``: nothing)."""
    if shown in ('', 'none'):
        return None
    release, sep, generation = shown.partition('#')
    if not sep:
        raise ValueError(shown)
    return aliasmod.Target.parse({'release': release, 'generation': int(generation)})
