"""Everything a post-training run is built from: the base model, the records, the objective.

    model, tokenizer, tokenizer_file = load_base(config)
    train, heldout = load_records(config, ChatTemplate(tokenizer), model.config.block_size)
    objective = build_objective(config, model, tokenizer, template, train, heldout, device, dtype)
    optimizer = make_optimizer(objective, config)

Each kind's objective lives next to its method (sft.py, reward.py, dpo.py, ppo.py); this
module applies what the config asks around it (NF4 for qlora, LoRA adapters, a frozen
reference for dpo and ppo, the reward model ppo scores with).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from pathlib import Path

import torch
import torch.nn as nn

from engine.finetune import pairs, shakespeare
from engine.finetune.config import FinetuneRunConfig
from engine.finetune.dpo import DPOObjective
from engine.finetune.lora import apply_lora, trainable_parameters
from engine.finetune.objective import FinetuneError, Objective, trainable
from engine.finetune.ppo import PolicyWithValue, PPOObjective, PPOTrainer, reward_model_score_fn
from engine.finetune.qlora import NF4Linear, quantize_model
from engine.finetune.reward import RewardModel, RewardObjective, load_reward_model
from engine.finetune.sft import ChatTemplate, SFTObjective
from engine.infer.loading import LoadError, load_for_generation, resolve_checkpoint


# -- loading -------------------------------------------------------------------------------
def load_base(config: FinetuneRunConfig):
    """(GPT, tokenizer, tokenizer file) of ``base.path``; FinetuneError says what is wrong."""
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
    kind = config.record_kind
    try:
        if config.data.source == "jsonl":
            records = pairs.load_pairs_jsonl(config.data.path, kind)
        else:
            records = _builtin_pairs(config, block_size)
        pairs.check_fits(template, records, block_size)
        return pairs.split_pairs(records, config.data.heldout_fraction, config.seed)
    except (OSError, pairs.PairsError) as error:
        raise FinetuneError(f"data: {error}") from None


def _builtin_pairs(config: FinetuneRunConfig, block_size: int) -> list[dict]:
    """Shakespeare pairs cut to fit the model's context.

    Lengths are in characters, which bounds tokens for a character tokenizer and more
    than bounds them for BPE. A third of the room goes to the prompt; three tokens are
    the template's (user, assistant, end-of-text).
    """
    room = block_size - 3
    if room < 8:
        raise FinetuneError(f"a context of {block_size} tokens is too short for chat pairs")
    lengths = {
        "max_prompt_chars": min(shakespeare.MAX_PROMPT_CHARS, room // 3),
        "max_response_chars": min(shakespeare.MAX_RESPONSE_CHARS, room - room // 3),
    }
    count = config.data.count or None
    if config.record_kind == "sft":
        return shakespeare.shakespeare_sft_pairs(count, seed=config.seed, **lengths)
    return shakespeare.shakespeare_preference_pairs(
        count, seed=config.seed, corruption=config.data.corruption, **lengths
    )


# -- the objective --------------------------------------------------------------------------
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
        try:
            quantize_model(model, config.lora.target_modules, compute_dtype=dtype)
        except ValueError as error:
            raise FinetuneError(f"lora.target_modules: {error}") from None
    model.to(device)
    if kind == "reward":
        # Our own freshly loaded copy: no need for from_gpt's second one.
        reward_model = RewardModel(model.requires_grad_(True))
        if config.adapters:
            _with_adapters(reward_model.gpt, config, template)
        return RewardObjective.from_records(reward_model, template, train, heldout, config, device)
    reference = None
    if kind in ("dpo", "ppo") and not config.adapters:
        reference = _frozen_copy(model)  # under LoRA the adapter-free base is the reference
    if config.adapters:
        _with_adapters(model, config, template)
    else:
        model.requires_grad_(True)
    if kind in ("sft", "lora", "qlora"):
        return SFTObjective.from_records(model, template, train, heldout, config, device)
    if kind == "dpo":
        return DPOObjective.from_records(model, reference, template, train, heldout, config, device)
    return _ppo_objective(config, model, reference, tokenizer, template, train, heldout, device)


def _ppo_objective(config, model, reference, tokenizer, template, train, heldout, device):
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


def make_optimizer(objective: Objective, config: FinetuneRunConfig) -> torch.optim.Optimizer:
    """AdamW over what trains; PPO's trainer brings its own (it steps it itself)."""
    if isinstance(objective, PPOObjective):
        return objective.trainer.optimizer
    params = trainable(objective.module)
    if not params:
        raise FinetuneError("nothing to train: every parameter is frozen")
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.train.weight_decay)


def parameter_counts(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) weights; a 4-bit NF4 layer counts its weights though they are buffers."""
    trainable_count, total = trainable_parameters(module)
    for layer in module.modules():
        if isinstance(layer, NF4Linear):
            total += layer.in_features * layer.out_features
            if layer.bias is not None and not isinstance(layer.bias, nn.Parameter):
                total += layer.bias.numel()
    return trainable_count, total


def trainable_state(module: nn.Module) -> dict[str, torch.Tensor]:
    names = {name for name, p in module.named_parameters() if p.requires_grad}
    return {k: v.detach().clone() for k, v in module.state_dict().items() if k in names}
