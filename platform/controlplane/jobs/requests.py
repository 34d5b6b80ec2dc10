"""What validating a job request yields, and the checks every job kind shares.

Its own module so that kinds.py (every kind) and posttrain.py (the post-training kinds)
both build on it without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from controlplane.projects.models import Project


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


def ready_version(project: Project, version_id: Any, errors: dict):
    """A READY dataset version of this project, or None with a message in errors."""
    from controlplane.datasets.models import DatasetVersion, VersionState

    if version_id is None:
        errors["dataset_version_id"] = ["this field is required"]
        return None
    if isinstance(version_id, bool) or not isinstance(version_id, int):
        errors["dataset_version_id"] = ["must be an integer"]
        return None
    version = (
        DatasetVersion.objects.filter(pk=version_id, dataset__project=project)
        .select_related("dataset")
        .first()
    )
    if version is None:
        errors["dataset_version_id"] = [f"no dataset version {version_id} in this project"]
    elif version.state != VersionState.READY:
        errors["dataset_version_id"] = [
            f"version {version.number} of {version.dataset.slug} is {version.state}; "
            "wait for its upload to complete or pick a ready version"
        ]
    else:
        return version
    return None
