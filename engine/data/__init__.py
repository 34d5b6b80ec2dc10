"""Data pipeline: readers, cleaning stages, dedup, PII, tokenizers, token shards."""
