"""Errors of the serving services; each carries the HTTP status the API answers with."""

from __future__ import annotations


class ServingError(Exception):
    """A request the caller can fix (or may not make); `status` is its HTTP status."""

    status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidRequest(ServingError):
    status = 400


class NotAllowed(ServingError):
    status = 403


class NotFound(ServingError):
    status = 404


class Conflict(ServingError):
    status = 409
