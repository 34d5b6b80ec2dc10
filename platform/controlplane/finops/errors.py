"""Errors of the finops services; each carries the HTTP status and code the API answers with."""

from __future__ import annotations

from typing import Any

from controlplane.jobs.services import JobError


class FinopsError(Exception):
    status = 400
    code = "invalid"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields


class InvalidInput(FinopsError):
    pass


class NotAllowed(FinopsError):
    status = 403
    code = "permission_denied"


class NotFound(FinopsError):
    status = 404
    code = "not_found"


class StaleVersion(FinopsError):
    """An edit made on a version that is no longer the newest (`base_version`)."""

    status = 409
    code = "conflict"


class GpuJobRefused(JobError):
    """A GPU job the project may not start now: a 409 with a code and what decided it.

    A JobError, so the job pages and the API's job endpoints answer it like the job
    service's own refusals; `code` and `details` join the API's error body."""

    def __init__(self, message: str, *, code: str, details: dict[str, Any]):
        super().__init__(message, status=409)
        self.code = code
        self.details = details
