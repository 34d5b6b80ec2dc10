"""Evaluation of a trained model: the figures a registry version is judged by.

    from engine.evaluate import EvalConfig, evaluate_text, evaluate_images
    result = evaluate_text("model/", "eval-shards/", "train-shards/", EvalConfig())
    result.metrics   # {"val_loss": 1.62, "perplexity": 5.05, "toxicity_share": 0.0, ...}
    result.details   # samples with their scores, settings, seconds per phase

Text models (HF GPT-2 folders: model.safetensors, config.json, tokenizer.json): held-out
loss and perplexity on the val split of a token-shard folder; samples from fixed prompts
scored with the data pipeline's own scorers (toxicity, PII, repetition); memorisation, the
share of generated spans found verbatim in the training text (engine/evaluate/memorisation.py).
Image models (diffusion, GAN and VAE checkpoints): the digit classifier's recognition rate
per class and the Frechet distance to real digits (engine/vision/evaluate.py).
"""

from engine.evaluate.config import DEFAULT_PROMPTS, EvalConfig, EvalError, eval_config
from engine.evaluate.images import evaluate_images
from engine.evaluate.result import EvalResult
from engine.evaluate.text import evaluate_text

__all__ = [
    "DEFAULT_PROMPTS",
    "EvalConfig",
    "EvalError",
    "EvalResult",
    "eval_config",
    "evaluate_images",
    "evaluate_text",
]
