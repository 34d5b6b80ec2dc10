"""The rate card: its schema, validation, the version in force at a moment, and what a
measured usage costs under it. Pure functions but for ``rate_card_in_force``.

Units: an hour is 3,600 s of the measured figure (CPU seconds for CPU-hours, GPU-held
seconds for GPU-hours); a GB is 10^9 bytes and a GB-month is a GB held every day of a
calendar month (a day costs rate / days in that month); tokens are counted in and out.
"""

from __future__ import annotations

import calendar
import datetime as dt
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from controlplane.finops.models import RateCard, StorageKind

GB = Decimal(10**9)
MILLION = Decimal(10**6)
HOUR = Decimal(3600)
MAX_RATE = Decimal("1000000")  # per unit: far above any real price, below an overflow
DEFAULT_GPU = "default"
CENT = Decimal("0.01")


class RateCardError(ValueError):
    """A rate card that cannot be used; ``field`` names the offending one (API 400)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _rate(value: Any, field: str) -> str:
    if value is None or value == "":
        raise RateCardError(field, "this rate is required (use 0 for free)")
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise RateCardError(field, "a rate is a number, e.g. 0.05")
    try:
        number = Decimal(str(value).strip())
    except InvalidOperation:
        raise RateCardError(field, f"{value!r} is not a number") from None
    if not number.is_finite():
        raise RateCardError(field, "a rate is a finite number")
    if number < 0:
        raise RateCardError(field, "a rate cannot be negative")
    if number > MAX_RATE:
        raise RateCardError(field, f"a rate above {MAX_RATE} per unit is surely a typo")
    return format(number.normalize(), "f")


def _table(raw: Any, field: str, required: list[str], *, open_keys: bool) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise RateCardError(field, 'an object of rates is required, e.g. {"default": 2.5}')
    rates = {}
    for key in required:
        rates[key] = _rate(raw.get(key), f"{field}.{key}")
    for key, value in raw.items():
        if key in rates:
            continue
        if not open_keys:
            raise RateCardError(f"{field}.{key}", f"unknown key; use {', '.join(required)}")
        if not isinstance(key, str) or not key.strip() or len(key) > 100:
            raise RateCardError(field, "a device name is 1-100 characters")
        rates[key.strip()] = _rate(value, f"{field}.{key}")
    return rates


def validate_rates(raw: Any, currency: Any = "EUR") -> tuple[dict[str, Any], str]:
    """(normalised rates, currency), or RateCardError naming the first bad field."""
    if not isinstance(raw, dict):
        raise RateCardError(
            "rates", "an object with cpu_hour, gpu_hour, storage_gb_month, tokens_million"
        )
    known = {"cpu_hour", "gpu_hour", "storage_gb_month", "tokens_million"}
    for key in raw:
        if key not in known:
            raise RateCardError(f"rates.{key}", f"unknown rate; use {', '.join(sorted(known))}")
    if not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency):
        raise RateCardError("currency", "an ISO 4217 code in capitals, e.g. EUR or USD")
    rates = {
        "cpu_hour": _rate(raw.get("cpu_hour"), "rates.cpu_hour"),
        "gpu_hour": _table(raw.get("gpu_hour"), "rates.gpu_hour", [DEFAULT_GPU], open_keys=True),
        "storage_gb_month": _table(
            raw.get("storage_gb_month"),
            "rates.storage_gb_month",
            list(StorageKind.values),
            open_keys=False,
        ),
        "tokens_million": _rate(raw.get("tokens_million"), "rates.tokens_million"),
    }
    return rates, currency


def rate_card_in_force(organisation_id: int, at: dt.datetime) -> RateCard | None:
    """The organisation's newest version effective at ``at`` (None: no rates yet)."""
    return (
        RateCard.objects.filter(organisation_id=organisation_id, effective_from__lte=at)
        .order_by("-effective_from", "-version")
        .first()
    )


def gpu_hour_rate(rates: dict[str, Any], device_type: str) -> Decimal:
    table = rates["gpu_hour"]
    return Decimal(table.get(device_type, table[DEFAULT_GPU]))


def attempt_cost(
    rates: dict[str, Any], *, cpu_seconds: float, gpu_seconds: float, device_type: str
) -> Decimal:
    cpu = Decimal(str(cpu_seconds)) / HOUR * Decimal(rates["cpu_hour"])
    gpu = Decimal(str(gpu_seconds)) / HOUR * gpu_hour_rate(rates, device_type) if gpu_seconds else 0
    return money_amount(cpu + gpu)


def storage_day_cost(rates: dict[str, Any], kind: str, size: int, day: dt.date) -> Decimal:
    days = calendar.monthrange(day.year, day.month)[1]
    monthly = Decimal(size) / GB * Decimal(rates["storage_gb_month"][kind])
    return money_amount(monthly / days)


def serving_cost(rates: dict[str, Any], tokens_in: int, tokens_out: int) -> Decimal:
    return money_amount(
        Decimal(tokens_in + tokens_out) / MILLION * Decimal(rates["tokens_million"])
    )


def money_amount(value: Decimal | int) -> Decimal:
    """Six decimals, as stored (finops.models.MONEY): sums of many small costs stay exact
    to the cent."""
    return Decimal(value).quantize(Decimal("0.000001"), rounding=ROUND_HALF_UP)


def cents(value: Decimal) -> Decimal:
    """A figure to show: rounded to the cent."""
    return Decimal(value).quantize(CENT, rounding=ROUND_HALF_UP)
