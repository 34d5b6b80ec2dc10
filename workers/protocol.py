"""The job protocol: what the platform sends a worker and what a worker reports back.

Defined once, imported by both sides. A `JobSpec` travels platform -> worker on the `cpu`
or `gpu` queue; `JobEvent`s travel worker -> platform on the `control` queue, where they
are applied idempotently: (job id, attempt, seq) identifies an event, so a redelivered
message changes nothing. Both are plain JSON on the wire.

Usage: `heartbeat` events and the terminal one (`finished`, `failed`, `cancelled`) carry
what the attempt used so far in ``payload["usage"]`` (`UsageReport`, measured by
workers/usage.py)::

    {"wall_seconds": 61.2, "cpu_seconds": 118.0, "peak_rss_bytes": 812000000,
     "device_type": "NVIDIA H100 80GB HBM3", "device_count": 1, "gpu_seconds": 61.2,
     "gpu_util": [[1764500000.0, 87.0], ...], "bytes_read": 1200000, "bytes_written": 40000}

Every figure is cumulative since the attempt started, except ``gpu_util``: the samples
(unix time, percent busy) taken since the previous report. ``device_type`` is "cpu" and
``device_count`` 0 for an attempt that used no GPU. An event without ``usage`` (an older
worker, a disabled meter) applies as before.
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
    # One node task of a multi-node attempt (resources.nodes > 1): {"nodes": M, "member":
    # i (0..M-1, which message of the gang this is), "timeout_seconds": T (how long the
    # platform waits for the whole gang)}. None for every other job. See workers/gang.py.
    gang: dict[str, Any] | None = None

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
        if self.gang is None:
            del data["gang"]
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
                "gang",
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
            gang=_gang(data.get("gang")),
        )


def _gang(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    _require_keys("job spec gang", data, {"nodes", "member", "timeout_seconds"})
    nodes, member = int(data["nodes"]), int(data["member"])
    if nodes < 2 or not 0 <= member < nodes:
        raise ProtocolError(f"job spec gang: member {member} of {nodes} nodes is impossible")
    return {"nodes": nodes, "member": member, "timeout_seconds": float(data["timeout_seconds"])}


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


USAGE_FIELD = "usage"  # the payload key of a heartbeat's or terminal event's UsageReport


@dataclass(frozen=True)
class UsageReport:
    """What one attempt used so far (see the module docstring): cumulative but `gpu_util`."""

    wall_seconds: float
    cpu_seconds: float
    peak_rss_bytes: int
    device_type: str
    device_count: int
    gpu_seconds: float
    gpu_util: tuple[tuple[float, float], ...]  # (unix time, percent) since the last report
    bytes_read: int
    bytes_written: int

    def to_dict(self) -> dict:
        data = asdict(self)
        data["gpu_util"] = [list(sample) for sample in self.gpu_util]
        return data

    @classmethod
    def from_dict(cls, data: Any) -> UsageReport:
        fields = {
            "wall_seconds",
            "cpu_seconds",
            "peak_rss_bytes",
            "device_type",
            "device_count",
            "gpu_seconds",
            "gpu_util",
            "bytes_read",
            "bytes_written",
        }
        _require_keys("usage", data, fields)
        if not isinstance(data["device_type"], str) or len(data["device_type"]) > 100:
            raise ProtocolError("usage device_type must be a string of at most 100 characters")
        if not isinstance(data["gpu_util"], list):
            raise ProtocolError("usage gpu_util must be a list of [unix time, percent]")
        samples = []
        for sample in data["gpu_util"]:
            if not isinstance(sample, list | tuple) or len(sample) != 2:
                raise ProtocolError("usage gpu_util must be a list of [unix time, percent]")
            moment, percent = _figure("gpu_util time", sample[0]), _figure("gpu_util", sample[1])
            if percent > 100:
                raise ProtocolError(f"usage gpu_util {percent} is above 100 percent")
            samples.append((moment, percent))
        return cls(
            wall_seconds=_figure("wall_seconds", data["wall_seconds"]),
            cpu_seconds=_figure("cpu_seconds", data["cpu_seconds"]),
            peak_rss_bytes=int(_figure("peak_rss_bytes", data["peak_rss_bytes"])),
            device_type=data["device_type"],
            device_count=int(_figure("device_count", data["device_count"])),
            gpu_seconds=_figure("gpu_seconds", data["gpu_seconds"]),
            gpu_util=tuple(samples),
            bytes_read=int(_figure("bytes_read", data["bytes_read"])),
            bytes_written=int(_figure("bytes_written", data["bytes_written"])),
        )


def _figure(name: str, value: Any) -> float:
    """A measured figure: a finite, non-negative number."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ProtocolError(f"usage {name} must be a number")
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(f"usage {name} must be a finite, non-negative number")
    return float(value)


# A worker's own heartbeat (not a job's): who it is, which queues it consumes, what devices
# it has. Sent to the control queue every WORKER_HEARTBEAT_SECONDS from start to shutdown
# (workers/registry.py); the platform keeps a registry of live workers from it and sends
# a job only where a live worker can run it (controlplane/jobs/capacity.py).
WORKER_HEARTBEAT_TASK = "control.worker_heartbeat"


@dataclass(frozen=True)
class DeviceInventory:
    """What one worker machine offers a job: its GPUs (count, model, memory of the
    smallest) and its CPUs. A CPU-only worker has gpus 0 and gpu_type ""."""

    gpus: int
    gpu_type: str
    gpu_memory_bytes: int
    cpus: int

    @classmethod
    def from_dict(cls, data: Any) -> DeviceInventory:
        _require_keys("devices", data, {"gpus", "gpu_type", "gpu_memory_bytes", "cpus"})
        if not isinstance(data["gpu_type"], str) or len(data["gpu_type"]) > 100:
            raise ProtocolError("devices gpu_type must be a string of at most 100 characters")
        return cls(
            gpus=_count("devices gpus", data["gpus"]),
            gpu_type=data["gpu_type"],
            gpu_memory_bytes=_count("devices gpu_memory_bytes", data["gpu_memory_bytes"]),
            cpus=_count("devices cpus", data["cpus"]),
        )


@dataclass(frozen=True)
class WorkerHeartbeat:
    name: str  # Celery's node name, e.g. "gpu@host-3": unique per worker process
    queues: tuple[str, ...]  # the job queues it consumes (cpu, gpu)
    devices: DeviceInventory
    heartbeat_seconds: float  # how often it sends this: the platform's staleness clock
    started_at: float  # unix time the worker started
    time: float = field(default_factory=time.time)
    leaving: bool = False  # its last one, sent at a clean shutdown

    def to_dict(self) -> dict:
        data = asdict(self)
        data["queues"] = list(self.queues)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> WorkerHeartbeat:
        _require_keys(
            "worker heartbeat",
            data,
            {"name", "queues", "devices", "heartbeat_seconds", "started_at", "time"},
            optional={"leaving"},
        )
        name = data["name"]
        if not isinstance(name, str) or not 0 < len(name) <= 200:
            raise ProtocolError("worker heartbeat name must be a string of 1 to 200 characters")
        queues = data["queues"]
        if not isinstance(queues, list) or not all(
            isinstance(q, str) and 0 < len(q) <= 20 for q in queues
        ):
            raise ProtocolError("worker heartbeat queues must be a list of queue names")
        interval = _beat_figure("heartbeat_seconds", data["heartbeat_seconds"])
        if interval <= 0:
            raise ProtocolError("worker heartbeat heartbeat_seconds must be above 0")
        return cls(
            name=name,
            queues=tuple(dict.fromkeys(queues)),
            devices=DeviceInventory.from_dict(data["devices"]),
            heartbeat_seconds=interval,
            started_at=_beat_figure("started_at", data["started_at"]),
            time=_beat_figure("time", data["time"]),
            leaving=bool(data.get("leaving", False)),
        )


def _beat_figure(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ProtocolError(f"worker heartbeat {name} must be a finite number")
    if value < 0:
        raise ProtocolError(f"worker heartbeat {name} must not be negative")
    return float(value)


def _count(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ProtocolError(f"{name} must be a whole number, 0 or more")
    return value


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


# Multi-node attempts (workers/gang.py, controlplane/jobs/gang.py). Each node task of the
# gang tells the platform, on the control queue, {"job_id", "attempt", "member", ...}:
# - GANG_JOIN_TASK once it is ready to train, with "endpoint" ("host:port" where it
#   would host the c10d rendezvous); the first to join hosts it;
# - GANG_BEAT_TASK every heartbeat while it takes part (a node's lease);
# - GANG_LEAVE_TASK when it ends, with "error" ("" on success) and "retryable".
# The platform publishes the rendezvous (`rendezvous_key`) once the first node joined.
GANG_JOIN_TASK = "control.gang_join"
GANG_BEAT_TASK = "control.gang_beat"
GANG_LEAVE_TASK = "control.gang_leave"


def rendezvous_key(job_id: int, attempt: int) -> str:
    """Where the platform publishes a gang attempt's rendezvous: JSON {"endpoint":
    "host:port", "host_member": i, "nodes": M, "run_id": "job-<id>-attempt-<n>"}."""
    return f"system/jobs/{job_id}/attempt-{attempt}/rendezvous.json"


# A `failed` event whose payload has {"retryable": true} failed because of the
# infrastructure (object store, broker), not the job's own error: the platform runs it
# again from its last checkpoint while attempts remain.
RETRYABLE_FIELD = "retryable"
