"""One size convention everywhere: decimal SI units, through one function and one filter."""

import re
from pathlib import Path

import pytest
from django.template import Context, Template

from controlplane.sizes import human_size

TEMPLATES = Path(__file__).resolve().parents[2] / "templates"


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (999, "999 B"),
        (1000, "1.0 kB"),
        (5_123_456, "5.1 MB"),  # the demo's 5.1 MB: 10^6 bytes a megabyte, not 2^20
        (4_800_000_000, "4.8 GB"),
        (999_950, "1.0 MB"),  # not "1000.0 kB"
        (3 * 10**15, "3.0 PB"),
        (None, "—"),
    ],
)
def test_human_size_uses_decimal_units(size, text):
    assert human_size(size) == text


def test_filter_gives_the_same_text_as_the_function():
    template = Template("{% load humanize_bytes %}{{ a|humanize_bytes }}|{{ b|humanize_bytes }}")
    rendered = template.render(Context({"a": 5_123_456, "b": None}))
    assert rendered == f"{human_size(5_123_456)}|—"


def test_no_template_formats_sizes_another_way():
    """Django's filesizeformat counts in 1024s and labels them KB/MB: the pages would
    disagree with the demo again. A raw "N bytes" is fine next to the filtered size only
    (a tooltip, a certificate's exact count)."""
    other_ways = re.compile(r"filesizeformat|\|bytes\b")
    raw_count = re.compile(r"\{\{[^}|]*size[^}|]*\}\} bytes")
    found = [
        f"{path.relative_to(TEMPLATES)}:{number}"
        for path in sorted(TEMPLATES.rglob("*.html"))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if other_ways.search(line) or (raw_count.search(line) and "|humanize_bytes" not in line)
    ]
    assert found == []
