"""Configuration from environment variables, read in one place (12-factor).

The Django settings and the workers both read their environment through these helpers,
so a bad value fails the same way everywhere: with `ConfigError` naming the variable.
With no variable set, everything points at the embedded default under ``var/``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from workers.events import DEFAULT_BATCH_SECONDS

BASE_DIR = Path(__file__).resolve().parent.parent


class ConfigError(Exception):
    """An environment variable holds a value we cannot use."""


def env_str(name: str, default: str | None = None) -> str:
    value = os.environ.get(name)
    if value is None or value == "":
        if default is None:
            raise ConfigError(f"environment variable {name} is required")
        return default
    return value


def env_bool(name: str, default: bool = False) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean; use 1/0, true/false, yes/no or on/off")


def env_int(name: str, default: int, *, minimum: int | None = None) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not an integer") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name}={value} must be at least {minimum}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return list(default)
    return [item.strip() for item in raw.split(",") if item.strip()]


def data_dir() -> Path:
    """Root of the embedded default's state (SQLite, local objects, broker folders)."""
    return Path(env_str("CONTROLPLANE_DATA_DIR", str(BASE_DIR / "var"))).resolve()


@dataclass(frozen=True)
class ObjectStoreConfig:
    # No endpoint means the embedded local-filesystem store under `root`.
    endpoint: str | None
    access_key: str
    secret_key: str
    bucket: str
    region: str
    secure: bool
    root: Path
    # Base URL that presigned URLs of the local store point at (the web app serves them).
    public_base_url: str
    # Secret that signs local presigned URLs; shared by web and workers.
    signing_key: str
    # The S3 host:port a browser reaches, when it differs from the one the servers use
    # (compose: servers say minio:9000, browsers localhost:9000); presigned URLs name it.
    public_endpoint: str | None = None
    public_secure: bool | None = None

    @property
    def backend(self) -> str:
        return "s3" if self.endpoint else "local"


def object_store_config() -> ObjectStoreConfig:
    endpoint = os.environ.get("OBJECT_STORE_ENDPOINT") or None
    if endpoint and "://" in endpoint:
        raise ConfigError(
            f"OBJECT_STORE_ENDPOINT={endpoint!r} must be host:port without a scheme; "
            "set OBJECT_STORE_SECURE=1 for https"
        )
    return ObjectStoreConfig(
        endpoint=endpoint,
        access_key=env_str("OBJECT_STORE_ACCESS_KEY", "minioadmin"),
        secret_key=env_str("OBJECT_STORE_SECRET_KEY", "minioadmin"),
        bucket=env_str("OBJECT_STORE_BUCKET", "controlplane"),
        region=env_str("OBJECT_STORE_REGION", "us-east-1"),
        secure=env_bool("OBJECT_STORE_SECURE", False),
        root=Path(env_str("OBJECT_STORE_ROOT", str(data_dir() / "objects"))),
        public_base_url=env_str("PUBLIC_BASE_URL", "http://127.0.0.1:8000"),
        signing_key=env_str("SECRET_KEY", "dev-insecure-secret-key-change-me"),
        public_endpoint=os.environ.get("OBJECT_STORE_PUBLIC_ENDPOINT") or None,
        public_secure=(
            env_bool("OBJECT_STORE_PUBLIC_SECURE")
            if os.environ.get("OBJECT_STORE_PUBLIC_SECURE")
            else None
        ),
    )


def broker_url() -> str:
    """Redis in production; with nothing set, kombu's filesystem transport under var/."""
    # The host part is ignored by the filesystem transport; naming one keeps kombu quiet.
    return env_str("CELERY_BROKER_URL", "filesystem://localhost/")


def broker_folder() -> Path:
    return data_dir() / "broker"


def mlflow_tracking_uri() -> str:
    return env_str("MLFLOW_TRACKING_URI", f"sqlite:///{data_dir() / 'mlflow.db'}")


def celery_settings() -> dict:
    """Broker settings shared by the platform's and the workers' Celery apps.

    Both sides must agree on the transport: with the filesystem transport they share one
    folder (messages in and out of the same place), so a message sent by the web process
    is seen by a `celery worker` process on the same machine.
    """
    url = broker_url()
    settings: dict = {
        "broker_url": url,
        "task_ignore_result": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": "cpu",
    }
    if url.startswith("filesystem://"):
        from workers.filesystem_broker import install

        install()  # atomic message files: see workers/filesystem_broker.py
        folder = broker_folder()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        settings["broker_transport_options"] = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            # Exchange bindings; kombu's default is "control" under the current directory.
            "control_folder": str(folder / "control"),
            "store_processed": False,
        }
    elif url.startswith(("redis://", "rediss://")):
        # A training job outlives any visibility timeout: job messages are acked early and
        # the platform's lease + reaper re-dispatch lost jobs (see docs/architecture.md).
        settings["broker_transport_options"] = {"visibility_timeout": 3600}
    return settings


@dataclass(frozen=True)
class WorkerRuntimeConfig:
    """How a worker rides out broker and object-store outages (docs/architecture.md)."""

    # Events held in memory while the broker is away; beyond it the oldest re-sendable
    # ones (metrics, progress, logs, heartbeats) leave the send queue, never an artifact.
    event_buffer_events: int
    # Events an attempt remembers so the platform can ask for them again after a gap.
    event_log_events: int
    # How long the end of an attempt waits for its buffered events to reach the broker.
    event_flush_seconds: int
    # While a job's events keep coming, at most one control message per this interval
    # (the events queued meanwhile travel together); a lone event goes out at once.
    event_batch_seconds: float
    # Total time one object-store operation keeps retrying a transient error.
    storage_patience_seconds: int
    # Measure each attempt's usage (workers/usage.py) and report it in its events.
    usage_accounting: bool = True


def worker_runtime_config() -> WorkerRuntimeConfig:
    return WorkerRuntimeConfig(
        event_buffer_events=env_int("WORKER_EVENT_BUFFER", 10_000, minimum=100),
        event_log_events=env_int("WORKER_EVENT_LOG", 50_000, minimum=100),
        event_flush_seconds=env_int("WORKER_EVENT_FLUSH_SECONDS", 120, minimum=0),
        event_batch_seconds=env_int(
            "WORKER_EVENT_BATCH_MS", round(DEFAULT_BATCH_SECONDS * 1000), minimum=0
        )
        / 1000,
        storage_patience_seconds=env_int("WORKER_STORAGE_PATIENCE_SECONDS", 60, minimum=0),
        usage_accounting=env_bool("WORKER_USAGE_ACCOUNTING", True),
    )
