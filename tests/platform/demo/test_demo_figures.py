"""The demo prints figures as the pages show them: decimal sizes, 4 significant digits,
accuracies in percent with one decimal, durations as the job page's header has them."""

from __future__ import annotations

import pytest

from controlplane.demo.figures import duration, human_size, metric, percent
from controlplane.demo.plan import FULL, QUICK, warmup


@pytest.mark.parametrize(
    ("size", "text"),
    [(None, "—"), (999, "999 B"), (1000, "1.0 kB"), (5_123_456, "5.1 MB"), (999_950, "1.0 MB")],
)
def test_sizes_are_decimal_si_as_on_the_pages(size, text):
    assert human_size(size) == text


def test_metrics_percentages_and_durations_round_as_the_pages_do():
    assert (
        metric(1.87349) == "1.873" and metric(0.021349) == "0.02135" and metric(12345) == "12,345"
    )
    assert percent(0.71875) == "71.9 %" and percent(0.5) == "50.0 %"
    assert duration(8.26) == "8.3 s" and duration(48.4) == "48 s" and duration(125) == "2 min 05 s"


def test_every_warmup_is_a_twentieth_of_its_run():
    assert warmup(FULL.pretrain_steps) == 100  # nanoGPT's 100 of 2000
    assert warmup(QUICK.posttrain_steps) == 1
    assert QUICK.with_pretrain_steps(None) == QUICK
    assert QUICK.with_pretrain_steps(50).pretrain_steps == 50
