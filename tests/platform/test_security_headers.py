"""Content-Security-Policy: every page carries it, no template or rendered page holds
inline script, and the API docs page works with files served from our own origin."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.django_db

REPO = Path(__file__).resolve().parents[2]
TEMPLATE_DIRS = [REPO / "templates", *sorted((REPO / "platform").glob("**/templates"))]

TAG = re.compile(r"<[a-zA-Z][^>]*>", re.DOTALL)
SCRIPT = re.compile(r"<script\b([^>]*)>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE)
EVENT_ATTRIBUTE = re.compile(r"\s(on[a-z]+|hx-on[:\-][^\s=]*)\s*=", re.IGNORECASE)
JS_URL = re.compile(r"""(href|src|action)\s*=\s*["']?\s*javascript:""", re.IGNORECASE)


def inline_code(html: str) -> list[str]:
    """What a strict CSP would refuse in `html`: inline <script> bodies, on...= and
    hx-on attributes (htmx evaluates them), javascript: URLs."""
    found = []
    for match in SCRIPT.finditer(html):
        attributes, body = match.group(1), match.group(2)
        if body.strip() and "application/json" not in attributes:
            found.append(f"inline <script>: {body.strip()[:60]!r}")
    for tag in TAG.findall(html):
        if tag.lower().startswith("<script"):
            continue
        found += [
            f"event attribute {m.group(1)!r} in {tag[:60]!r}" for m in EVENT_ATTRIBUTE.finditer(tag)
        ]
        found += [f"javascript: URL in {tag[:60]!r}" for _ in JS_URL.finditer(tag)]
    return found


def test_the_scanner_finds_what_it_looks_for():
    assert inline_code("<script>alert(1)</script><p>x</p>")
    assert inline_code('<button onclick="go()">x</button>')
    assert inline_code('<div hx-on:click="go()">x</div>')
    assert inline_code('<a href="javascript:go()">x</a>')
    assert not inline_code('<script src="/static/x.js" defer></script>')
    assert not inline_code('<script type="application/json" id="d">{"a": 1}</script>')
    assert not inline_code("<p>Click online=yes to continue</p>")


def test_no_template_holds_inline_script():
    templates = [path for folder in TEMPLATE_DIRS for path in folder.glob("**/*.html")]
    assert len(templates) > 10
    offenders = {
        str(path.relative_to(REPO)): inline_code(path.read_text())
        for path in templates
        if inline_code(path.read_text())
    }
    assert offenders == {}


def _policy(response) -> dict[str, list[str]]:
    header = response["Content-Security-Policy"]
    return {
        part.split()[0]: part.split()[1:] for part in (p.strip() for p in header.split(";")) if part
    }


def test_policy_allows_no_inline_or_eval_script(client):
    policy = _policy(client.get("/login/"))
    assert policy["script-src"] == ["'self'"]
    assert policy["default-src"] == ["'self'"] and policy["object-src"] == ["'none'"]
    assert policy["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in policy["style-src"]


@pytest.fixture
def site(team, make_upload, make_ready_version):
    """One of everything the dashboard's URLs name."""
    from controlplane.accounts.services import api_token_create
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\nb\n")
    job = job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )
    dataset = dataset_create(
        project=team.project, actor=team.owner, name="Plays", slug="plays", kind="text"
    )
    make_ready_version(dataset, team.owner, {"plays.txt": b"to be\n"})
    token, _ = api_token_create(user=team.owner, name="t")
    _registered_model(team, job)
    subject_request = _subject_request(team)
    return {
        "project_id": team.project.pk,
        "job_id": job.pk,
        "upload_id": upload.pk,
        "dataset_id": dataset.pk,
        "number": 1,
        "artifact_id": 1,
        "user_id": team.viewer.pk,
        "token_id": token.pk,
        "token": "not-a-token",
        "name": "gpt",
        "request_id": 1,
        "project_slug": team.project.slug,
        "slug": team.project.organisation.slug,
        "org_slug": team.project.organisation.slug,
        "violation_id": 1,
        "waiver_id": 1,
        "hold_id": 1,
        "subject_request_id": subject_request.pk,
        "table": "spend",
        "kind": "pretrain",  # the New job page of a kind
        "export_format": "csv",
    }


def _subject_request(team):
    """A data-subject request, filed by the engineer (the owner walking the pages may
    decide it: its page shows the review form)."""
    from controlplane.gdpr.services import request_file

    return request_file(
        project=team.project,
        actor=team.engineer,
        kind="erasure",
        identifiers=[{"type": "email", "value": "ann@example.com"}],
        legal_basis="Art. 17(1)(b)",
    )


def _registered_model(team, job) -> None:
    """A model "gpt" with a ready v1, for the registry's pages."""
    from controlplane.registry.models import ModelVersion, RegisteredModel

    model = RegisteredModel.objects.create(
        project=team.project, name="gpt", task="text-generation", created_by=team.owner
    )
    ModelVersion.objects.create(
        model=model,
        number=1,
        state="ready",
        source_job=job,
        source_attempt=1,
        created_by=team.owner,
    )


def _dashboard_urls(kwargs: dict) -> list[str]:
    """Every page route, with its arguments filled in: the root URLconf's own and those of
    the apps' urls.py it includes at the root (the API and admin, included under their
    own prefixes, are not pages)."""
    from django.urls import URLPattern, URLResolver, get_resolver, reverse

    def page_patterns(patterns, namespace=""):
        for pattern in patterns:
            if isinstance(pattern, URLResolver) and str(pattern.pattern) == "":
                inner = f"{pattern.namespace}:" if pattern.namespace else ""
                yield from page_patterns(pattern.url_patterns, namespace + inner)
            elif isinstance(pattern, URLPattern) and pattern.name:
                yield namespace + pattern.name, pattern

    urls = []
    for name, pattern in page_patterns(get_resolver().url_patterns):
        names = list(pattern.pattern.regex.groupindex)
        urls.append(reverse(name, kwargs={arg: kwargs[arg] for arg in names}))
    return urls


def test_every_dashboard_page_carries_the_policy_and_no_inline_script(site, team, client):
    client.force_login(team.owner)
    urls = _dashboard_urls(site)
    assert len(urls) > 15
    pages = 0
    for url in urls:
        response = client.get(url)
        assert "Content-Security-Policy" in response, url
        if response.status_code == 200 and response["Content-Type"].startswith("text/html"):
            pages += 1
            assert inline_code(response.content.decode()) == [], url
    assert pages > 10


def test_pages_anonymous_admin_and_api_carry_the_policy(team, client):
    for url in ["/login/", "/admin/login/", "/api/v1/projects/", "/api/v1/docs/", "/healthz"]:
        assert "Content-Security-Policy" in client.get(url), url
    client.force_login(team.admin)
    team.admin.is_superuser = True
    team.admin.save()
    for url in ["/admin/", "/admin/accounts/apitoken/", "/admin/accounts/apitoken/add/"]:
        response = client.get(url)
        assert "Content-Security-Policy" in response, url
        assert inline_code(response.content.decode()) == [], url


def test_htmx_is_told_not_to_inject_styles_or_eval(team, client):
    client.force_login(team.owner)
    page = client.get("/").content.decode()
    assert '"includeIndicatorStyles": false' in page and '"allowEval": false' in page
    assert ".htmx-indicator" in (REPO / "static/css/app.css").read_text()


def test_schema_and_docs_are_public_and_the_docs_page_needs_no_cdn(client):
    from django.contrib.staticfiles import finders

    assert client.get("/api/v1/schema/").status_code == 200
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    html = response.content.decode()
    assert inline_code(html) == [] and "<style" not in html
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert sources and all(s.startswith("/") for s in sources), sources
    for source in sources:
        if source.startswith(settings.STATIC_URL) or source.startswith("/" + settings.STATIC_URL):
            path = source.split(settings.STATIC_URL, 1)[1]
            assert finders.find(path), source
    script_url = next(s for s in sources if "script" in s and not s.endswith(".js"))
    script = client.get(script_url.replace("&amp;", "&"))
    assert script.status_code == 200 and script["Content-Type"].startswith("application/javascript")
    assert "/api/v1/schema/" in script.content.decode()
