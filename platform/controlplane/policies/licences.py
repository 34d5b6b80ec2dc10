"""SPDX licence identifiers and expressions (the `license-expression` package: the SPDX
list with aliases and an expression parser, so `MIT OR Apache-2.0` is understood and a
typo is answered with the nearest known identifiers rather than a bare "invalid").

`LicenseRef-<name>` is SPDX's form for a licence outside the list (an internal data
licence); it is accepted as written.
"""

from __future__ import annotations

import difflib
import re
from functools import lru_cache

from license_expression import AND, OR, ExpressionError, LicenseSymbol, get_spdx_licensing

LICENSE_REF = re.compile(r"^LicenseRef-[A-Za-z0-9.\-]{1,100}$")


@lru_cache(maxsize=1)
def _licensing():
    return get_spdx_licensing()


@lru_cache(maxsize=1)
def _spdx_ids() -> dict[str, str]:
    """lower-case id -> canonical id, for SPDX's own identifiers (no scancode refs)."""
    known = {}
    for symbol in _licensing().known_symbols.values():
        if not symbol.key.startswith("LicenseRef-"):
            known[symbol.key.lower()] = symbol.key
    return known


def nearest(identifier: str, n: int = 3) -> list[str]:
    ids = _spdx_ids()
    matches = difflib.get_close_matches(identifier.lower(), list(ids), n=n, cutoff=0.5)
    return [ids[m] for m in matches]


def canonical_id(identifier: str) -> str | None:
    """The SPDX spelling of `identifier` (case-insensitive), a LicenseRef as written, or None."""
    if LICENSE_REF.match(identifier):
        return identifier
    return _spdx_ids().get(identifier.strip().lower())


def unknown_id_message(identifier: str) -> str:
    close = nearest(identifier)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return (
        f"'{identifier}' is not an SPDX licence identifier{hint} "
        "(a licence outside the SPDX list is written LicenseRef-<name>)"
    )


def _keys(expression) -> list[str]:
    """Every licence and exception identifier in the expression."""
    return _licensing().license_keys(expression)


def licence_verdict(licence: str, allowed: set[str]) -> str | None:
    """None when the dataset's licence expression is within `allowed` (canonical ids):
    an OR needs one allowed branch, an AND needs all. Otherwise the reason it is not."""
    text = (licence or "").strip()
    if not text:
        return "the dataset declares no licence"
    if LICENSE_REF.match(text):
        return None if text in allowed else f"licence {text} is not among the allowed licences"
    try:
        expression = _licensing().parse(text, validate=True, strict=False)
    except ExpressionError:
        close = nearest(text)
        hint = f" (closest SPDX identifiers: {', '.join(close)})" if close else ""
        return f"licence '{text}' is not an SPDX licence expression{hint}"
    if expression is None:
        return "the dataset declares no licence"
    if _allowed(expression, allowed):
        return None
    return f"licence {expression.render()} is not among the allowed licences"


def _allowed(expression, allowed: set[str]) -> bool:
    if isinstance(expression, LicenseSymbol):
        return expression.key in allowed
    if isinstance(expression, OR):
        return any(_allowed(arg, allowed) for arg in expression.args)
    if isinstance(expression, AND):
        return all(_allowed(arg, allowed) for arg in expression.args)
    # WITH (a licence with an exception) and anything else: the licence and its exception
    # must both be allowed (an exception changes the terms).
    return all(key in allowed for key in _keys(expression))
