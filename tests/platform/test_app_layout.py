"""Each Django app owns its pages, and its pages and API read through selectors.

Checked on the source (like the import-boundary test), so a query written straight into a
view, or a page that renders another app's template, is caught when it is written.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APPS = ROOT / "platform" / "controlplane"
# Calls that build a query; a view may still order or pick from what a selector returned.
QUERY_BUILDERS = {
    "objects",
    "filter",
    "exclude",
    "annotate",
    "aggregate",
    "select_related",
    "prefetch_related",
    "values_list",
    "raw",
}


def _interface_modules() -> list[Path]:
    return sorted([*APPS.glob("*/views.py"), *APPS.glob("*/api.py")])


def _query_builders(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(ROOT)}:{node.lineno} .{node.attr}"
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr in QUERY_BUILDERS
    ]


def _templates_named(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and node.value.endswith(".html")
    ]


def test_views_and_api_modules_query_through_selectors():
    assert len(_interface_modules()) >= 10
    found = [hit for path in _interface_modules() for hit in _query_builders(path)]
    assert found == []


def test_every_app_renders_its_own_templates():
    pages = sorted(APPS.glob("*/views.py"))
    assert {path.parent.name for path in pages} >= {
        "projects",
        "uploads",
        "datasets",
        "jobs",
        "audit",
        "dashboard",
    }
    elsewhere = [
        f"{path.relative_to(ROOT)} renders {name}"
        for path in pages
        for name in _templates_named(path)
        if not name.startswith(f"{path.parent.name}/")
    ]
    assert elsewhere == []


def test_the_dashboard_keeps_only_the_shell():
    assert sorted(p.name for p in (ROOT / "templates" / "dashboard").glob("*.html")) == [
        "overview.html"
    ]
