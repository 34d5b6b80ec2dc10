"""Take today's storage snapshot of every project now (the beat takes one nightly).

python manage.py finops_snapshot [--day 2026-11-30]
"""

from __future__ import annotations

import datetime as dt

from django.core.management.base import BaseCommand, CommandError

from controlplane.finops.alerts import budgets_check_all
from controlplane.finops.storage import storage_snapshot


class Command(BaseCommand):
    help = "Snapshot every project's storage (bytes by kind) for today, replacing today's."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--day", help="the day to record (YYYY-MM-DD), default today (UTC)")

    def handle(self, *args, day: str | None = None, **options) -> None:
        try:
            when = dt.date.fromisoformat(day) if day else None
        except ValueError:
            raise CommandError(f"--day {day!r} is not a date like 2026-11-30") from None
        rows = storage_snapshot(day=when)
        fired = budgets_check_all()
        self.stdout.write(f"{rows} storage rows written; {fired} budget alerts fired")
