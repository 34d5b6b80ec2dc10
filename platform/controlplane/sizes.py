"""Sizes for people: one convention for every page, the demo and the command line.

Decimal SI units (kB, MB, GB, TB = 10^3, 10^6, 10^9, 10^12 bytes), as disks, object stores
and network links count them, so "5.1 MB" means the same on a page, in the demo's output
and in the engine's data report (which divides by 1e6). Binary units (KiB, MiB) are
never used for display; exact byte counts stay in error messages and tooltips.

    >>> human_size(5_123_456)
    '5.1 MB'
"""

from __future__ import annotations

_UNITS = ("kB", "MB", "GB", "TB", "PB")
_STEP = 1000


def human_size(size_bytes: int | float | None) -> str:
    """`size_bytes` as a short text: "999 B", "1.0 kB", "5.1 MB", "12.3 GB".

    One decimal above a kilobyte, rounded half to even as Python's format does; None and
    negative counts (no size known) read as an em dash rather than a misleading 0 B.
    """
    if size_bytes is None or size_bytes < 0:
        return "—"
    if size_bytes < _STEP:
        return f"{int(size_bytes)} B"
    size = float(size_bytes)
    for unit in _UNITS:
        size /= _STEP
        # 999_950 bytes would print as "1000.0 kB": move up a unit instead.
        if round(size, 1) < _STEP or unit == _UNITS[-1]:
            return f"{size:.1f} {unit}"
    raise AssertionError("unreachable: the last unit always returns")
