"""Errors of the registry's services; each carries the HTTP status the API answers with."""

from __future__ import annotations


class RegistryError(Exception):
    """A request the caller can fix (or may not make); `status` is its HTTP status."""

    status = 400

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}


class InvalidRequest(RegistryError):
    status = 400


class NotAllowed(RegistryError):
    status = 403


class NotFound(RegistryError):
    status = 404


class Conflict(RegistryError):
    status = 409
