"""static/js/lineage.js in Chromium: the buttons, a drag, Ctrl+wheel and the keyboard move
the graph's view, and a node reached with Tab is brought into view. The graph is the tag's
own output on a static page (no server), with the app's stylesheet."""

import re
from pathlib import Path
from types import SimpleNamespace

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def page(tmp_path, browser):
    from controlplane.datasets.templatetags.lineage_graph import lineage_svg
    from tests.platform.datasets.test_lineage_graph import _chain

    graph = lineage_svg(_chain(14), SimpleNamespace(pk=3), SimpleNamespace(pk=5))
    graph = graph.replace("/static/", (ROOT / "static").as_uri() + "/")
    css = (ROOT / "static" / "css" / "app.css").as_uri()
    html = tmp_path / "graph.html"
    html.write_text(
        f'<!doctype html><html><head><link rel="stylesheet" href="{css}"></head>'
        f'<body><main><section class="card">{graph}</section></main></body></html>'
    )
    # The browser tests' one Chromium (conftest.py): Playwright's sync API allows one at a time.
    tab = browser.new_page(viewport={"width": 900, "height": 700})
    errors = []
    tab.on("pageerror", lambda error: errors.append(str(error)))
    tab.goto(html.as_uri())
    yield tab
    tab.close()
    assert errors == []


def _view(page) -> list[float]:
    return [float(v) for v in page.locator("svg.lineage").get_attribute("viewBox").split()]


def test_the_graph_pans_and_zooms_with_buttons_mouse_and_keyboard(page):
    full = _view(page)
    assert page.locator(".lineage-controls").is_visible()
    box = page.locator("svg.lineage").bounding_box()
    assert box["width"] < 900 and box["height"] >= 150  # fitted, and tall enough to zoom in
    page.click("[data-lineage-zoom=in]")
    zoomed = _view(page)
    assert zoomed[2] < full[2]
    assert re.fullmatch(r"\d+%", page.locator("[data-lineage-scale]").inner_text())
    page.mouse.move(box["x"] + 400, box["y"] + 80)
    page.mouse.down()
    page.mouse.move(box["x"] + 250, box["y"] + 80, steps=5)
    page.mouse.up()
    assert _view(page)[0] > zoomed[0]  # dragged left: the view moved right
    page.locator("svg.lineage").focus()
    page.keyboard.press("0")
    assert _view(page) == full
    page.keyboard.press("+")
    page.keyboard.press("ArrowRight")
    after_key = _view(page)
    assert after_key[2] < full[2] and after_key[0] > 0
    page.keyboard.press("0")
    page.keyboard.down("Control")
    page.mouse.wheel(0, -200)
    page.keyboard.up("Control")
    assert _view(page)[2] < full[2]


def test_tabbing_to_a_node_outside_the_view_brings_it_in(page):
    svg = page.locator("svg.lineage")
    svg.focus()
    for _ in range(4):
        page.keyboard.press("+")
    start = _view(page)
    for _ in range(12):
        page.keyboard.press("Tab")
    focused = page.evaluate("document.activeElement.querySelector('title').textContent")
    assert focused.startswith("job ")
    x, _y, width, _h = _view(page)
    node = page.evaluate("document.activeElement.querySelector('rect').getBBox().x")
    assert x <= node <= x + width and x != start[0]
