"""Values as a job's page shows them: durations, numbers to 4 significant digits, and
each result or parameter value with its unit (chosen by the field's name), as a `Cell`
that the templates render (`jobs/_cell.html`; sizes through the humanize_bytes filter)."""

from __future__ import annotations

import datetime as dt
import json
import math
from dataclasses import dataclass
from typing import Any


def seconds_between(start: dt.datetime | None, end: dt.datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


def human_duration(seconds: float | None) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min: a duration as a person reads it."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes:02d} min"
    return f"{hours // 24} d {hours % 24} h"


def significant(value: float) -> str:
    """A float to 4 significant digits; very large or small ones in scientific notation."""
    if not math.isfinite(value):
        return str(value)
    text = f"{value:.4g}"
    if "e" not in text and abs(value) >= 1000:
        return f"{float(text):,.0f}"
    return text


@dataclass
class Cell:
    """One value as the page shows it: `text` (and a `unit`), or `bytes` for the size
    filter (humanize_bytes), or `code` for identifiers; `raw` keeps the exact value."""

    text: str = ""
    unit: str = ""
    bytes: int | None = None
    code: bool = False
    raw: Any = None


def _count(value: float) -> str:
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g} {unit}"
    return f"{value:g}"


def _listed(value: Any) -> str:
    # A prompt of "\n" would read as nothing: strings with edge whitespace are quoted.
    if isinstance(value, str) and value.strip() != value:
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def setting_cell(key: str, value: Any) -> Cell:
    """A parameter as the API takes it: numbers exactly as given (a seed, not 1,337)."""
    if isinstance(value, bool) or value is None:
        return value_cell(key, value)
    if isinstance(value, int):
        return Cell(str(value), raw=value)
    if isinstance(value, float):
        return Cell(f"{value:g}", raw=value)
    return value_cell(key, value)


def value_cell(key: str, value: Any) -> Cell:
    """A result value with its unit and rounding, chosen by the field's name."""
    name = key.rsplit("/", 1)[-1].rsplit(".", 1)[-1]
    if value is None or value == "":
        return Cell("—", raw=value)
    if isinstance(value, bool):
        return Cell("yes" if value else "no", raw=value)
    if isinstance(value, int | float) and math.isfinite(value):
        if name in ("size", "content_bytes") or name.endswith("_bytes"):
            return Cell(bytes=int(value), raw=value)
        if name == "seconds" or name.endswith("_seconds") and "per" not in name:
            return Cell(human_duration(float(value)), raw=value)
        if name.endswith("per_second"):
            unit = name.removesuffix("_per_second").replace("_", " ") + "/s"
            return Cell(f"{value:,.0f}" if value >= 100 else significant(value), unit, raw=value)
        if "accuracy" in name and 0 <= value <= 1:
            return Cell(f"{value * 100:.1f}", "%", raw=value)
        if name.endswith("parameters"):
            return Cell(_count(value), raw=value)
        if isinstance(value, int):
            return Cell(f"{value:,}", raw=value)
        return Cell(significant(value), raw=value)
    if isinstance(value, str):
        if name == "sha256" and len(value) > 12:
            return Cell(value[:12] + "…", code=True, raw=value)
        return Cell(value if len(value) <= 300 else value[:300] + "…", raw=value)
    if isinstance(value, list) and all(not isinstance(v, dict | list) for v in value):
        shown = ", ".join(_listed(v) for v in value[:8]) + (
            f" … ({len(value)})" if len(value) > 8 else ""
        )
        return Cell(shown or "none", raw=value)
    if isinstance(value, list):
        return Cell(f"{len(value)} entr{'y' if len(value) == 1 else 'ies'}", raw=value)
    text = json.dumps(value, ensure_ascii=False, default=str)
    return Cell(text if len(text) <= 300 else text[:300] + "…", code=True, raw=value)


@dataclass
class Row:
    label: str
    cell: Cell


def flattened(data: dict, *, prefix: str = "", depth: int = 2) -> list[Row]:
    """A nested dict as rows labelled "outer · inner", down to `depth` levels."""
    rows: list[Row] = []
    for key, value in data.items():
        label = f"{prefix} · {key}" if prefix else str(key)
        if isinstance(value, dict) and value and depth > 1:
            rows += flattened(value, prefix=label, depth=depth - 1)
        else:
            rows.append(Row(label, value_cell(str(key), value)))
    return rows
