"""``python -m engine evaluate``: the figures an `evaluate` job computes, from the shell.

    python -m engine evaluate text var/export/shakespeare --data var/data/shakespeare-char \\
        [--train var/data/shakespeare-char] [--set samples=16 --set device=cpu] [--json]
    python -m engine evaluate images var/vision/vae/checkpoints/step_002000.pt [--set per_class=50]

``--data``: the token-shard folder whose val split is scored; ``--train``: the one whose
train split the memorisation check reads (left out: no memorisation check). ``--set``
takes the EvalConfig keys (engine/evaluate/config.py), checked as in a job.
"""

from __future__ import annotations

import argparse
import json

import yaml

from engine.cli import EngineError


def register(subparsers) -> None:
    parser = subparsers.add_parser("evaluate", help="evaluate a trained model")
    kinds = parser.add_subparsers(dest="what", metavar="{text,images}", required=True)
    text = kinds.add_parser("text", help="held-out loss, scored samples, memorisation")
    text.add_argument("model", help="exported model folder (model.safetensors, config.json)")
    text.add_argument("--data", required=True, help="token-shard folder (its val split)")
    text.add_argument("--train", help="token-shard folder of the training data (train split)")
    images = kinds.add_parser("images", help="digit recognition and Frechet distance")
    images.add_argument("model", help="image-model checkpoint (.pt) or run folder")
    images.add_argument("--classifier-cache", help="where the digit classifier is kept")
    for sub in (text, images):
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="an evaluation setting, e.g. --set samples=16",
        )
        sub.add_argument(
            "--threads",
            type=int,
            default=0,
            help="torch CPU threads (0 = torch's default; 1 is often faster on a busy machine)",
        )
        sub.add_argument("--json", action="store_true", help="metrics and details as JSON")
        sub.set_defaults(func=cmd_evaluate)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from engine.evaluate import EvalError, eval_config, evaluate_images, evaluate_text
    from engine.loop.device import set_threads

    set_threads(args.threads)
    raw = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise EngineError(f"--set {item!r} must look like key=value")
        raw[key.strip()] = yaml.safe_load(value)
    try:
        config = eval_config(raw)
        if args.what == "text":
            result = evaluate_text(args.model, args.data, args.train, config)
        else:
            result = evaluate_images(args.model, config, classifier_cache=args.classifier_cache)
    except EvalError as error:
        raise EngineError(str(error)) from None
    if args.json:
        print(json.dumps({"metrics": result.metrics, "details": result.details}, indent=1))
        return 0
    for key, value in result.metrics.items():
        print(f"{key:<22} {value:.4f}")
    for phase, seconds in result.details["seconds"].items():
        print(f"# {phase}: {seconds:.2f} s")
    return 0
