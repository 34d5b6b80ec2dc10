"""What a post-training run leaves behind: the merged policy, its adapters, the reward model,
and sampled completions of held-out prompts (see engine/finetune/run.py for the layout).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
import torch.nn as nn

from engine.finetune.lora import lora_modules, merge_and_unload, save_adapter
from engine.finetune.objective import FinetuneError, Objective
from engine.finetune.ppo import PPOObjective
from engine.finetune.qlora import dequantize_model
from engine.finetune.reward import RewardObjective, save_reward_model
from engine.finetune.sft import ChatTemplate
from engine.infer.generate import Generator, SamplingParams
from engine.train.config import SamplesConfig
from engine.train.export import ExportError, export_model


def plain_model(module: nn.Module) -> nn.Module:
    """A copy with NF4 layers dequantised and LoRA adapters merged and unwrapped."""
    merged = copy.deepcopy(module)
    dequantize_model(merged, torch.float32)
    return merge_and_unload(merged).float()


def write_outputs(
    objective: Objective, tokenizer, tokenizer_file, run_dir: Path
) -> tuple[dict[str, str], nn.Module | None]:
    """Write the run's outputs; return their folders and the exported policy (None: reward)."""
    outputs: dict[str, str] = {}
    if isinstance(objective, RewardObjective):
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
    """Completions of ``prompts`` by the exported policy, as samples.json.

    Sampled as the pre-training samples are (temperature 0.8, top-k 50, a fixed seed: the
    same model gives the same samples), not greedily: a small model's most likely next
    word is "the" again and again, which hides what the run changed.
    """
    encoded = [template.encode_prompt(p) for p in prompts]
    texts = [tokenizer.decode(ids) for ids in encoded]
    room = model.config.block_size - max(len(ids) for ids in encoded)
    sampling = SamplesConfig()
    params = SamplingParams(
        max_new_tokens=max(1, min(128, room)),
        temperature=sampling.temperature,
        top_k=sampling.top_k,
        seed=sampling.seed,
    )
    result = Generator(model.eval(), tokenizer).generate(texts, params)
    samples = [
        {"prompt": p, "text": g.text} for p, g in zip(prompts, result.generations, strict=True)
    ]
    tmp = run_dir / ".samples.json.tmp"
    tmp.write_text(json.dumps(samples, indent=1), encoding="utf-8")
    tmp.replace(run_dir / "samples.json")
    return samples
