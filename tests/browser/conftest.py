"""Browser tests: Playwright for Python driving the machine's Chromium (Debian's package,
launched by path; `playwright install` is never run: it would download browsers).

The platform runs as it does for a user: gunicorn (the web process, DEBUG as `make demo`
has it), a control worker and a cpu worker, on a private Redis and the test database.
Every page a test opens through `Visitor.goto` is checked:

- no console error and no uncaught exception;
- no failed request (network error or HTTP status >= 400 on anything but the page asked for);
- no request to a host other than the platform's (route interception: aborted and listed);
- axe-core finds no serious or critical violation of the rules in AXE_RULESET;
- the server time of each request (the `Server-Timing: app;dur=` header) is recorded, and
  `Visitor.assert_fast()` checks its p95 loosely (the bench measures it properly).

Without Chromium (or Playwright) the tests skip with the reason; in CI (CI=true, where
.ci/run installs Chromium) they fail instead. A failed test leaves a screenshot of each
open page under var/test/screenshots/; with SCREENSHOTS_DIR set every visited page is saved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.liveprocess import Process, get, gunicorn_command, process_env, wait_until
from tests.platform.conftest import (  # noqa: F401 - the session fixture, used here too
    _test_flush_lifts_the_audit_truncate_guard,
)
from tests.redisserver import PrivateRedis, free_port

ROOT = Path(__file__).resolve().parents[2]
AXE_SOURCE = ROOT / "tests" / "browser" / "vendor" / "axe-core" / "axe.min.js"
FAILURE_SCREENSHOTS = ROOT / "var" / "test" / "screenshots"
PASSWORD = "pw-for-tests-1"  # tests/conftest.py's make_user

# The accessibility rules, explicitly: WCAG 2.0/2.1/2.2 A and AA (labels, contrast, names,
# landmarks' basics, keyboard) plus axe's best practices (headings, one main landmark).
# Only serious and critical findings fail a test; moderate/minor ones are listed when a
# test fails for another reason.
AXE_RULESET = {
    "runOnly": {
        "type": "tag",
        "values": ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa", "best-practice"],
    },
    "resultTypes": ["violations"],
}
AXE_FAILING_IMPACTS = {"serious", "critical"}
# Violations known and owned elsewhere, each narrowed to its rule and element; delete an
# entry when its page is fixed (then the rule guards that page too).
AXE_KNOWN: list[tuple[str, re.Pattern, re.Pattern]] = [  # (rule, page URL, element)
    # None today: add an entry (rule, page, element) only for a finding being fixed elsewhere.
]

# Playwright's synchronous API runs an event loop in this thread; the tests' own ORM calls
# (set-up, assertions) are synchronous all the same. The child processes do not inherit it.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI installs it in .ci/run: the browser tests must run there)")
    pytest.skip(reason)


def chromium_path() -> str:
    """Debian's Chromium (CHROMIUM env to override)."""
    path = shutil.which(os.environ.get("CHROMIUM", "chromium"))
    if path is None:
        _unavailable("Chromium is not installed (apt-get install chromium)")
    return path


# Per module: while Playwright's sync API runs, the thread counts as inside an event loop
# (Django's async-safety checks, asyncio.run), so it must not outlive the browser tests.
@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("Playwright is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    playwright = sync_playwright().start()
    # As root (CI, containers) Chromium's sandbox cannot start.
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    browser = playwright.chromium.launch(executable_path=executable, args=args)
    yield browser
    browser.close()
    playwright.stop()


# -- the platform, as processes ------------------------------------------------------------


class Stack:
    """gunicorn (and, once asked for, the workers) against the test database."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.redis = PrivateRedis(folder / "redis").start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = process_env(
            CELERY_BROKER_URL=self.redis.url,
            CONTROLPLANE_DATA_DIR=str(folder / "data"),
            OBJECT_STORE_ROOT=str(folder / "data" / "objects"),
            PUBLIC_BASE_URL=self.url,  # presigned upload URLs point at this server
            TRAINING_QUEUE="cpu",
            DEBUG="true",
        )
        self.env.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        self.processes: list[Process] = []
        web = gunicorn_command(self.port) + ["--threads", "4"]
        self._start("web", web)
        wait_until(lambda: get(self.url + "/healthz") is not None, 60, self.logs)
        self.workers_started = False

    def _start(self, name: str, command: list[str]) -> None:
        self.processes.append(Process(name, command, self.env, self.folder))

    def start_workers(self) -> None:
        """A control worker (applies job events) and a cpu worker (runs jobs)."""
        if self.workers_started:
            return
        celery = [sys.executable, "-m", "celery", "--quiet", "-A"]
        common = ["--pool", "solo", "--loglevel", "WARNING"]
        control = ["controlplane.celery_app", "worker", "-Q", "control", *common]
        cpu = ["workers.celery_app", "worker", "-Q", "cpu", *common]
        self._start("control", celery + control + ["-n", f"control-{self.port}@browser"])
        self._start("cpu", celery + cpu + ["-n", f"cpu-{self.port}@browser"])
        self.workers_started = True

    def logs(self) -> str:
        return "\n".join(process.tail() for process in self.processes)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        self.redis.stop()


@pytest.fixture(scope="session")
def stack(django_db_setup, django_db_blocker, tmp_path_factory) -> Iterator[Stack]:
    with django_db_blocker.unblock():
        stack = Stack(tmp_path_factory.mktemp("browser-stack"))
    try:
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def live_workers(stack) -> Stack:
    stack.start_workers()
    return stack


# -- a browser session per user ------------------------------------------------------------


def known_violation(rule: str, url: str, target: str) -> bool:
    return any(
        rule == known and page.search(url) and element.search(target)
        for known, page, element in AXE_KNOWN
    )


def server_ms(headers: dict[str, str]) -> float | None:
    match = re.search(r"\bapp;dur=([0-9.]+)", headers.get("server-timing", ""))
    return float(match.group(1)) if match else None


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(share * (len(ordered) - 1))))]


class Visitor:
    """One user's browser context: `goto` a page, `check` it, `login`."""

    def __init__(self, browser, stack: Stack, name: str, screenshots: Path | None):
        self.stack = stack
        self.name = name
        self.screenshots = screenshots
        self.host = urlsplit(stack.url).netloc
        self.context = browser.new_context(
            base_url=stack.url, viewport={"width": 1280, "height": 900}
        )
        self.context.set_default_timeout(15_000)
        self.problems: list[str] = []
        self.outside: list[str] = []
        self.server_times: list[tuple[str, float]] = []
        self.expected_errors: set[str] = set()
        self.visited: set[str] = set()
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("requestfailed", self._failed)
        self.page.on("response", self._response)
        self.axe_loaded_for = None

    # listeners
    def _route(self, route) -> None:
        url = route.request.url
        if urlsplit(url).netloc != self.host and not url.startswith(("data:", "blob:")):
            self.outside.append(url)
            route.abort()
            return
        route.continue_()

    def _console(self, message) -> None:
        if message.type != "error":
            return
        text = message.text
        # The document's own expected 4xx (an outsider's 404) is reported here too.
        if "Failed to load resource" in text and self.expected_errors:
            return
        self.problems.append(f"console error: {text} ({message.location.get('url', '')})")

    def _failed(self, request) -> None:
        if urlsplit(request.url).netloc != self.host:
            return  # listed as an outside request already
        if request.failure == "net::ERR_ABORTED":
            return  # cancelled by the browser: the page navigated away while it polled
        self.problems.append(f"request failed: {request.method} {request.url}: {request.failure}")

    def _response(self, response) -> None:
        url = response.url
        if urlsplit(url).netloc != self.host:
            return
        if response.status >= 400 and url not in self.expected_errors:
            self.problems.append(f"HTTP {response.status}: {response.request.method} {url}")
        ms = server_ms(response.headers)
        if ms is not None and "/static/" not in url:
            self.server_times.append((url, ms))

    # actions
    def login(self, user, password: str = PASSWORD) -> None:
        """Through the login form, as a person does. The tests hash passwords with MD5
        (tests/conftest.py), which the web process does not accept: PBKDF2 for this one."""
        from django.contrib.auth.hashers import PBKDF2PasswordHasher

        hasher = PBKDF2PasswordHasher()
        user.password = hasher.encode(password, hasher.salt())
        user.save(update_fields=["password"])
        page = self.goto("/login/")
        page.get_by_label("Username").fill(user.username)
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Log in").click()
        page.wait_for_url(lambda url: "/login/" not in url)
        self.check("after login")

    def goto(self, path: str, *, status: int = 200):
        url = self.stack.url + path if path.startswith("/") else path
        if status >= 400:
            self.expected_errors.add(url)
        response = self.page.goto(url, wait_until="load")
        self.visited.add(url)
        assert response is not None and response.status == status, (
            f"{url}: HTTP {response and response.status}, expected {status}"
        )
        self.check(path)
        return self.page

    def check(self, label: str, *, accessibility: bool = True) -> None:
        """The page as it is now: no problem so far, no axe violation; saved when asked."""
        page = self.page
        page.wait_for_load_state("load")
        violations = self.axe() if accessibility else []
        self.save(label)
        assert not self.outside, f"{label}: requests to outside hosts: {self.outside}"
        assert not self.problems, f"{label}: " + "\n".join(self.problems)
        assert not violations, f"{label} ({page.url}): accessibility:\n" + "\n".join(violations)

    def axe(self) -> list[str]:
        page = self.page
        # Injected through the DevTools protocol: the page's CSP (no inline script) stays on.
        if not page.evaluate("typeof window.axe !== 'undefined'"):
            page.evaluate(AXE_SOURCE.read_text(encoding="utf-8"))
        result = page.evaluate("options => axe.run(document, options)", AXE_RULESET)
        found = []
        for violation in result["violations"]:
            if violation["impact"] not in AXE_FAILING_IMPACTS:
                continue
            targets = [
                str(node["target"][0]) if node["target"] else "?" for node in violation["nodes"]
            ]
            targets = [t for t in targets if not known_violation(violation["id"], page.url, t)]
            if targets:
                found.append(
                    f"  {violation['impact']}: {violation['id']} ({violation['help']}): "
                    + "; ".join(targets[:5])
                )
        return found

    def save(self, label: str) -> None:
        if self.screenshots is None:
            return
        slug = re.sub(r"[^a-z0-9]+", "-", f"{self.name} {label}".lower()).strip("-")
        self.screenshots.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(self.screenshots / f"{slug}.png"), full_page=True)

    def assert_fast(self, limit_ms: float = 500.0, repeats: int = 3) -> float:
        """The p95 server time of the pages this visitor opened, loosely (target 150 ms,
        measured by bench/bench_pages.py; the tests share a small machine). Each page is
        asked `repeats` times more: a page's first request also compiles its templates."""
        pages = {url for url, _ms in self.server_times if url in self.visited}
        assert pages, "no page answered with a Server-Timing header"
        times = []
        for url in sorted(pages):
            for _ in range(repeats):
                ms = server_ms(self.context.request.get(url).headers)
                times.append((url, ms))
        p95 = percentile([ms for _url, ms in times], 0.95)
        slowest = sorted(times, key=lambda pair: -pair[1])[:3]
        assert p95 < limit_ms, f"{self.name}: p95 server time {p95:.0f} ms; slowest {slowest}"
        return p95

    def close(self, failed: bool, test_name: str) -> None:
        if failed:
            FAILURE_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            for index, page in enumerate(self.context.pages):
                path = FAILURE_SCREENSHOTS / f"{test_name}-{self.name}-{index}.png"
                try:
                    page.screenshot(path=str(path), full_page=True)
                except Exception as error:  # noqa: BLE001 - a screenshot never hides the failure
                    print(f"no screenshot of {page.url}: {error}")
        self.context.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    item.stash.setdefault(_FAILED, False)
    if report.failed:
        item.stash[_FAILED] = True
    return report


_FAILED = pytest.StashKey[bool]()


@pytest.fixture
def visitor(request, browser, stack):
    """`visitor("owner")` -> a Visitor with a browser context of its own (many per test)."""
    screenshots = os.environ.get("SCREENSHOTS_DIR")
    made: list[Visitor] = []

    def make(name: str) -> Visitor:
        folder = Path(screenshots) if screenshots else None
        made.append(Visitor(browser, stack, name, folder))
        return made[-1]

    yield make
    failed = request.node.stash.get(_FAILED, False)
    for v in made:
        v.close(failed, re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name))


def logged_in(visitor_factory, user) -> Visitor:
    """A Visitor already logged in as `user` (the form once per test is enough: the session
    cookie of a test client login is handed to the browser)."""
    from django.test import Client

    v = visitor_factory(user.username)
    client = Client()
    client.force_login(user)
    v.context.add_cookies(
        [{"name": "sessionid", "value": client.cookies["sessionid"].value, "url": v.stack.url}]
    )
    return v


def json_data(page, element_id: str):
    return json.loads(page.locator(f"#{element_id}").text_content())
