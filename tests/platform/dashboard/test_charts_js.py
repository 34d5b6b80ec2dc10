"""static/js/charts.js's arithmetic, run under node: TensorBoard's smoothing, the shared
x axis uPlot needs, and the number format of ticks and hover values."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

CHARTS_JS = Path(__file__).resolve().parents[3] / "static" / "js" / "charts.js"
# Just enough of a browser for the script to load: no figure to mount.
STUB = """
global.window = {};
global.document = {readyState: "complete", querySelectorAll: () => [], addEventListener() {}};
"""


def run_js(expression: str):
    node = shutil.which("node")
    if node is None:
        pytest.skip("node is not installed")
    script = f"{STUB}\n{CHARTS_JS.read_text()}\nconst c = window.controlplaneCharts;\n"
    script += f"process.stdout.write(JSON.stringify({expression}));"
    done = subprocess.run([node, "-e", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_smoothing_is_tensorboards_debiased_moving_average():
    values = [1.0, 2.0, None, 3.0]
    weight = 0.6
    expected, last, count = [], 0.0, 0
    for value in values:
        if value is None:
            expected.append(None)
            continue
        last = last * weight + (1 - weight) * value
        count += 1
        expected.append(last / (1 - weight**count))
    got = run_js("c.smoothed([1, 2, null, 3], 0.6)")
    assert got[0] == pytest.approx(1.0)  # debiased: the first point is the first value
    assert got[2] is None
    assert got == pytest.approx(expected)
    assert run_js("c.smoothed([1, 5], 0)") == [1, 5]


def test_series_share_one_sorted_x_axis_with_gaps_as_null():
    got = run_js('c.aligned([{"points": [[0, 3], [10, 2]]}, {"points": [[5, 9], [10, 1]]}])')
    assert got == {"x": [0, 5, 10], "columns": [[3, None, 2], [None, 9, 1]]}


def test_values_read_with_four_significant_digits():
    assert run_js(
        "[c.fmt(2.345678), c.fmt(0.0006), c.fmt(0.00006), c.fmt(123456), c.fmt(null)]"
    ) == [
        "2.346",
        "0.0006",
        "6.00e-5",
        "1.23e+5",
        "—",
    ]


def test_ticks_are_as_precise_as_their_spacing():
    # A loss moving in its fourth decimal reads 5.5180, 5.5185, … not five times "5.519".
    got = run_js("[0.0005, 0.25, 0.2, 5, 1e-7, 0, null].map(c.tickDecimals)")
    assert got == [4, 2, 1, 0, None, None, None]
