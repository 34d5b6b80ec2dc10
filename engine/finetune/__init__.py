"""Post-training: LoRA adapters and supervised fine-tuning (SFT)."""
