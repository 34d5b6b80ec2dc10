"""The answer deadline of Art. 12(3): one month from receipt, extendable by two more.

A calendar month, not 30 days: received on 15 March, due on 15 April. A day the target
month lacks is clamped to its last day (31 January -> 28 or 29 February), as the
Regulation on periods (EEC/Euratom No 1182/71, Art. 3(2)(c)) counts a month.
"""

from __future__ import annotations

import calendar
from datetime import datetime

BASE_MONTHS = 1
MAX_EXTENSION_MONTHS = 2


def add_months(moment: datetime, months: int) -> datetime:
    """`moment` moved `months` calendar months ahead, the day clamped to the month's end."""
    index = moment.month - 1 + months
    year, month = moment.year + index // 12, index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def deadline_for(received_at: datetime, extension_months: int = 0) -> datetime:
    return add_months(received_at, BASE_MONTHS + extension_months)


def countdown(deadline_at: datetime, now: datetime) -> tuple[bool, str]:
    """(overdue?, the words a page shows: "12 days left", "due today", "3 days overdue")."""
    if deadline_at <= now:
        late = (now.date() - deadline_at.date()).days
        return True, f"{late} day{'s' if late != 1 else ''} overdue" if late > 0 else "overdue"
    days = (deadline_at.date() - now.date()).days
    if days == 0:
        return False, "due today"
    return False, f"{days} day{'s' if days != 1 else ''} left"
