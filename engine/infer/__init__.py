"""Inference: :mod:`engine.infer.generate` (KV-cache generation) and its CLI."""
