"""How many processes and machines a training job runs on: the platform's ``resources``.

    {"devices": 4, "nodes": 2, "strategy": "fsdp"}   # 2 machines x 4 GPUs, sharded

A worker runs a job with ``devices * nodes`` > 1 under ``torchrun`` (one per node,
``--nproc_per_node devices``); the engine's trainer then trains data-parallel
(engine/train/parallelize.py) with the strategy given here. The fields' ranges and
defaults are written once, here: the job schemas (engine/jobparams.py) copy them, and the
worker builds this config from a job's stored params with :func:`resources_config`.

Which kinds can use it is said here too, for the platform (it reads the flags the schemas
carry, ``x-data-parallel`` and ``x-shardable``) and for the worker:
- ``DATA_PARALLEL_KINDS``: their engine run trains data-parallel under torchrun (DDP);
  every other training kind runs as one process (devices 1, nodes 1).
- ``SHARDABLE_KINDS``: they can also shard the model (FSDP2, ``strategy: fsdp``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from engine.configfile import build, setting

DATA_PARALLEL_KINDS: tuple[str, ...] = ("pretrain",)
SHARDABLE_KINDS: tuple[str, ...] = ("pretrain",)
STRATEGY_HELP = {
    "ddp": "each process holds the whole model; gradients are averaged (DDP)",
    "fsdp": "parameters, gradients and optimizer state sharded across processes (FSDP2)",
}


class ResourcesError(ValueError):
    """A resources setting out of range or unknown (names the key)."""


@dataclass(frozen=True)
class ResourcesConfig:
    devices: int = setting(
        1, minimum=1, maximum=64, help="processes per node: GPUs on a gpu worker, else CPU ones"
    )
    nodes: int = setting(1, minimum=1, maximum=64, help="machines, one torchrun each")
    strategy: Literal["ddp", "fsdp"] = setting("ddp", help="how the processes share the model")

    @property
    def world_size(self) -> int:
        return self.devices * self.nodes

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def resources_config(raw: Any) -> ResourcesConfig:
    """The config of a job's ``params["resources"]`` (absent or null: the defaults)."""
    return build(ResourcesConfig, raw or {}, ResourcesError, "resources.")


def job_resources(kind: str, raw: Any) -> ResourcesConfig:
    """A job's resources, refused (ResourcesError) where its kind cannot use them: the
    worker's check of what the platform validated (controlplane/jobs/kinds.py says the
    same to the user, with the schema's flags)."""
    config = resources_config(raw)
    if config.strategy == "fsdp" and kind not in SHARDABLE_KINDS:
        raise ResourcesError(f"{kind} jobs cannot shard their model (fsdp); use ddp")
    if config.distributed and kind not in DATA_PARALLEL_KINDS:
        raise ResourcesError(
            f"{kind} jobs train in one process: devices and nodes must be 1, "
            f"got {config.devices} x {config.nodes}"
        )
    return config
