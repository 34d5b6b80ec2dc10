"""The post-training run: sft, lora, qlora, reward, dpo or ppo from one config, resumable.

    from engine.finetune.config import load_config
    from engine.finetune.run import run
    summary = run(load_config("dpo", "configs/finetune/dpo.yaml"), on_metrics=print)
    run(config, resume=True)          # continue from the run's latest checkpoint

    python -m engine train dpo configs/finetune/dpo.yaml [--resume] [--set train.steps=50]

Under ``config.run_dir``: ``checkpoints/step_NNNNNN.pt`` (atomic; only what trains: the
adapters and heads under LoRA, every weight otherwise, plus optimizer and RNG state),
``metrics.jsonl``, and at the end the outputs that chain into the next run:

- ``model/``   the policy with any adapters merged, in the Hugging Face GPT-2 layout
  (config.json, model.safetensors, tokenizer.json): a base for the next run, for
  ``python -m engine generate`` and for the platform's next job (all kinds but reward);
- ``adapter/`` the LoRA adapters alone (lora, qlora, and use_lora runs);
- ``reward/``  the reward model (reward runs), the ``base.reward_model`` of a PPO run;
- ``samples.json`` completions of a few held-out prompts (policies).

Each kind is an *objective* below: what trains, the loss of one step, the held-out
evaluation and the outputs; the loop around them (schedule, clipping, logging,
checkpoints, resume) is shared.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from engine.finetune.config import FinetuneRunConfig, config_to_dict
from engine.finetune.lora import (
    apply_lora,
    lora_modules,
    merge_and_unload,
    save_adapter,
    trainable_parameters,
)
from engine.finetune.sft import ChatTemplate
from engine.loop.checkpoints import StepFiles
from engine.loop.metrics import MetricsWindow

MetricsCallback = Callable[[int, dict[str, float]], None]
FORMAT = "engine.finetune.checkpoint/1"
SAMPLE_PROMPTS = 3  # held-out prompts completed into samples.json when none are configured


class FinetuneError(ValueError):
    """A run that cannot start or continue as configured; the message says why."""


class FinetuneCheckpoints(StepFiles):
    format = FORMAT
    description = "a post-training checkpoint"
    error = FinetuneError


CHECKPOINTS = FinetuneCheckpoints  # the run's checkpoint files (tests read them through it)


@dataclass
class RunSummary:
    kind: str
    steps: int
    seconds: float
    trainable_parameters: int
    total_parameters: int
    last_metrics: dict[str, float] = field(default_factory=dict)
    evaluation: dict[str, float] = field(default_factory=dict)  # the last held-out evaluation
    baseline: dict[str, float] = field(default_factory=dict)  # the same, before the first step
    checkpoint: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # "model" | "adapter" | "reward" -> dir
    samples: list[dict[str, str]] = field(default_factory=list)


def pick_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise FinetuneError("train.device is 'cuda' but no CUDA device is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if cuda_bf16 else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[name]


# -- loading -------------------------------------------------------------------------------
def load_base(config: FinetuneRunConfig):
    """(GPT, tokenizer, tokenizer file) of ``base.path``; FinetuneError says what is wrong."""
    from engine.infer.loading import LoadError, load_for_generation, resolve_checkpoint

    try:
        model, tokenizer = load_for_generation(config.base.path, config.base.tokenizer or None)
        folder = resolve_checkpoint(config.base.path)
    except LoadError as error:
        raise FinetuneError(f"base.path: {error}") from None
    tokenizer_file = Path(config.base.tokenizer) if config.base.tokenizer else None
    if tokenizer_file is None:
        tokenizer_file = folder / "tokenizer.json"
    return model, tokenizer, tokenizer_file


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of every weight in name order: which base model a checkpoint belongs to."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def load_records(
    config: FinetuneRunConfig, template: ChatTemplate, block_size: int
) -> tuple[list[dict], list[dict]]:
    """(train, heldout) records of the kind's shape, split by prompt.

    Every record is checked against the context first, so the error names its place in
    the file rather than in a split.
    """
    from engine.finetune import data

    kind = config.record_kind
    try:
        if config.data.source == "jsonl":
            records = data.load_pairs_jsonl(config.data.path, kind)
        else:
            records = _builtin_pairs(config, block_size)
        data.check_fits(template, records, block_size)
        return data.split_pairs(records, config.data.heldout_fraction, config.seed)
    except (OSError, data.PairsError) as error:
        raise FinetuneError(f"data: {error}") from None


def _builtin_pairs(config: FinetuneRunConfig, block_size: int) -> list[dict]:
    """Shakespeare pairs cut to fit the model's context.

    Lengths are in characters, which bounds tokens for a character tokenizer and more
    than bounds them for BPE. A third of the room goes to the prompt; three tokens are
    the template's (user, assistant, end-of-text).
    """
    from engine.finetune import data

    room = block_size - 3
    if room < 8:
        raise FinetuneError(f"a context of {block_size} tokens is too short for chat pairs")
    lengths = {
        "max_prompt_chars": min(data.MAX_PROMPT_CHARS, room // 3),
        "max_response_chars": min(data.MAX_RESPONSE_CHARS, room - room // 3),
    }
    count = config.data.count or None
    if config.record_kind == "sft":
        return data.shakespeare_sft_pairs(count, seed=config.seed, **lengths)
    return data.shakespeare_preference_pairs(
        count, seed=config.seed, corruption=config.data.corruption, **lengths
    )


# -- objectives ------------------------------------------------------------------------------
class Objective:
    """What one kind trains and how; ``module`` holds every trainable parameter."""

    module: nn.Module

    def loss(self, step_gen: torch.Generator) -> tuple[torch.Tensor | None, dict[str, float]]:
        raise NotImplementedError

    def evaluate(self) -> dict[str, float]:
        raise NotImplementedError

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def _pick(count: int, batch_size: int, gen: torch.Generator) -> list[int]:
    return torch.randint(0, count, (batch_size,), generator=gen).tolist()


class SFTObjective(Objective):
    def __init__(self, model, template, train, heldout, config, device):
        from engine.finetune.sft import encode_records, pack_examples

        block = model.config.block_size
        try:
            examples = encode_records(template, train)
            self.rows = pack_examples(examples, block, template.pad_id, pack=config.data.pack)
            held = encode_records(template, heldout)
            self.eval_rows = pack_examples(held, block, template.pad_id, pack=False)
        except ValueError as error:
            raise FinetuneError(f"data: {error}") from None
        self.module, self.config, self.device = model, config, device

    def _batch_loss(self, inputs, labels):
        from engine.finetune.sft import sft_loss

        logits, _ = self.module(inputs.to(self.device))
        return sft_loss(logits, labels.to(self.device))

    def loss(self, step_gen):
        index = _pick(len(self.rows[0]), self.config.train.batch_size, step_gen)
        loss = self._batch_loss(self.rows[0][index], self.rows[1][index])
        return loss, {"train/loss": loss.item()}

    @torch.no_grad()
    def evaluate(self):
        inputs, labels = self.eval_rows
        size = self.config.train.batch_size
        losses = []
        for start in range(0, min(len(inputs), size * self.config.train.eval_batches), size):
            batch = slice(start, start + size)
            losses.append(self._batch_loss(inputs[batch], labels[batch]).item())
        return {"eval/loss": sum(losses) / len(losses)}


def _preference_batches(template, records, config, block_size, shuffle):
    from engine.finetune.preference import preference_batches

    try:
        return preference_batches(
            template,
            records,
            batch_size=config.train.batch_size,
            block_size=block_size,
            shuffle=shuffle,
            seed=config.seed,
        )
    except ValueError as error:
        raise FinetuneError(f"data: {error}") from None


class RewardObjective(Objective):
    def __init__(self, reward_model, template, train, heldout, config, device):
        block = reward_model.config.block_size
        self.batches = _preference_batches(template, train, config, block, True)
        self.eval_batches = _preference_batches(template, heldout, config, block, False)
        self.module, self.config, self.device = reward_model, config, device

    def loss(self, step_gen):
        from engine.finetune.reward import bradley_terry_loss, pair_rewards

        batch = self.batches[_pick(len(self.batches), 1, step_gen)[0]].to(self.device)
        loss, metrics = bradley_terry_loss(*pair_rewards(self.module, batch))
        return loss, {"train/loss": loss.item(), **metrics}

    def evaluate(self):
        from engine.finetune.reward import evaluate_reward_model

        scores = evaluate_reward_model(
            self.module, self.eval_batches[: self.config.train.eval_batches]
        )
        return {f"eval/{key}": value for key, value in scores.items()}


class DPOObjective(Objective):
    def __init__(self, policy, reference, template, train, heldout, config, device):
        from engine.finetune.dpo import precompute_reference_logps

        block = policy.config.block_size
        self.batches = _preference_batches(template, train, config, block, True)
        self.eval_batches = _preference_batches(template, heldout, config, block, False)
        self.eval_batches = self.eval_batches[: config.train.eval_batches]
        self.module, self.reference, self.config, self.device = policy, reference, config, device
        # The held-out reference log-probs never change: compute them once.
        held = [b.to(device) for b in self.eval_batches]
        self.eval_batches = precompute_reference_logps(policy, reference, held)
        self.precomputed = False

    def precompute(self) -> None:
        """Reference log-probs of every training batch, before the first step only."""
        from engine.finetune.dpo import precompute_reference_logps

        batches = [b.to(self.device) for b in self.batches]
        self.batches = precompute_reference_logps(self.module, self.reference, batches)
        self.precomputed = True

    def loss(self, step_gen):
        from engine.finetune.dpo import dpo_batch_loss

        batch = self.batches[_pick(len(self.batches), 1, step_gen)[0]].to(self.device)
        loss, metrics = dpo_batch_loss(
            self.module,
            self.reference,
            batch,
            beta=self.config.dpo.beta,
            label_smoothing=self.config.dpo.label_smoothing,
        )
        metrics.pop("dpo/loss", None)  # the same number as train/loss
        return loss, {"train/loss": loss.item(), **metrics}

    def evaluate(self):
        from engine.finetune.dpo import evaluate_preferences

        scores = evaluate_preferences(
            self.module, self.reference, self.eval_batches, self.config.dpo.beta
        )
        return {f"eval/{key}": value for key, value in scores.items()}


class PPOObjective(Objective):
    """PPO makes its own optimizer steps (epochs x minibatches per rollout batch)."""

    def __init__(self, trainer, template, train, heldout, config):
        self.trainer, self.config = trainer, config
        self.module = trainer.policy
        # A prompt needs room for max_new_tokens after it.
        room = trainer.policy.gpt.config.block_size - config.ppo.max_new_tokens
        self.prompts = _unique_prompts(template, train, room)
        self.eval_prompts = _unique_prompts(template, heldout, room)
        if not self.prompts or not self.eval_prompts:
            raise FinetuneError(
                f"data: no prompt leaves room for ppo.max_new_tokens ({config.ppo.max_new_tokens}) "
                "in the training or the held-out part; lower it or use shorter prompts"
            )

    def loss(self, step_gen):
        size = self.config.ppo.rollout_batch_size
        prompts = [self.prompts[i] for i in _pick(len(self.prompts), size, step_gen)]
        return None, self.trainer.step(prompts)

    @torch.no_grad()
    def evaluate(self):
        """Mean score and KL of responses to held-out prompts, fixed sampling seed."""
        from engine.finetune.ppo import generate_rollouts

        trainer, cfg = self.trainer, self.config.ppo
        count = cfg.rollout_batch_size
        prompts = [self.eval_prompts[i % len(self.eval_prompts)] for i in range(count)]
        self.module.eval()
        generator = torch.Generator(device=trainer.generator.device).manual_seed(self.config.seed)
        rollout = generate_rollouts(
            self.module, prompts, cfg, trainer.eot_id, trainer.pad_id, generator
        )
        scores = trainer.score(rollout)
        kl = (rollout.logprobs - trainer.reference_logprobs(rollout)) * rollout.response_mask
        return {"eval/reward": scores.mean().item(), "eval/kl": kl.sum(dim=1).mean().item()}

    def extra_state(self):
        return {"ppo": self.trainer.state_dict()}

    def load_extra_state(self, state):
        self.trainer.load_state_dict(state["ppo"])


def _unique_prompts(template: ChatTemplate, records: list[dict], room: int) -> list[list[int]]:
    encoded = (template.encode_prompt(p) for p in dict.fromkeys(r["prompt"] for r in records))
    return [ids for ids in encoded if len(ids) <= room]


# -- building a run ----------------------------------------------------------------------------
def _with_adapters(model: nn.Module, config: FinetuneRunConfig, template: ChatTemplate) -> None:
    lora = config.lora
    if config.train_chat_tokens and not lora.trainable_tokens:
        lora = dataclasses.replace(lora, trainable_tokens=chat_token_ids(template))
    try:
        apply_lora(model, lora)
    except ValueError as error:
        raise FinetuneError(f"lora: {error}") from None


def chat_token_ids(template: ChatTemplate) -> list[int]:
    """The template's own tokens: roles and end-of-text (padding is never read or learnt)."""
    ids = [*template.role_ids.values(), template.eot_id]
    if template.system_id is not None:
        ids.append(template.system_id)
    return sorted(set(ids))


def _frozen_copy(model: nn.Module) -> nn.Module:
    reference = copy.deepcopy(model)
    reference.requires_grad_(False)
    return reference.eval()


def build_objective(config, model, tokenizer, template, train, heldout, device, dtype):
    """The kind's objective around ``model`` (moved to ``device``), LoRA/NF4 applied."""
    kind = config.kind
    if kind == "qlora":
        from engine.finetune.qlora import quantize_model

        try:
            quantize_model(model, config.lora.target_modules, compute_dtype=dtype)
        except ValueError as error:
            raise FinetuneError(f"lora.target_modules: {error}") from None
    model.to(device)
    if kind == "reward":
        from engine.finetune.reward import RewardModel

        # Our own freshly loaded copy: no need for from_gpt's second one.
        reward_model = RewardModel(model.requires_grad_(True))
        if config.adapters:
            _with_adapters(reward_model.gpt, config, template)
        return RewardObjective(reward_model, template, train, heldout, config, device)
    reference = None
    if kind in ("dpo", "ppo") and not config.adapters:
        reference = _frozen_copy(model)  # under LoRA the adapter-free base is the reference
    if config.adapters:
        _with_adapters(model, config, template)
    else:
        model.requires_grad_(True)
    if kind in ("sft", "lora", "qlora"):
        return SFTObjective(model, template, train, heldout, config, device)
    if kind == "dpo":
        return DPOObjective(model, reference, template, train, heldout, config, device)
    return _ppo_objective(config, model, reference, tokenizer, template, train, heldout, device)


def _ppo_objective(config, model, reference, tokenizer, template, train, heldout, device):
    from engine.finetune.ppo import PolicyWithValue, PPOTrainer, reward_model_score_fn
    from engine.finetune.reward import load_reward_model

    try:
        reward_model = load_reward_model(config.base.reward_model).to(device)
    except (OSError, ValueError) as error:
        raise FinetuneError(f"base.reward_model: {error}") from None
    if reward_model.config.vocab_size < tokenizer.vocab_size:
        raise FinetuneError("base.reward_model was trained with another tokenizer")
    reward_model.requires_grad_(False)
    policy = PolicyWithValue(model).to(device)
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.train.weight_decay)
    trainer = PPOTrainer(
        policy,
        reference,
        reward_model_score_fn(reward_model, template.pad_id),
        config.ppo,
        optimizer,
        eot_id=template.eot_id,
        pad_id=template.pad_id,
    )
    return PPOObjective(trainer, template, train, heldout, config)


def _optimizer(objective: Objective, config: FinetuneRunConfig) -> torch.optim.Optimizer:
    if isinstance(objective, PPOObjective):
        return objective.trainer.optimizer
    params = [p for p in objective.module.parameters() if p.requires_grad]
    if not params:
        raise FinetuneError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.train.weight_decay)


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) weights; a 4-bit NF4 layer counts its weights though they are buffers."""
    from engine.finetune.qlora import NF4Linear

    trainable, total = trainable_parameters(module)
    for layer in module.modules():
        if isinstance(layer, NF4Linear):
            total += layer.in_features * layer.out_features
            if layer.bias is not None and not isinstance(layer.bias, nn.Parameter):
                total += layer.bias.numel()
    return trainable, total


def _trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    names = {name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in names}


def _set_lr(optimizer: torch.optim.Optimizer, config: FinetuneRunConfig, step: int) -> float:
    """Linear warm-up to the peak, then constant."""
    warmup = config.train.warmup_steps
    lr = config.lr * min(1.0, (step + 1) / warmup) if warmup else config.lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


# -- the loop --------------------------------------------------------------------------------
def run(
    config: FinetuneRunConfig,
    *,
    resume: bool | str | os.PathLike = False,
    on_metrics: MetricsCallback | None = None,
    on_checkpoint: Callable[[int, Path], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> RunSummary:
    """Train ``config`` for ``train.steps`` steps (from a checkpoint if asked); write outputs."""
    train_cfg = config.train
    if train_cfg.threads:
        torch.set_num_threads(train_cfg.threads)
    device = pick_device(train_cfg.device)
    dtype = pick_dtype(train_cfg.dtype, device)
    run_dir = Path(config.run_dir)
    torch.manual_seed(config.seed)
    model, tokenizer, tokenizer_file = load_base(config)
    fingerprint = weights_fingerprint(model)
    try:
        template = ChatTemplate(tokenizer)
    except ValueError as error:
        raise FinetuneError(f"base.path: {error}") from None
    train_records, heldout_records = load_records(config, template, model.config.block_size)
    objective = build_objective(
        config, model, tokenizer, template, train_records, heldout_records, device, dtype
    )
    optimizer = _optimizer(objective, config)
    step_gen = torch.Generator().manual_seed(config.seed)
    start = 0
    store = FinetuneCheckpoints(run_dir, keep_last=train_cfg.keep_last)
    if not resume and store.latest() is not None:
        raise FinetuneError(
            f"{run_dir} holds checkpoints of an earlier run; resume it (--resume) "
            "or choose another run_dir"
        )
    if resume:
        start = _resume(resume, run_dir, config, objective, optimizer, step_gen, fingerprint)
    elif isinstance(objective, DPOObjective) and config.dpo.precompute_reference:
        objective.precompute()
    trainable, total = parameter_counts(objective.module)
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = run_dir / "metrics.jsonl"
    summary = RunSummary(config.kind, start, 0.0, trainable, total)
    if progress is not None:
        share = 100 * trainable / total
        progress(f"{config.kind}: {trainable:,} of {total:,} parameters train ({share:.2f}%)")

    def emit(step: int, metrics: dict[str, float]) -> None:
        _append_jsonl(metrics_path, {"step": step, **metrics})
        if on_metrics is not None:
            on_metrics(step, metrics)

    def checkpoint(step: int) -> None:
        payload = {
            "kind": config.kind,
            "config": config_to_dict(config),
            "state": _trainable_state(objective.module),
            "optimizer": optimizer.state_dict(),
            "rng": {"step": step_gen.get_state(), "torch": torch.get_rng_state()},
            "extra": objective.extra_state(),
            "base_fingerprint": fingerprint,
        }
        path = store.save(step, payload)
        summary.checkpoint = str(path)
        if on_checkpoint is not None:
            on_checkpoint(step, path)

    started = time.perf_counter()
    if train_cfg.eval_at_start and start == 0:
        objective.module.eval()
        summary.baseline = objective.evaluate()
        emit(0, summary.baseline)
    window = MetricsWindow()
    params = [p for p in objective.module.parameters() if p.requires_grad]
    for step in range(start, train_cfg.steps):
        lr = _set_lr(optimizer, config, step)
        objective.module.train()
        loss, metrics = objective.loss(step_gen)
        if loss is not None:
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train_cfg.grad_clip:
                norm = torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip)
                metrics["train/grad_norm"] = float(norm)
            optimizer.step()
        window.add({**metrics, "train/lr": lr})
        done = step + 1
        if done % train_cfg.log_interval == 0 or done == train_cfg.steps:
            averaged = window.flush(done, "train/steps_per_second", 1, FinetuneError)
            summary.last_metrics = averaged
            emit(done, averaged)
            if progress is not None:
                progress(window.describe(config.kind, done, train_cfg.steps, averaged))
        every = train_cfg.eval_interval
        if done == train_cfg.steps or (every and done % every == 0):
            objective.module.eval()
            summary.evaluation = objective.evaluate()
            emit(done, summary.evaluation)
        interval = train_cfg.checkpoint_interval
        if done == train_cfg.steps or (interval and done % interval == 0):
            checkpoint(done)
        summary.steps = done
    summary.outputs, policy = write_outputs(objective, tokenizer, tokenizer_file, run_dir)
    if policy is not None:
        prompts = config.sample_prompts or [r["prompt"] for r in heldout_records[:SAMPLE_PROMPTS]]
        summary.samples = write_samples(policy, tokenizer, template, prompts, run_dir)
    summary.seconds = time.perf_counter() - started
    return summary


def _resume(resume, run_dir, config, objective, optimizer, step_gen, base_fingerprint) -> int:
    path = (
        FinetuneCheckpoints(run_dir, keep_last=0).latest()
        if resume is True
        else CHECKPOINTS.resolve(resume)
    )
    if path is None:
        raise FinetuneError(f"--resume: {run_dir} has no checkpoint yet")
    payload = CHECKPOINTS.load(path)
    if payload["kind"] != config.kind:
        raise FinetuneError(
            f"--resume: {path} is a {payload['kind']} checkpoint, not {config.kind}"
        )
    saved, ours = payload["config"], config_to_dict(config)
    for key in ("lora", "use_lora"):
        if saved[key] != ours[key]:
            raise FinetuneError(f"--resume: {path} was trained with a different {key} section")
    # The base is compared by content: a re-dispatched job downloads it to a new folder.
    if payload["base_fingerprint"] != base_fingerprint:
        raise FinetuneError(f"--resume: {path} was trained from a different base model")
    missing = set(_trainable_state(objective.module)) - set(payload["state"])
    if missing:
        raise FinetuneError(f"--resume: {path} lacks {sorted(missing)[:4]}")
    objective.module.load_state_dict(payload["state"], strict=False)
    optimizer.load_state_dict(payload["optimizer"])
    step_gen.set_state(payload["rng"]["step"])
    torch.set_rng_state(payload["rng"]["torch"])
    objective.load_extra_state(payload["extra"])
    step = int(payload["step"])
    if step >= config.train.steps:
        raise FinetuneError(
            f"--resume: {path} is at step {step}, not before train.steps ({config.train.steps}); "
            "raise train.steps to train further"
        )
    return step


# -- outputs ---------------------------------------------------------------------------------
def plain_model(module: nn.Module) -> nn.Module:
    """A copy with NF4 layers dequantised and LoRA adapters merged and unwrapped."""
    from engine.finetune.qlora import dequantize_model

    merged = copy.deepcopy(module)
    dequantize_model(merged, torch.float32)
    return merge_and_unload(merged).float()


def write_outputs(
    objective, tokenizer, tokenizer_file, run_dir: Path
) -> tuple[dict[str, str], nn.Module | None]:
    """Write the run's outputs; return their folders and the exported policy (None: reward)."""
    from engine.train.export import ExportError, export_model

    outputs: dict[str, str] = {}
    if isinstance(objective, RewardObjective):
        from engine.finetune.reward import save_reward_model

        plain = plain_model(objective.module)
        outputs["reward"] = str(save_reward_model(plain, run_dir / "reward", tokenizer_file))
        return outputs, None
    policy = objective.module.gpt if isinstance(objective, PPOObjective) else objective.module
    if lora_modules(policy):
        outputs["adapter"] = str(save_adapter(policy, run_dir / "adapter"))
    plain = plain_model(policy).cpu()
    try:
        folder = export_model(
            plain, run_dir / "model", tokenizer_file=tokenizer_file, eot_id=tokenizer.eot_id
        )
    except ExportError as error:
        raise FinetuneError(f"exporting the model: {error}") from None
    outputs["model"] = str(folder)
    return outputs, plain


def write_samples(
    model: nn.Module, tokenizer, template: ChatTemplate, prompts: list[str], run_dir: Path
) -> list[dict[str, str]]:
    """Greedy completions of ``prompts`` by the exported policy, as samples.json."""
    from engine.infer.generate import Generator, SamplingParams

    encoded = [template.encode_prompt(p) for p in prompts]
    texts = [tokenizer.decode(ids) for ids in encoded]
    room = model.config.block_size - max(len(ids) for ids in encoded)
    params = SamplingParams(max_new_tokens=max(1, min(128, room)), temperature=0.0)
    result = Generator(model.eval(), tokenizer).generate(texts, params)
    samples = [
        {"prompt": p, "text": g.text} for p, g in zip(prompts, result.generations, strict=True)
    ]
    tmp = run_dir / ".samples.json.tmp"
    tmp.write_text(json.dumps(samples, indent=1), encoding="utf-8")
    tmp.replace(run_dir / "samples.json")
    return samples
