"""The job protocol: what the platform sends a worker and what a worker reports back.

Defined once, imported by both sides. A `JobSpec` travels platform -> worker on the `cpu`
or `gpu` queue; `JobEvent`s travel worker -> platform on the `control` queue, where they
are applied idempotently: (job id, attempt, seq) identifies an event, so a redelivered
message changes nothing. Both are plain JSON on the wire.
"""

from __future__ import annotations

import enum
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

RUN_JOB_TASK = "workers.run_job"
# One event per message: what workers sent before batching (still applied, for the old
# workers of a rolling upgrade). Payload: the JobEvent dict.
APPLY_EVENT_TASK = "control.apply_event"
# Many events of one attempt per message, in seq order. Payload: {"events": [<JobEvent
# dict>, ...]} (`event_batch`). Upgrade the platform's control workers before the workers.
APPLY_EVENTS_TASK = "control.apply_events"
CONTROL_QUEUE = "control"
# What a worker puts in one batch at most: enough to drain a backlog quickly, small
# enough that one message stays far below the broker's and the task's limits.
EVENT_BATCH_MAX_EVENTS = 200
EVENT_BATCH_MAX_BYTES = 256 * 1024


class ProtocolError(ValueError):
    """A message that does not follow the protocol (wrong field, type or value)."""


class JobKind(enum.StrEnum):
    INSPECT = "inspect"
    DATA_PIPELINE = "data_pipeline"
    PRETRAIN = "pretrain"
    DIFFUSION = "diffusion"
    GAN = "gan"
    VAE = "vae"
    # Post-training (engine.finetune): a pre-trained model in, a better-behaved one out.
    SFT = "sft"
    LORA = "lora"
    QLORA = "qlora"
    REWARD = "reward"
    DPO = "dpo"
    PPO = "ppo"
    # A registered model version's figures (engine.evaluate): loss, samples, memorisation.
    EVALUATE = "evaluate"
    # A data subject's erasure (GDPR Art. 17) from the project's dataset versions: find,
    # rewrite without their records (controlplane/gdpr/erasure.py starts it on approval).
    ERASURE = "erasure"


class Queue(enum.StrEnum):
    CPU = "cpu"
    GPU = "gpu"


class EventType(enum.StrEnum):
    STARTED = "started"
    HEARTBEAT = "heartbeat"
    PROGRESS = "progress"
    METRIC = "metric"
    CHECKPOINT = "checkpoint"
    ARTIFACT = "artifact"
    LOG = "log"
    FINISHED = "finished"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in (EventType.FINISHED, EventType.FAILED, EventType.CANCELLED)


@dataclass(frozen=True)
class ArtifactRef:
    """An object in the store that a job reads, pinned by its content hash."""

    uri: str  # object key inside the bucket, e.g. projects/3/uploads/<uuid>
    sha256: str
    size: int

    @classmethod
    def from_dict(cls, data: dict) -> ArtifactRef:
        _require_keys("input", data, {"uri", "sha256", "size"})
        return cls(uri=str(data["uri"]), sha256=str(data["sha256"]), size=int(data["size"]))


@dataclass(frozen=True)
class JobSpec:
    job_id: int
    kind: JobKind
    project_id: int
    attempt: int  # 1 on first dispatch; the reaper increments it on re-dispatch
    inputs: tuple[ArtifactRef, ...]
    params: dict[str, Any]
    output_prefix: str  # every object the job writes goes under this key prefix
    heartbeat_seconds: float
    tracking_run_id: str | None = None  # the MLflow run of an earlier attempt, to continue
    resume_checkpoint: str | None = None  # object key of the checkpoint to resume from
    # {"experiment": name, "run_name": name, "tags": {...}, "params": {...}}: the MLflow run
    # the worker opens for the job (None: no tracking).
    tracking: dict[str, Any] | None = None
    # The project's data-subject HMAC key (hex) for jobs that hash subject ids (the data
    # pipeline's subject index). Filled only in the dispatch message: it is a secret, so
    # it never goes into params (stored in the job row, shown on pages, logged to MLflow).
    # Not in repr: tracebacks and log lines print specs.
    subject_key: str = field(default="", repr=False)
    # An erasure job's subject: {"identifiers": [values in clear], "keys": {key id: key hex}
    # (every generation of the project's subject key), "hashes": [keyed hashes under the
    # current key]}. Secret like subject_key: only in the dispatch message, never in
    # params, events, results or audit events; not in repr.
    subject_secrets: dict[str, Any] | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["kind"] = str(self.kind)
        data["inputs"] = [asdict(ref) for ref in self.inputs]
        if not self.subject_key:
            # Absent rather than empty: a worker from before the field refuses unknown keys,
            # so during an upgrade only the jobs that need a key depend on new workers.
            del data["subject_key"]
        if not self.subject_secrets:
            del data["subject_secrets"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> JobSpec:
        _require_keys(
            "job spec",
            data,
            {
                "job_id",
                "kind",
                "project_id",
                "attempt",
                "inputs",
                "params",
                "output_prefix",
                "heartbeat_seconds",
            },
            optional={
                "tracking_run_id",
                "resume_checkpoint",
                "tracking",
                "subject_key",
                "subject_secrets",
            },
        )
        try:
            kind = JobKind(data["kind"])
        except ValueError:
            raise ProtocolError(f"unknown job kind {data['kind']!r}") from None
        if not isinstance(data["params"], dict):
            raise ProtocolError("job spec params must be an object")
        return cls(
            job_id=int(data["job_id"]),
            kind=kind,
            project_id=int(data["project_id"]),
            attempt=int(data["attempt"]),
            inputs=tuple(ArtifactRef.from_dict(item) for item in data["inputs"]),
            params=dict(data["params"]),
            output_prefix=str(data["output_prefix"]),
            heartbeat_seconds=float(data["heartbeat_seconds"]),
            tracking_run_id=data.get("tracking_run_id"),
            resume_checkpoint=data.get("resume_checkpoint"),
            tracking=dict(data["tracking"]) if data.get("tracking") else None,
            subject_key=str(data.get("subject_key") or ""),
            subject_secrets=dict(data["subject_secrets"]) if data.get("subject_secrets") else None,
        )


@dataclass(frozen=True)
class JobEvent:
    job_id: int
    attempt: int
    seq: int  # 0, 1, 2 ... within one attempt, in the order the worker emitted them
    type: EventType
    payload: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)  # seconds since the epoch, worker clock

    def to_dict(self) -> dict:
        data = asdict(self)
        data["type"] = str(self.type)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> JobEvent:
        _require_keys("job event", data, {"job_id", "attempt", "seq", "type", "payload", "time"})
        try:
            event_type = EventType(data["type"])
        except ValueError:
            raise ProtocolError(f"unknown event type {data['type']!r}") from None
        if not isinstance(data["payload"], dict):
            raise ProtocolError("job event payload must be an object")
        event_time = float(data["time"])
        if not math.isfinite(event_time):
            raise ProtocolError("job event time must be a finite number")
        return cls(
            job_id=int(data["job_id"]),
            attempt=int(data["attempt"]),
            seq=int(data["seq"]),
            type=event_type,
            payload=dict(data["payload"]),
            time=event_time,
        )


def event_batch(events) -> dict:
    """The payload of an APPLY_EVENTS_TASK message: the events in seq order."""
    return {"events": [event.to_dict() for event in sorted(events, key=lambda e: e.seq)]}


def event_batch_items(data: Any) -> list:
    """The event dicts of a batch payload, each still to be parsed on its own (one
    malformed event must not spoil the others); ProtocolError if the batch itself is bad."""
    _require_keys("event batch", data, {"events"})
    if not isinstance(data["events"], list):
        raise ProtocolError("event batch events must be a list")
    return data["events"]


def _require_keys(
    what: str, data: Any, required: set[str], optional: set[str] = frozenset()
) -> None:
    if not isinstance(data, dict):
        raise ProtocolError(f"{what} must be an object, got {type(data).__name__}")
    missing = required - data.keys()
    if missing:
        raise ProtocolError(f"{what} is missing {', '.join(sorted(missing))}")
    unknown = data.keys() - required - optional
    if unknown:
        raise ProtocolError(f"{what} has unknown field(s) {', '.join(sorted(unknown))}")


def cancel_marker_key(job_id: int) -> str:
    """Object the platform writes to ask a worker to stop a job (cooperative cancel)."""
    return f"system/jobs/{job_id}/cancel"


def superseded_marker_key(job_id: int, attempt: int) -> str:
    """Object the reaper writes when it re-dispatches: the older attempt must not run on."""
    return f"system/jobs/{job_id}/superseded-{attempt}"


def completion_record_key(job_id: int, attempt: int) -> str:
    """Object a worker writes *before* emitting `finished`: the attempt's durable outcome.

    JSON: {"finished": <the finished JobEvent dict>, "events": [<every artifact and
    checkpoint JobEvent dict of the attempt, in seq order>]}. The reaper reads it before
    declaring an attempt lost, so a success whose `finished` event never arrived is
    applied from here instead of being re-run.
    """
    return f"system/jobs/{job_id}/attempt-{attempt}/completed.json"


def resend_request_prefix(job_id: int, attempt: int) -> str:
    """Where the platform asks a running attempt to send events again (a gap was seen).

    Each request is a new object under this prefix (keys are never overwritten), named
    by the platform, holding JSON {"seqs": [<missing seq numbers>]}. The worker looks at
    the prefix with its stop checks and re-emits those events, unchanged, from its
    bounded log; applying them is idempotent.
    """
    return f"system/jobs/{job_id}/attempt-{attempt}/resend/"


# A `failed` event whose payload has {"retryable": true} failed because of the
# infrastructure (object store, broker), not the job's own error: the platform runs it
# again from its last checkpoint while attempts remain.
RETRYABLE_FIELD = "retryable"
