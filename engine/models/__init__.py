"""Model architectures: :mod:`engine.models.gpt` (GPT-2 and Llama-style decoders)."""
