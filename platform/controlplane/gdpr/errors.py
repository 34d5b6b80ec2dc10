"""Errors of the GDPR request services; each carries the HTTP status the API answers with."""

from __future__ import annotations


class GdprError(Exception):
    """A request the caller can fix (or may not make); `status` is its HTTP status."""

    status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidRequest(GdprError):
    status = 400


class NotAllowed(GdprError):
    status = 403


class NotFound(GdprError):
    status = 404


class Conflict(GdprError):
    status = 409
