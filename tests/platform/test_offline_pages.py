"""No page loads anything from outside the deployment: it must work offline (the embedded
default) and under the Content-Security-Policy ('self' only).

Checked on the source, so a CDN <script>, a web font or a remote image added to any
template or static file fails here, whichever page it is on; and on the API docs page as
served, whose Swagger UI bundle comes from drf-spectacular-sidecar.
"""

import json
import re
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.staticfiles import finders
from django.template.loader import get_template

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "templates"
STATIC = ROOT / "static"

# URIs that name things without fetching them (the SVG namespace createElementNS needs).
NAMESPACES = {"www.w3.org"}
# Tags whose URL attributes the browser fetches (an <a href> is navigation, not a load).
LOADING_TAG = re.compile(
    r"<(?:script|link|img|iframe|source|video|audio|embed|object|track|input|form|use|image)\b[^>]*>",
    re.IGNORECASE,
)
OUTSIDE_URL = re.compile(r"""(?:https?:)?//(?P<host>[a-z0-9.-]+\.[a-z]{2,})""", re.IGNORECASE)
URL_ATTRIBUTE = re.compile(
    r"""\b(?:src|href|srcset|action|poster|data|xlink:href)\s*=\s*["']?\s*(?P<url>[^"'\s>]+)""",
    re.IGNORECASE,
)
CSS_LOAD = re.compile(r"""(?:url\(\s*["']?|@import\s+["']?)(?P<url>[^"')\s]+)""", re.IGNORECASE)
BLOCK_COMMENT = re.compile(r"/\*.*?\*/", re.DOTALL)  # licence headers name their homepage


def _outside_hosts(urls) -> list[str]:
    hosts = []
    for url in urls:
        found = OUTSIDE_URL.match(url.strip())
        if found and found["host"].lower() not in NAMESPACES:
            hosts.append(found["host"])
    return hosts


def outside_loads_in_html(text: str) -> list[str]:
    urls = [m["url"] for tag in LOADING_TAG.findall(text) for m in URL_ATTRIBUTE.finditer(tag)]
    urls += [m["url"] for m in CSS_LOAD.finditer(text)]
    return _outside_hosts(urls)


def outside_hosts_in_code(text: str) -> list[str]:
    """Every absolute URL left once comments are gone: code has no business naming a host."""
    code = BLOCK_COMMENT.sub("", text)
    return _outside_hosts(m.group(0) for m in re.finditer(r"https?://[^\s\"'`)]+", code))


def test_the_checks_catch_a_cdn():
    assert outside_loads_in_html('<script src="https://cdn.example.com/x.js"></script>')
    assert outside_loads_in_html('<link rel="stylesheet" href="//fonts.example.com/a.css">')
    assert outside_loads_in_html("<style>@import 'https://fonts.example.com/f.css';</style>")
    assert not outside_loads_in_html('<a href="https://example.com/docs">docs</a>')
    assert outside_hosts_in_code('fetch("https://api.example.com/v1")')
    assert not outside_hosts_in_code(
        '/*! lib https://github.com/x/y */ ns("http://www.w3.org/2000/svg")'
    )


def test_no_template_loads_from_an_outside_host():
    found = {
        str(path.relative_to(TEMPLATES)): hosts
        for path in sorted(TEMPLATES.rglob("*.html"))
        if (hosts := outside_loads_in_html(path.read_text(encoding="utf-8")))
    }
    assert found == {}


def test_no_static_file_names_an_outside_host():
    served = [p for p in STATIC.rglob("*") if p.suffix in {".js", ".mjs", ".css", ".svg", ".html"}]
    assert served, "static/ holds the pages' code"
    found = {
        str(path.relative_to(STATIC)): hosts
        for path in sorted(served)
        if (hosts := outside_hosts_in_code(path.read_text(encoding="utf-8", errors="replace")))
    }
    assert found == {}


def test_the_docs_page_template_we_extend_loads_nothing_from_outside():
    source = Path(get_template("drf_spectacular/swagger_ui.html").origin.name).read_text()
    assert outside_loads_in_html(source) == []


@pytest.mark.django_db
def test_the_api_docs_page_is_served_from_the_deployment(client):
    page = client.get("/api/v1/docs/")
    assert page.status_code == 200
    html = page.content.decode()
    assert outside_loads_in_html(html) == []
    loaded = [m["url"] for tag in LOADING_TAG.findall(html) for m in URL_ATTRIBUTE.finditer(tag)]
    assert any("swagger-ui-bundle.js" in url for url in loaded)
    for url in loaded:
        url = url.replace("&amp;", "&")
        if url.startswith(settings.STATIC_URL):  # a file the deployment serves itself
            assert finders.find(url.removeprefix(settings.STATIC_URL)), url
        else:
            assert client.get(url).status_code == 200, url
    script = client.get("/api/v1/docs/?script=").content.decode()
    assert outside_hosts_in_code(script) == []
    swagger = json.loads(
        re.search(r"const swaggerSettings = (\{.*?\});", script, re.DOTALL).group(1)
    )
    # Swagger UI's own default would fetch a badge from validator.swagger.io.
    assert swagger["validatorUrl"] is None
