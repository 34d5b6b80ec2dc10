"""Per job kind: which parameters it takes, which queue runs it, which inputs it reads.

Validation happens here, before a job row exists, so a bad request never becomes a job.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.projects.models import Project
from workers.protocol import JobKind, Queue


class JobRequestError(Exception):
    """Field errors of a job request: {"field": ["message", ...]}."""

    def __init__(self, errors: dict[str, list[str]]):
        super().__init__("; ".join(f"{field}: {' '.join(msgs)}" for field, msgs in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class JobRequest:
    queue: str
    params: dict[str, Any]
    inputs: list[dict[str, Any]]


def _number(
    params: dict, name: str, errors: dict, *, kind: type, default: Any, low: float, high: float
) -> Any:
    value = params.get(name, default)
    if value is None:
        return None
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or (kind is int and not isinstance(value, int))
    ):
        errors[name] = [f"must be {'an integer' if kind is int else 'a number'}"]
        return None
    if not low <= value <= high:
        errors[name] = [f"must be between {low:g} and {high:g}"]
        return None
    return kind(value)


def _validate_inspect(project: Project, params: dict[str, Any]) -> JobRequest:
    from controlplane.uploads.models import Upload

    allowed = {"upload_id", "preview_records", "read_rate_limit_mb_s"}
    errors: dict[str, list[str]] = {name: ["unknown parameter"] for name in params.keys() - allowed}
    upload_id = params.get("upload_id")
    upload = None
    if upload_id is None:
        errors["upload_id"] = ["this field is required"]
    elif isinstance(upload_id, bool) or not isinstance(upload_id, int):
        errors["upload_id"] = ["must be an integer"]
    else:
        upload = Upload.objects.filter(pk=upload_id, project=project).first()
        if upload is None:
            errors["upload_id"] = [f"no upload {upload_id} in this project"]
    preview = _number(params, "preview_records", errors, kind=int, default=5, low=1, high=50)
    rate = _number(
        params, "read_rate_limit_mb_s", errors, kind=float, default=None, low=0.01, high=100000
    )
    if errors:
        raise JobRequestError(errors)
    clean = {"upload_id": upload.pk, "preview_records": preview}
    if rate is not None:
        clean["read_rate_limit_mb_s"] = rate
    inputs = [{"uri": upload.object_key, "sha256": upload.sha256, "size": upload.size}]
    return JobRequest(queue=Queue.CPU, params=clean, inputs=inputs)


_VALIDATORS = {JobKind.INSPECT: _validate_inspect}


def validate_job_request(*, project: Project, kind: str, params: Any) -> JobRequest:
    if kind not in _VALIDATORS:
        raise JobRequestError(
            {"kind": [f"unknown job kind '{kind}'; use one of {', '.join(_VALIDATORS)}"]}
        )
    if not isinstance(params, dict):
        raise JobRequestError({"params": ["must be an object"]})
    return _VALIDATORS[JobKind(kind)](project, params)
