"""The pre-training loop: GPT on token shards, one process or many (torchrun), resumable.

    from engine.train.config import load_config
    from engine.train.trainer import Trainer
    summary = Trainer(load_config("configs/shakespeare_char.yaml")).fit()
    summary = Trainer(config, resume=True).fit()        # continue from the latest checkpoint

    torchrun --nproc_per_node 2 -m engine train pretrain configs/shakespeare_char.yaml

Per optimizer step: ``grad_accum`` micro-batches of ``batch_size`` sequences per rank
(gradients synchronised on the last micro-step only), gradient clipping, AdamW with the
warmup + cosine schedule. On CPU everything is deterministic, so a resumed run computes
exactly the losses of a run that was never stopped.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.data.shards import ShardError, ShardManifest, TokenLoader, load_manifest
from engine.data.tokenizers import load_tokenizer
from engine.loop.callbacks import Callback, CallbackList
from engine.loop.device import autocast, pick_device, pick_dtype, set_threads
from engine.loop.metrics import JsonlMetrics
from engine.models.gpt import GPT, GPTConfig
from engine.train.callbacks import ProgressBar
from engine.train.checkpoint import Checkpointer, CheckpointError, read_meta
from engine.train.config import RunConfig
from engine.train.mfu import mfu, peak_flops
from engine.train.optim import WarmupCosine, build_optimizer, set_lr
from engine.train.parallelize import (
    DistInfo,
    all_reduce_mean,
    init_distributed,
    launched_by_torchrun,
    no_sync,
    wrap_model,
)


class TrainingError(ValueError):
    """The run cannot start as configured (data, tokenizer, checkpoint); the message says why."""


@dataclass
class TrainSummary:
    step: int
    train_loss: float | None
    val_loss: float | None
    best_val_loss: float | None
    seconds: float
    tokens_per_second: float
    checkpoint: Path | None
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, train loss) as logged
    stopped: bool = False  # a callback's should_stop() ended the run before max_iters


class Trainer:
    def __init__(
        self,
        config: RunConfig,
        *,
        callbacks: list[Callback] | None = None,
        resume: bool | str | Path = False,
        default_callbacks: bool = True,
    ):
        self.config = config
        self.device = pick_device(config.train.device, TrainingError)
        set_threads(config.train.threads)
        self.info: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", self.info.local_rank)
        self.dtype = pick_dtype(config.train.dtype, self.device)
        self.run_dir = Path(config.run_dir)
        self.callbacks = CallbackList(callbacks or ())
        if default_callbacks and self.info.is_main:
            self.callbacks.append(JsonlMetrics(self.run_dir / "metrics.jsonl"))
            if config.train.progress:
                self.callbacks.append(ProgressBar())

        self.manifest = self._load_data()
        self.tokenizer_file = self._check_tokenizer(self.manifest)
        model_config = config.model
        if config.vocab_from_data:
            model_config = model_config.replace(vocab_size=self.manifest.vocab_size)
        elif model_config.vocab_size < self.manifest.vocab_size:
            raise TrainingError(
                f"model.vocab_size is {model_config.vocab_size} but the shards in {self.manifest.root} "
                f"hold token ids up to {self.manifest.vocab_size - 1} (vocab_size {self.manifest.vocab_size}); "
                "leave model.vocab_size out to take the data's"
            )
        self.model_config: GPTConfig = model_config

        torch.manual_seed(config.seed)  # same initial weights on every rank
        self.model = GPT(model_config).to(self.device)
        self.parallel = self._parallel_mode()
        self.wrapped = wrap_model(self.model, self.parallel, self.info, self.device)
        self.optimizer = build_optimizer(self.model, config.optim)
        self.schedule = WarmupCosine.from_config(config.optim, config.train.max_iters)
        self.forward = torch.compile(self.wrapped) if config.train.compile else self.wrapped
        self.train_loader = TokenLoader(
            self.manifest,
            "train",
            batch_size=config.train.batch_size,
            block_size=model_config.block_size,
            seed=config.seed,
            rank=self.info.rank,
            world_size=self.info.world_size,
            order=config.data.order,
        )
        self.has_val = self.manifest.num_tokens("val") > model_config.block_size
        self.checkpointer = Checkpointer(
            self.run_dir,
            keep_last=config.checkpoint.keep_last,
            keep_best=config.checkpoint.keep_best,
        )
        self.sharded = config.checkpoint.sharded == "always" or (
            config.checkpoint.sharded == "auto" and self.parallel == "fsdp" and self.info.enabled
        )
        self.step = 0
        self.best_val_loss: float | None = None
        if resume:
            self._resume(resume)

    # -- setup ---------------------------------------------------------------------------
    def _load_data(self) -> ShardManifest:
        path = self.config.data.path
        if not path:
            raise TrainingError("data.path is empty; point it at a folder of token shards")
        try:
            return load_manifest(path, verify_checksums=self.config.data.verify_checksums)
        except ShardError as error:
            raise TrainingError(str(error)) from None

    def _check_tokenizer(self, manifest: ShardManifest) -> Path | None:
        path = manifest.tokenizer_path
        if path is None:
            return None
        try:
            tokenizer = load_tokenizer(path)
        except (OSError, ValueError) as error:
            raise TrainingError(f"tokenizer of {manifest.root}: {error}") from None
        if tokenizer.vocab_size != manifest.vocab_size:
            raise TrainingError(
                f"tokenizer {path} has {tokenizer.vocab_size} tokens but the shards in {manifest.root} "
                f"were written with vocab_size {manifest.vocab_size}; they do not belong together"
            )
        return path

    def _parallel_mode(self) -> str:
        mode = self.config.train.parallel
        if mode == "auto":
            return "ddp" if self.info.enabled else "none"
        if mode in ("ddp", "fsdp") and not launched_by_torchrun():
            raise TrainingError(f"train.parallel is {mode!r}: launch with torchrun")
        return mode

    # -- checkpoints ---------------------------------------------------------------------
    def _resume(self, resume: bool | str | Path) -> None:
        path = self.checkpointer.latest() if resume is True else Path(resume)
        if path is None:
            raise TrainingError(f"--resume: no checkpoint in {self.checkpointer.dir}")
        try:
            meta = read_meta(path)
        except CheckpointError as error:
            raise TrainingError(str(error)) from None
        self._check_compatible(path, meta)
        try:
            extra = self.checkpointer.load(
                path, model=self.model, optimizer=self.optimizer, info=self.info
            )
            self.train_loader.load_state_dict(extra["data"])
        except (CheckpointError, ValueError) as error:
            raise TrainingError(f"cannot resume from {path}: {error}") from None
        torch.set_rng_state(extra["rng"]["torch"])
        if self.device.type == "cuda" and extra["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(extra["rng"]["cuda"], self.device)
        np.random.set_state(extra["rng"]["numpy"])
        self.step = int(meta["step"])
        self.best_val_loss = meta.get("best_val_loss")

    def _check_compatible(self, path: Path, meta: dict[str, Any]) -> None:
        saved = meta.get("model_config", {})
        mine = self.model_config.to_dict()
        for key in sorted(set(saved) | set(mine)):
            if saved.get(key) != mine.get(key):
                raise TrainingError(
                    f"checkpoint {path} was trained with model.{key}={saved.get(key)!r} but this "
                    f"config has model.{key}={mine.get(key)!r}; it cannot be resumed with this config"
                )

    def save_checkpoint(self, val_loss: float | None) -> Path:
        extra = {
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state(self.device)
                if self.device.type == "cuda"
                else None,
                "numpy": np.random.get_state(),
            },
            "data": self.train_loader.state_dict(),
            "schedule": self.schedule.state_dict(),
        }
        meta = {
            "val_loss": val_loss,
            "best_val_loss": self.best_val_loss,
            "model_config": self.model_config.to_dict(),
            "run_config": self.config.to_dict(),
            "data_path": str(self.manifest.root),
        }
        path = self.checkpointer.save(
            self.step,
            model=self.wrapped if self.parallel == "fsdp" else self.model,
            optimizer=self.optimizer,
            extra=extra,
            meta=meta,
            info=self.info,
            sharded=self.sharded,
            tokenizer_file=self.tokenizer_file,
        )
        if self.info.is_main:
            self.callbacks.checkpoint(self.step, path, val_loss)
        return path

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean validation loss over ``eval_iters`` fixed batches (the same every time)."""
        if not self.has_val:
            return None
        loader = TokenLoader(
            self.manifest,
            "val",
            batch_size=self.config.train.batch_size,
            block_size=self.model_config.block_size,
            seed=self.config.seed + 1,
            rank=self.info.rank,
            world_size=self.info.world_size,
        )
        self.model.eval()
        total = torch.zeros((), device=self.device)
        for _ in range(self.config.train.eval_iters):
            x, y = self._to_device(loader.next_batch())
            with autocast(self.device, self.dtype):
                _, loss = self.forward(x, y)
            total += loss.float()
        self.model.train()
        mean = all_reduce_mean(total / self.config.train.eval_iters, self.info)
        return float(mean.item())

    def _to_device(self, batch: tuple[np.ndarray, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = (torch.from_numpy(a) for a in batch)
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(
                self.device, non_blocking=True
            )
        return x, y

    # -- the loop ------------------------------------------------------------------------
    def train_step(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One optimizer step; returns this rank's loss (detached) and the gradient norm."""
        train, grad_clip = self.config.train, self.config.optim.grad_clip
        set_lr(self.optimizer, self.schedule(self.step))
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(train.grad_accum):
            x, y = self._to_device(self.train_loader.next_batch())
            with (
                no_sync(self.wrapped, micro == train.grad_accum - 1),
                autocast(self.device, self.dtype),
            ):
                _, loss = self.forward(x, y)
                loss = loss / train.grad_accum
            loss.backward()
            loss_sum += loss.detach()
        grad_norm = None
        if grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return loss_sum, grad_norm

    def fit(self) -> TrainSummary:
        train = self.config.train
        self._emit_start()
        self._flops_per_token = self.model.flops_per_token()
        peak = train.peak_flops or peak_flops(self.device)
        # tokens/s counts every rank's tokens: MFU compares it with the whole group's peak.
        self._peak_flops = peak * self.info.world_size if peak else None
        self.model.train()
        self._window = _LogWindow(self.device)
        val_loss = None
        started = time.perf_counter()
        start_step = self.step
        last_checkpoint: Path | None = None
        stopped = False
        while self.step < train.max_iters and not stopped:
            loss, grad_norm = self.train_step()
            self._window.add(loss)
            last = self.step == train.max_iters
            if self.step % train.log_interval == 0 or last:
                self._log_train(grad_norm)
            evaluate = last or (train.eval_interval and self.step % train.eval_interval == 0)
            if evaluate:
                val_loss = self._timed(self._evaluate_and_emit)
            stopped = not last and self._stop_requested()
            interval = self.config.checkpoint.interval
            if last or stopped or (interval and self.step % interval == 0):
                saved_val = val_loss if evaluate else None
                last_checkpoint = self._timed(self.save_checkpoint, saved_val)
        elapsed = time.perf_counter() - started
        summary = TrainSummary(
            step=self.step,
            train_loss=self._window.train_loss,
            val_loss=val_loss,
            best_val_loss=self.best_val_loss,
            seconds=elapsed,
            tokens_per_second=self._tokens_per_step()
            * (self.step - start_step)
            / max(elapsed, 1e-9),
            checkpoint=last_checkpoint,
            losses=self._window.losses,
            stopped=stopped,
        )
        if self.info.is_main:
            self.callbacks.train_end(
                {
                    "step": summary.step,
                    "train_loss": summary.train_loss,
                    "val_loss": val_loss,
                    "best_val_loss": self.best_val_loss,
                    "seconds": elapsed,
                    "stopped": stopped,
                }
            )
        return summary

    def _tokens_per_step(self) -> int:
        train = self.config.train
        return (
            train.batch_size
            * train.grad_accum
            * self.info.world_size
            * self.model_config.block_size
        )

    def _timed(self, work, *args):
        """Run ``work`` with its time kept out of the next tokens/s figure (eval, saving)."""
        began = time.perf_counter()
        result = work(*args)
        self._window.last_log += time.perf_counter() - began
        return result

    def _log_train(self, grad_norm: torch.Tensor | None) -> None:
        """Average the window's loss over ranks and emit the training figures."""
        window = self._window
        train_loss = float(all_reduce_mean(window.mean(), self.info).item())
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        tokens_per_second = self._tokens_per_step() * window.steps / (now - window.last_log)
        metrics = {
            "train/loss": train_loss,
            "train/lr": self.optimizer.param_groups[0]["lr"],
            "train/tokens_per_second": tokens_per_second,
        }
        if grad_norm is not None:
            metrics["train/grad_norm"] = float(grad_norm)
        utilisation = mfu(self._flops_per_token, tokens_per_second, self._peak_flops)
        if utilisation is not None:
            metrics["train/mfu"] = utilisation
        window.logged(self.step, train_loss, now)
        self._emit(metrics)

    def _evaluate_and_emit(self) -> float | None:
        val_loss = self.evaluate()
        if val_loss is not None:
            if self.best_val_loss is None or val_loss < self.best_val_loss:
                self.best_val_loss = val_loss
            self._emit({"val/loss": val_loss, "val/perplexity": math.exp(min(val_loss, 50.0))})
        return val_loss

    def _stop_requested(self) -> bool:
        """Rank 0's callbacks decide; every rank learns it (checkpointing is collective).

        Under torchrun only on logging and checkpoint steps, which synchronise the ranks
        anyway: asking every step would add a device sync to each step of a multi-GPU run.
        Asking before a checkpoint makes it the stop's (a cancelled job keeps it).
        """
        if not self.info.enabled:
            return self.callbacks.should_stop()
        interval = self.config.checkpoint.interval
        logging_step = self.step % self.config.train.log_interval == 0
        if not logging_step and not (interval and self.step % interval == 0):
            return False
        wanted = self.info.is_main and self.callbacks.should_stop()
        flag = torch.tensor(float(wanted), device=self.device)
        return bool(all_reduce_mean(flag, self.info).item() > 0)

    def _emit_start(self) -> None:
        if not self.info.is_main:
            return
        info = {
            "config": self.config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "num_params": self.model.num_params(),
            "world_size": self.info.world_size,
            "parallel": self.parallel,
            "device": str(self.device),
            "dtype": str(self.dtype).removeprefix("torch."),
            "start_step": self.step,
            "max_iters": self.config.train.max_iters,
            "total_steps": self.config.train.max_iters,
        }
        self.callbacks.train_start(info)

    def _emit(self, metrics: dict[str, float]) -> None:
        if self.info.is_main:
            self.callbacks.metrics(self.step, metrics)


class _LogWindow:
    """The training losses since the last log line, and every logged (step, loss)."""

    def __init__(self, device: torch.device):
        self.loss_sum = torch.zeros((), device=device)  # summed on the device: no sync a step
        self.steps = 0
        self.last_log = time.perf_counter()
        self.train_loss: float | None = None
        self.losses: list[tuple[int, float]] = []

    def add(self, loss: torch.Tensor) -> None:
        self.loss_sum += loss
        self.steps += 1

    def mean(self) -> torch.Tensor:
        return self.loss_sum / self.steps

    def logged(self, step: int, train_loss: float, now: float) -> None:
        self.train_loss = train_loss
        self.losses.append((step, train_loss))
        self.loss_sum.zero_()
        self.steps = 0
        self.last_log = now
