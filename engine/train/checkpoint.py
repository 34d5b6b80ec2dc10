"""Checkpoints of a training run: written atomically, the last K kept plus the best.

Layout under ``<run_dir>/checkpoints``::

    step_000250/            visible only once complete (written as .tmp-step_000250, renamed)
        meta.json           step, val_loss, run config, format, sharded or not
        state.pt            model + optimizer (full state dicts)      -- or, under FSDP:
        dcp/                torch.distributed.checkpoint shards (each rank writes its own)
        rank00000.pt        per rank: RNG states, data loader position, schedule (all
                            gathered and written by rank 0, so a run on several machines
                            has its whole checkpoint in rank 0's folder, unsharded)
        tokenizer.json      copy of the data's tokenizer, so generation needs only this folder
    best.json               {"step": 250, "val_loss": 1.9}  (replaced atomically)

    ckpt = Checkpointer(run_dir, keep_last=3, keep_best=True)
    ckpt.save(step, model=..., optimizer=..., extra=..., meta=..., info=dist_info)
    path = ckpt.latest()                      # or a folder given by the user
    meta = read_meta(path); ckpt.load(path, model=..., optimizer=..., info=dist_info)
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from engine.loop.checkpoints import CheckpointStore, atomic_write_json, fsync_dir
from engine.models.gpt import GPT, GPTConfig
from engine.train.parallelize import DistInfo, barrier, gather_to_main

FORMAT = "engine.checkpoint/1"
META_NAME = "meta.json"


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the run."""


def read_meta(path: str | Path) -> dict[str, Any]:
    """The meta.json of a checkpoint folder; CheckpointError if it is not a complete checkpoint."""
    path = Path(path)
    meta_path = path / META_NAME
    if not meta_path.is_file():
        raise CheckpointError(f"{path} is not a complete checkpoint (no {META_NAME})")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise CheckpointError(f"{meta_path} is not valid JSON: {error}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {meta.get('format')!r}, expected {FORMAT!r}")
    return meta


class Checkpointer(CheckpointStore):
    """A folder per step (see engine/loop/checkpoints.py for the interface it shares)."""

    def __init__(self, run_dir: str | Path, *, keep_last: int = 3, keep_best: bool = True):
        super().__init__(run_dir, keep_last=keep_last)
        self.keep_best = keep_best

    @classmethod
    def is_complete(cls, path: Path) -> bool:
        return (path / META_NAME).is_file()  # meta.json is written last

    def best(self) -> dict[str, Any] | None:
        path = self.dir / "best.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    # -- saving --------------------------------------------------------------------------
    def save(
        self,
        step: int,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any],
        meta: dict[str, Any],
        info: DistInfo,
        sharded: bool,
        tokenizer_file: Path | None = None,
    ) -> Path:
        """Write a checkpoint of ``step``; every rank calls this (collective under FSDP/DDP)."""
        final = self.path_for(step)
        tmp = self.dir / f".tmp-{final.name}"
        if info.is_main:
            self.dir.mkdir(parents=True, exist_ok=True)
            if tmp.exists():  # left by a run that died while writing
                shutil.rmtree(tmp)
            tmp.mkdir()
        barrier(info)
        if sharded:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_state, optim_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(tmp / "dcp"))
        else:
            model_state, optim_state = _full_state(model, optimizer, info)
            if info.is_main:
                torch.save({"model": model_state, "optimizer": optim_state}, tmp / "state.pt")
        # Every rank's own state (RNG, data position) is written by rank 0: on several
        # machines the folder exists on rank 0's only, and one folder is the whole checkpoint.
        for rank, rank_extra in enumerate(gather_to_main(extra, info)):
            torch.save(rank_extra, tmp / f"rank{rank:05d}.pt")
        barrier(info)
        if info.is_main:
            if tokenizer_file is not None:
                shutil.copyfile(tokenizer_file, tmp / "tokenizer.json")
            full_meta = {
                "format": FORMAT,
                "step": step,
                "sharded": sharded,
                "world_size": info.world_size,
                **meta,
            }
            atomic_write_json(tmp / META_NAME, full_meta)
            fsync_dir(tmp)
            if final.exists():  # the same step saved twice (interval hit on the last step)
                shutil.rmtree(final)
            os.rename(tmp, final)  # the checkpoint appears complete or not at all
            fsync_dir(self.dir)
            self._update_best(step, meta.get("val_loss"))
            best = self.best() if self.keep_best else None
            self.prune(keep={best["step"]} if best is not None else None)
        barrier(info)
        return final

    def _update_best(self, step: int, val_loss: float | None) -> None:
        if not self.keep_best or val_loss is None:
            return
        best = self.best()
        if best is None or val_loss < best["val_loss"] or best["step"] not in self.steps():
            atomic_write_json(self.dir / "best.json", {"step": step, "val_loss": val_loss})

    # -- loading -------------------------------------------------------------------------
    def load(
        self,
        path: Path,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None,
        info: DistInfo,
    ) -> dict[str, Any]:
        """Restore model and optimizer in place; return this rank's ``extra`` dict."""
        meta = read_meta(path)
        if meta["sharded"]:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_state, optim_state = get_state_dict(model, optimizer)
            state = {"model": model_state, "optim": optim_state}
            dcp.load(state, checkpoint_id=str(path / "dcp"))
            set_state_dict(
                model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
            )
        else:
            payload = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
            _load_full_state(model, optimizer, payload, info)
        rank_file = path / f"rank{info.rank:05d}.pt"
        if not rank_file.is_file():
            if meta.get("world_size", 1) != info.world_size:
                raise CheckpointError(
                    f"{path} was written by {meta.get('world_size')} processes; resume it with the same number"
                )
            raise CheckpointError(f"{path} is incomplete: {rank_file.name} is missing")
        return torch.load(rank_file, map_location="cpu", weights_only=False)


def _is_fsdp(model: nn.Module) -> bool:
    return any(type(m).__name__.startswith("FSDP") for m in model.modules())


def _full_state(model: nn.Module, optimizer: torch.optim.Optimizer, info: DistInfo):
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_state_dict(model, optimizer, options=options)
    return model.state_dict(), optimizer.state_dict()


def _load_full_state(model: nn.Module, optimizer, payload: dict[str, Any], info: DistInfo) -> None:
    if _is_fsdp(model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        set_state_dict(
            model,
            optimizer,
            model_state_dict=payload["model"],
            optim_state_dict=payload["optimizer"],
            options=StateDictOptions(full_state_dict=True),
        )
        return
    model.load_state_dict(payload["model"])
    if optimizer is not None:
        optimizer.load_state_dict(payload["optimizer"])


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """Model weights of a checkpoint as one full state dict (for generation and export)."""
    path = Path(path)
    meta = read_meta(path)
    if not meta["sharded"]:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=True)["model"]
    # A sharded checkpoint read in one process: DCP's format utilities gather the shards.
    import tempfile

    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "full.pt"
        dcp_to_torch_save(str(path / "dcp"), str(target))
        return torch.load(target, map_location="cpu", weights_only=True)["model"]


def load_checkpoint_model(path: Path) -> tuple[GPT, Path | None]:
    """Model of a training checkpoint (full or sharded), and its tokenizer file if present."""
    meta = read_meta(path)
    config = GPTConfig(**meta["model_config"])
    model = GPT(config)
    state = load_model_state(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not match its model_config ({error})") from None
    tokenizer = path / "tokenizer.json"
    return model, tokenizer if tokenizer.is_file() else None
