"""Art. 12(3): one calendar month from receipt, clamped to the month's end."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from controlplane.gdpr.deadlines import add_months, countdown, deadline_for


def at(year, month, day, hour=10):
    return datetime(year, month, day, hour, tzinfo=UTC)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        (at(2026, 1, 31), at(2026, 2, 28)),
        (at(2028, 1, 31), at(2028, 2, 29)),  # a leap year
        (at(2026, 3, 15), at(2026, 4, 15)),
        (at(2026, 3, 31), at(2026, 4, 30)),
        (at(2026, 12, 20), at(2027, 1, 20)),  # across the year
    ],
)
def test_the_deadline_is_one_calendar_month_later(received, due):
    assert deadline_for(received) == due


def test_an_extension_counts_from_receipt_not_from_the_clamped_date():
    # 31 Jan + 1 = 28 Feb, but + 3 months is 30 April, not 28 April.
    assert deadline_for(at(2026, 1, 31), 2) == at(2026, 4, 30)
    assert add_months(at(2026, 11, 30), 3) == at(2027, 2, 28)


def test_the_countdown_says_days_left_due_today_or_overdue():
    now = at(2026, 5, 1, 9)
    assert countdown(at(2026, 5, 13, 9), now) == (False, "12 days left")
    assert countdown(at(2026, 5, 2, 9), now) == (False, "1 day left")
    assert countdown(at(2026, 5, 1, 18), now) == (False, "due today")
    assert countdown(at(2026, 4, 28, 9), now) == (True, "3 days overdue")
    assert countdown(at(2026, 5, 1, 8), now) == (True, "overdue")
