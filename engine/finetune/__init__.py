"""Post-training: SFT, LoRA, QLoRA, reward model, DPO and PPO (docs/engine-finetune.md)."""
