"""`{% line_chart %}`: a figure with its title above the chart, its data in a JSON block
for static/js/charts.js (uPlot), and the server-drawn SVG kept for print and no-JS."""

from __future__ import annotations

import json
import math
import re

from django.template import Context, Template


def render(lines: dict, **options) -> str:
    args = " ".join(f'{k}="{v}"' for k, v in options.items())
    return Template("{% load charts %}{% line_chart lines " + args + " %}").render(
        Context({"lines": lines})
    )


def chart_json(html: str) -> dict:
    data_id = re.search(r'data-chart="([^"]+)"', html).group(1)
    block = re.search(rf'<script id="{data_id}" type="application/json">(.*?)</script>', html, re.S)
    return json.loads(block.group(1))


def test_the_title_comes_first_and_the_data_travels_as_json():
    html = render(
        {"train/loss": [(0, 3.0), (10, 2.5)], "val/loss": [(0, 3.1), (10, None)]}, title="loss"
    )
    assert html.index("<figcaption") < html.index("<svg") < html.index("application/json")
    assert '<figcaption class="chart-title">loss</figcaption>' in html
    data = chart_json(html)
    assert data["title"] == "loss" and data["x_label"] == "step"
    assert [(s["label"], s["points"]) for s in data["series"]] == [
        ("train/loss", [[0, 3.0], [10, 2.5]]),
        ("val/loss", [[0, 3.1]]),  # the missing value is left out, not drawn as 0
    ]
    assert html.count("<polyline") == 2  # the fallback


def test_constant_series_are_marked_to_start_hidden():
    data = chart_json(render({"lr": [(0, 3e-4), (5, 3e-4)], "loss": [(0, 2.0), (5, 1.0)]}))
    assert {s["label"]: s["constant"] for s in data["series"]} == {"lr": True, "loss": False}


def test_each_chart_has_its_own_data_block():
    html = render({"a": [(0, 1.0), (1, 2.0)]}) + render({"b": [(0, 1.0), (1, 2.0)]})
    ids = re.findall(r'data-chart="([^"]+)"', html)
    assert len(set(ids)) == 2


def test_date_ends_name_the_x_axis():
    data = chart_json(render({"GB": [(0, 1.0), (89, 2.0)]}, x_from="1 Sep", x_to="29 Nov"))
    assert data["x_label"] == "1 Sep – 29 Nov"
    named = chart_json(render({"€": [(1, 1.0), (2, 2.0)]}, x_label="day of the month"))
    assert named["x_label"] == "day of the month"


def test_no_finite_point_draws_no_chart():
    html = render({"loss": [(0, math.nan), (1, math.inf)]}, title="loss")
    assert "No points yet." in html and "application/json" not in html


def test_labels_and_titles_cannot_inject_markup():
    html = render({"<img src=x>": [(0, 1.0), (1, 2.0)]}, title="</script><b>")
    assert "<img src=x>" not in html and "</script><b>" not in html
    assert chart_json(html)["series"][0]["label"] == "<img src=x>"
