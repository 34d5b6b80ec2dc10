"""The API's JSON parser: refuses what the database would refuse, before a view sees it.

PostgreSQL's text and jsonb types cannot hold a NUL character, and UTF-8 cannot encode a
lone surrogate (`"\\ud800"`): left to the database, either one is a 500 halfway through
a write. Deeply nested bodies make every recursive walker that follows (the JSON decoder,
serializers, `json.dumps` on the way to jsonb) hit Python's recursion limit. So the one
JSON parser every API view uses checks all three, and a non-finite number (`1e999`
decodes to infinity, which jsonb refuses too), and answers 400 in the API's error shape.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from rest_framework import parsers, serializers
from rest_framework.exceptions import ParseError

MAX_DEPTH = 64

# A JSON string literal (escapes included), unrolled so the regex engine never backtracks.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
# bytes.translate: brackets become ( and ), every other byte is deleted.
_TO_PARENS = bytes.maketrans(b"[]{}", b"()()")
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(b"[]{}")))
# Cheap pre-filter: an escape that may decode to NUL or to a surrogate.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")
_SURROGATE_OR_NUL = re.compile("[\x00\ud800-\udfff]")


def nested_deeper_than(text: str, limit: int = MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays/objects more than `limit` deep, found without
    recursion and in C-speed passes.

    Strings are cut out (a bracket inside one does not nest), the rest reduced to ( and ),
    and each round removes every innermost "()" pair, so the nesting drops by one level a
    round. A matched pair left after `limit` rounds was deeper than `limit`. Brackets
    that never match (truncated input) are left for the JSON decoder to report.
    """
    if text.count("[") + text.count("{") <= limit:
        return False  # cannot be deeper than the number of openings
    brackets = (
        _STRING.sub("", text).encode("utf-8", "surrogatepass").translate(_TO_PARENS, _NOT_BRACKETS)
    )
    for _ in range(limit):
        peeled = brackets.replace(b"()", b"")
        if len(peeled) == len(brackets):
            break
        brackets = peeled
    return b"()" in brackets


def _finite_float(literal: str) -> float:
    value = float(literal)
    if not math.isfinite(value):
        raise ValueError(f"number {literal[:40]} is out of range")
    return value


def first_bad_string(data: Any) -> tuple[str, str] | None:
    """(dotted path, problem) of the first key or string holding a NUL or a lone surrogate.

    Walks with an explicit stack: the depth is bounded already, but a walker that cannot
    overflow is one less thing to reason about.
    """
    stack: list[tuple[str, Any]] = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            problem = _string_problem(value)
            if problem:
                return path or "non_field_errors", problem
        elif isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                problem = _string_problem(key)
                if problem:
                    return child, f"the key {problem.removeprefix('the text ')}"
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend(
                (f"{path}.{index}" if path else str(index), item)
                for index, item in enumerate(value)
            )
    return None


def _string_problem(text: str) -> str | None:
    found = _SURROGATE_OR_NUL.search(text)
    if found is None:
        return None
    if found.group() == "\x00":
        return "the text contains a NUL character (\\u0000), which cannot be stored"
    return "the text contains a lone UTF-16 surrogate, which is not valid Unicode"


class JSONTextError(ValueError):
    """The text is not JSON we can store; `path` names the string at fault, if one is."""

    def __init__(self, message: str, path: str | None = None):
        super().__init__(f"{path}: {message}" if path else message)
        self.message = message
        self.path = path


def loads_storable(text: str) -> Any:
    """json.loads for text from outside (API bodies, JSON typed into a page's form) that
    refuses deep nesting, NaN/Infinity, numbers out of float range, NUL and lone surrogates."""
    if nested_deeper_than(text, MAX_DEPTH):
        raise JSONTextError(f"nested deeper than {MAX_DEPTH} levels")
    try:
        data = json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as error:
        raise JSONTextError(str(error)) from None
    if _SUSPECT_ESCAPE.search(text):
        found = first_bad_string(data)
        if found is not None:
            raise JSONTextError(found[1], path=found[0])
    return data


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser (strict: no NaN or Infinity) with the checks of `loads_storable`."""

    def parse(self, stream, media_type=None, parser_context=None) -> Any:
        encoding = (parser_context or {}).get("encoding", "utf-8")
        try:
            text = stream.read().decode(encoding)
        except UnicodeDecodeError as error:
            raise ParseError(
                f"JSON parse error - the body is not valid {encoding}: {error}"
            ) from None
        try:
            return loads_storable(text)
        except JSONTextError as error:
            if error.path is None:
                raise ParseError(f"JSON parse error - {error.message}") from None
            raise serializers.ValidationError({error.path: [error.message]}) from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")
