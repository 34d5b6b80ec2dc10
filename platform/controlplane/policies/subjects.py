"""What a decision looks at: plain data about the subject, built from the database by
facts.py (one subject for a gate, thousands at once for the scan). decide.py reads only
these, so it is pure and fast, and a gate and the scan cannot disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from controlplane.policies.models import SubjectType


@dataclass(frozen=True)
class SubjectRef:
    type: SubjectType
    id: int | None  # None: not made yet (a version about to be uploaded)
    label: str

    def as_dict(self) -> dict[str, Any]:
        return {"type": self.type.value, "id": self.id, "label": self.label}


@dataclass(frozen=True)
class PipelineRun:
    """A data-pipeline job in a dataset version's lineage."""

    job_id: int
    pii_types: tuple[str, ...] | None  # None: the run had no pii stage


@dataclass(frozen=True)
class Hold:
    hold_id: int
    reference: str
    version_label: str


@dataclass
class DatasetFacts:
    ref: SubjectRef
    licence: str
    source: str
    bucket: str
    region: str
    pipelines: list[PipelineRun] = field(default_factory=list)  # nearest first
    # The after-cleaning figures of the nearest pipeline output in the lineage
    # (report["residual"]); None when there is no report or it predates those figures.
    residual: dict[str, Any] | None = None
    residual_from: str = ""  # the version whose report gave `residual`
    holds: list[Hold] = field(default_factory=list)  # on this version or an ancestor


@dataclass
class JobPlan:
    """A job about to be created (ref.id None) or resumed."""

    ref: SubjectRef
    kind: str
    queue: str
    gpus: int
    trains: bool  # reads a dataset to train a model (rules 1, 2, 4)
    datasets: list[DatasetFacts]
    output_bucket: str
    output_region: str


@dataclass
class ModelVersionFacts:
    ref: SubjectRef
    evaluation_id: int | None
    metrics: dict[str, Any]
    datasets: list[DatasetFacts]  # the data it was trained on (lineage)
    # The erasure requests that flagged it "trained on erased data" (ErasedDataFlag).
    erased_by: tuple[int, ...] = ()


@dataclass
class AliasMove:
    version: ModelVersionFacts
    alias: str
    approver_role: str | None = None  # set at Gate.PROMOTION_APPROVE
    protected: bool = False  # among rule 5's aliases (whether or not rule 5 is on)


@dataclass
class DeploymentPlan:
    ref: SubjectRef  # the deployment (id None while being created)
    archive: bool
    input_pii: str  # the guardrails' input PII mode: off, redact, refuse
    retention_days: int
    version: ModelVersionFacts


@dataclass
class RetentionChange:
    ref: SubjectRef
    retention_days: int
