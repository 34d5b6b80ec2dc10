"""Reading query parameters: one place that refuses what a text filter cannot hold.

PostgreSQL text cannot hold a NUL character, so `?kind=a%00b` reached the database as a
500. Every text filter of the API and of the pages goes through `text_param`: a NUL, a
surrogate or an over-long value is a 400 that names the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from django.core.exceptions import BadRequest
from rest_framework import serializers

MAX_TEXT_PARAM = 200
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


class QueryParamError(ValueError):
    def __init__(self, name: str, message: str):
        super().__init__(f"{name}: {message}")
        self.name = name
        self.message = message


def clean_text(name: str, value: str | None, *, max_length: int = MAX_TEXT_PARAM) -> str | None:
    """The value, or None when absent or empty; QueryParamError when it cannot be a filter."""
    if not value:
        return None
    if _UNSTORABLE.search(value):
        raise QueryParamError(name, "must not contain NUL or surrogate characters")
    if len(value) > max_length:
        raise QueryParamError(name, f"at most {max_length} characters")
    return value


def clean_choice(name: str, value: str | None, choices: Iterable[str]) -> str | None:
    value = clean_text(name, value)
    allowed = list(choices)
    if value is not None and value not in allowed:
        raise QueryParamError(name, f"use one of {', '.join(allowed)}")
    return value


def text_param(request, name: str, *, max_length: int = MAX_TEXT_PARAM) -> str | None:
    """A text query parameter of an API request; a bad one is a 400 naming it."""
    try:
        return clean_text(name, request.query_params.get(name), max_length=max_length)
    except QueryParamError as error:
        raise serializers.ValidationError({error.name: [error.message]}) from None


def choice_param(request, name: str, choices: Iterable[str]) -> str | None:
    """A query parameter that must be one of `choices` (absent or empty: None)."""
    try:
        return clean_choice(name, request.query_params.get(name), choices)
    except QueryParamError as error:
        raise serializers.ValidationError({error.name: [error.message]}) from None


def page_text_param(request, name: str, *, max_length: int = MAX_TEXT_PARAM) -> str | None:
    """The same for an HTML page: Django answers BadRequest with its 400 page."""
    try:
        return clean_text(name, request.GET.get(name), max_length=max_length)
    except QueryParamError as error:
        raise BadRequest(str(error)) from None
