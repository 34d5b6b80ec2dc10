"""``python -m engine train sft|lora|qlora|reward|dpo|ppo CONFIG``: post-training runs.

python -m engine train lora configs/finetune/lora.yaml --set base.path=var/runs/pretrain
python -m engine train dpo configs/finetune/dpo.yaml --resume
"""

from __future__ import annotations

import argparse

from engine.cli import EngineError, add_config_command

KIND_HELP = {
    "sft": "supervised fine-tuning of every weight on prompt/response pairs",
    "lora": "SFT of LoRA adapters only (the base stays frozen)",
    "qlora": "SFT of LoRA adapters on a 4-bit NF4 base",
    "reward": "train a reward model on chosen/rejected pairs (Bradley-Terry)",
    "dpo": "direct preference optimisation against a frozen reference",
    "ppo": "RLHF: PPO against a reward model with a KL penalty",
}


def register_train(train_subparsers) -> None:
    """Add the six post-training kinds to the sub-commands of ``train``."""
    for kind, help_text in KIND_HELP.items():
        parser = add_config_command(
            train_subparsers, kind, help_text, "YAML file (see configs/finetune/)", "train.steps=50"
        )
        parser.set_defaults(func=cmd_finetune, kind=kind)


def cmd_finetune(args: argparse.Namespace) -> int:
    from engine.finetune.config import ConfigError, load_config
    from engine.finetune.run import FinetuneError, run

    try:
        config = load_config(args.kind, args.config, args.overrides)
        summary = run(config, resume=args.resume, progress=print)
    except (ConfigError, FinetuneError) as error:
        raise EngineError(str(error)) from None
    shown = ", ".join(f"{k} {v:.4g}" for k, v in summary.evaluation.items())
    print(f"{summary.kind}: {summary.steps} steps in {summary.seconds:.1f} s; {shown}")
    for name, folder in summary.outputs.items():
        print(f"{name}: {folder}")
    return 0
