"""The serving protocol: what the platform and the serve nodes tell each other.

Defined once, imported by both sides (the platform's `controlplane.serving` and the serve
workers' `workers.serve`). Plain JSON on the wire.

Who talks to whom:

    client --HTTPS--> serve node front (/p/<project>/<deployment>/v1/...)
                          |  token check: POST <platform>/internal/serve/authorize (cached)
                          |  proxies to a ready replica (local child process, or another
                          |  node's front with X-CP-Replica)
                          v
                      replica process (engine + guardrails + archiver)
                          |  archive objects -> object store
                          |  index batches  -> control queue (ARCHIVE_INDEX_TASK)
    serve node --every SYNC_INTERVAL--> POST <platform>/internal/serve/sync
                 (its replicas' states in; what it should run, and the routes, out)

Serve nodes hold no database credentials: the platform decides (which replicas run
where, which tokens may call which deployment), the nodes do.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import hmac
from dataclasses import asdict, dataclass, field
from typing import Any

# Platform endpoints a serve node calls, with `Authorization: Bearer <SERVE_NODE_SECRET>`.
SYNC_PATH = "/internal/serve/sync"
AUTHORIZE_PATH = "/internal/serve/authorize"
# Control-queue task (platform side) that records one archive object's index rows.
# Payload: an `ArchiveIndex` dict.
ARCHIVE_INDEX_TASK = "control.serve_archive_index"

# A node reports every SYNC_INTERVAL seconds; the platform counts a node that has been
# silent for NODE_TIMEOUT seconds as lost and places its replicas elsewhere.
SYNC_INTERVAL = 1.0
NODE_TIMEOUT = 10.0
# How long a node may trust an authorize answer (allowed or not) before asking again.
AUTHORIZE_TTL = 10.0

# Headers between the node front and a replica (or another node's front). The front drops
# any of these that a client sends, so a client can never claim to be someone else.
INTERNAL_SECRET_HEADER = "X-CP-Internal"  # the node secret: only fronts call replicas
CALLER_HEADER = "X-CP-Caller"  # JSON `Caller`
REPLICA_HEADER = "X-CP-Replica"  # front -> front: serve this on that replica id
REQUEST_ID_HEADER = "X-Request-Id"  # echoed in the answer and the archive record
SUBJECT_HEADER = "X-Data-Subject"  # from the client: whose data this request is about
INTERNAL_HEADERS = (INTERNAL_SECRET_HEADER, CALLER_HEADER, REPLICA_HEADER)

# The base URL of a deployment on any node: the `openai` client's `base_url`.
BASE_PATH = "/p/{project}/{deployment}/v1"


def deployment_key(project_slug: str, deployment_name: str) -> str:
    """How nodes name a deployment: "<project slug>/<deployment name>"."""
    return f"{project_slug}/{deployment_name}"


class Task(enum.StrEnum):
    TEXT = "text-generation"
    IMAGE = "image-generation"


class Endpoint(enum.StrEnum):
    COMPLETIONS = "completions"
    CHAT = "chat.completions"
    IMAGES = "images.generations"


class ReplicaState(enum.StrEnum):
    PENDING = "pending"  # placed by the platform, not yet reported by its node
    STARTING = "starting"  # the node is downloading / loading the model
    READY = "ready"  # loaded and passing health checks: gets traffic
    DRAINING = "draining"  # finishing what it holds, gets no new traffic
    STOPPED = "stopped"  # gone after a drain or a stop (kept as history)
    FAILED = "failed"  # could not load, or died too often; `error` says why
    LOST = "lost"  # its node stopped reporting


class RecordStatus(enum.StrEnum):
    OK = "ok"
    FLAGGED = "flagged"  # answered, but a guardrail flagged it (toxicity "flag" mode)
    REFUSED = "refused"  # a guardrail refused it (400, code guardrail_refused)
    ERROR = "error"  # the engine failed (5xx), or the client went away mid-stream


@dataclass
class ModelFileRef:
    name: str  # file name in the version ("model.safetensors", "config.json", ...)
    role: str  # registry FileRole value
    object_key: str
    sha256: str
    size: int


@dataclass
class GuardrailConfig:
    """What a replica applies to each input and output (engine data-pipeline stages)."""

    # Input PII: "off", "redact" (the model sees placeholders), "refuse" (400).
    pii: str = "redact"
    pii_types: list[str] = field(default_factory=list)  # empty: every type the engine knows
    pii_output: str = "redact"  # "off" or "redact": PII the model writes is masked too
    # Toxicity (lexicon share, as the pipeline's filter): "off", "flag", "refuse".
    toxicity: str = "flag"
    toxicity_threshold: float = 0.02
    # Where the defaults came from ("pipeline job 12 of dataset shakespeare v1", "platform").
    source: str = "platform"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> GuardrailConfig:
        return _from_dict(cls, data or {})


@dataclass
class ReplicaSpec:
    """Platform -> node: one replica the node must run (anything it runs that is not in
    its sync answer, it drains and stops)."""

    replica_id: str  # uuid hex, stable for the replica's whole life (restarts included)
    deployment_id: int
    deployment: str  # deployment_key()
    project_id: int
    model: str  # registered model name
    version: int  # version number
    version_id: int
    task: str  # Task value
    files: list[ModelFileRef]
    device: str = "cpu"  # "cpu" or "cuda"
    max_batch: int = 16
    max_queue: int = 64
    guardrails: GuardrailConfig = field(default_factory=GuardrailConfig)
    # HMAC-SHA256 key (hex) for X-Data-Subject hashes: per project, derived by the platform.
    subject_key: str = ""
    # False: the replica keeps no record of requests (no archive object, no index). True
    # by default, so a spec from a platform that predates the flag archives as it did.
    archive: bool = True
    archive_window_seconds: float = 2.0
    draining: bool = False  # finish what you hold, take nothing new, then stop

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaSpec:
        data = dict(data)
        data["files"] = [ModelFileRef(**f) for f in data.get("files", [])]
        data["guardrails"] = GuardrailConfig.from_dict(data.get("guardrails"))
        return _from_dict(cls, data)


@dataclass
class ReplicaStatus:
    """Node -> platform: one replica as the node sees it."""

    replica_id: str
    state: str  # ReplicaState value
    pid: int | None = None
    restarts: int = 0
    error: str = ""
    # engine.health() of the replica, plus "running"/"waiting" and request counters.
    health: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReplicaStatus:
        return _from_dict(cls, data)


@dataclass
class NodeReport:
    """Node -> platform, every SYNC_INTERVAL (POST SYNC_PATH)."""

    node: str  # a name unique among nodes (host name by default)
    url: str  # the node front's base URL, as clients and other nodes reach it
    device: str  # "cpu" or "cuda"
    capacity: int  # how many replicas it may hold
    replicas: list[ReplicaStatus] = field(default_factory=list)
    started_at: float = 0.0  # node process start (unix time): a restart is a new node life

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NodeReport:
        data = dict(data)
        data["replicas"] = [ReplicaStatus.from_dict(r) for r in data.get("replicas", [])]
        return _from_dict(cls, data)


@dataclass
class Route:
    replica_id: str
    node_url: str  # the front of the node that runs it (maybe this node)


@dataclass
class DeploymentInfo:
    """What a front needs to answer for a deployment without asking the platform."""

    id: int
    key: str  # deployment_key()
    state: str  # "running" or "stopped"
    task: str  # Task value
    model: str  # registered model name (a request's `model` may name it or the deployment)
    version: int | None  # the version it serves now
    reason: str = ""  # why it is stopped (shown in the 503)
    rate_limit_per_minute: int = 600  # per token


@dataclass
class SyncAnswer:
    """Platform -> node: the answer to a NodeReport."""

    replicas: list[ReplicaSpec]  # what this node must run
    deployments: list[DeploymentInfo]  # every deployment a front may be asked for
    routes: dict[str, list[Route]]  # deployment key -> its READY replicas, on any node
    revoked_token_ids: list[int] = field(default_factory=list)  # drop cached verdicts
    sync_interval: float = SYNC_INTERVAL

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SyncAnswer:
        return cls(
            replicas=[ReplicaSpec.from_dict(r) for r in data.get("replicas", [])],
            deployments=[_from_dict(DeploymentInfo, d) for d in data.get("deployments", [])],
            routes={
                key: [_from_dict(Route, r) for r in routes]
                for key, routes in data.get("routes", {}).items()
            },
            revoked_token_ids=list(data.get("revoked_token_ids", [])),
            sync_interval=float(data.get("sync_interval", SYNC_INTERVAL)),
        )


@dataclass
class AuthorizeRequest:
    """Node -> platform (POST AUTHORIZE_PATH): may this token call this deployment?"""

    token_sha256: str  # hash_token(raw): the raw token never leaves the node
    deployment: str  # deployment_key()


@dataclass
class Caller:
    token_id: int | None
    user_id: int | None
    username: str = ""


@dataclass
class AuthorizeAnswer:
    allowed: bool
    status: int = 200  # when not allowed: 401 (bad token), 403 (scope/role), 404 (deployment)
    code: str = ""  # error code for the JSON error shape
    message: str = ""
    caller: Caller | None = None
    rate_limit_per_minute: int = 600
    ttl: float = AUTHORIZE_TTL

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuthorizeAnswer:
        data = dict(data)
        if data.get("caller") is not None:
            data["caller"] = Caller(**data["caller"])
        return _from_dict(cls, data)


@dataclass
class IndexEntry:
    """One archived request as the platform indexes it (the full record is in the object)."""

    id: str  # request id (uuid hex)
    time: float  # unix time the request arrived
    offset: int  # byte offset of its gzip member in the object
    length: int  # the member's length in bytes
    endpoint: str  # Endpoint value
    status: str  # RecordStatus value
    version_id: int
    token_id: int | None = None
    user_id: int | None = None
    subject_hash: str = ""  # HMAC of X-Data-Subject with the project's key, "" when absent
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_ms: float = 0.0  # arrival at the replica -> last byte
    first_token_ms: float | None = None


@dataclass
class ArchiveIndex:
    """Replica -> control queue (ARCHIVE_INDEX_TASK), after the object is stored."""

    object_key: str
    project_id: int
    deployment_id: int
    replica_id: str
    window_start: float
    window_end: float
    size: int  # bytes of the object
    records: list[IndexEntry]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchiveIndex:
        data = dict(data)
        data["records"] = [_from_dict(IndexEntry, r) for r in data.get("records", [])]
        return _from_dict(cls, data)


def subject_hash(key_hex: str, subject: str) -> str:
    """The keyed hash of a data subject's identifier, as indexes and audit events hold it.

    HMAC-SHA256 with the project's key (`ReplicaSpec.subject_key`; the platform derives it
    from a secret kept out of the database), over the identifier stripped and case-folded,
    so "Ann@Example.com " and "ann@example.com" are one subject.
    """
    normalised = subject.strip().casefold().encode()
    return hmac.new(bytes.fromhex(key_hex), normalised, hashlib.sha256).hexdigest()


# The `type` of OpenAI's error shape, by status (the serve endpoints answer both shapes:
# ours, {"status", "code", "message", "fields"}, and OpenAI's, {"message", "type", "param"}).
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_shape(
    status: int, code: str, message: str, *, param: str | None = None, detail: str = ""
) -> dict[str, Any]:
    """`{"error": {...}}` of a serve endpoint: one shape for the front and the replicas."""
    default = "server_error" if status >= 500 else "invalid_request_error"
    error: dict[str, Any] = {
        "status": status,
        "code": code,
        "message": message,
        "type": ERROR_TYPES.get(status, default),
        "param": param,
    }
    if param:
        error["fields"] = {param: [detail or message]}
    return {"error": error}


def to_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)


def _from_dict(cls, data: dict[str, Any]):
    """Build `cls` from `data`, ignoring keys it does not know (a newer peer's fields)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in names})


def archive_key(project_id: int, deployment_id: int, day: str, replica_id: str, name: str) -> str:
    """Where a replica writes one archive window: JSONL, one gzip member per record.

    `day` is "YYYY-MM-DD" (UTC), `name` the window's start time and a sequence number.
    """
    from workers.storage.keys import project_key

    return project_key(
        project_id, "inference", str(deployment_id), day, replica_id, f"{name}.jsonl.gz"
    )
