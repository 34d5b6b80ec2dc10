"""Training: config, trainer, optimizer, parallelism, checkpoints, export (see docs/engine-training.md)."""
