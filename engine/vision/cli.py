"""Command line of the image generators (hooked into ``python -m engine``).

    python -m engine train diffusion configs/vision/diffusion.yaml [--resume [CKPT]] [--out DIR]
    python -m engine train gan configs/vision/gan.yaml --set train.steps=500
    python -m engine train vae configs/vision/vae.yaml --evaluate 50
    python -m engine sample --checkpoint var/runs/vision-diffusion --prompt "a handwritten 7" \\
        --n 16 --out grid.png [--sampler ddim --steps 50 --guidance-scale 2.0 --seed 0]

Without ``--prompt``, ``sample`` draws ``--n`` of every digit, one row per digit.
"""

from __future__ import annotations

import argparse
import math
import sys

from engine.cli import EngineError, add_config_command

KIND_HELP = {
    "diffusion": "train a class-conditional diffusion model (DDPM, CFG) on the digits",
    "gan": "train a class-conditional DCGAN on the digits",
    "vae": "train a conditional convolutional VAE on the digits",
}
MAX_SAMPLES = 1024


def register_train(train_subparsers) -> None:
    """Add ``diffusion``, ``gan`` and ``vae`` to the sub-commands of ``train``."""
    for kind, help_text in KIND_HELP.items():
        parser = add_config_command(
            train_subparsers, kind, help_text, "YAML file (see configs/vision/)", "train.steps=500"
        )
        parser.add_argument("--out", metavar="RUN_DIR", help="run folder (overrides run_dir)")
        parser.add_argument(
            "--evaluate",
            type=int,
            default=0,
            metavar="PER_CLASS",
            help="after training, score PER_CLASS samples per digit (accuracy, Frechet distance)",
        )
        parser.set_defaults(func=cmd_train, kind=kind)


def register(subparsers) -> None:
    """Add the top-level ``sample`` command."""
    parser = subparsers.add_parser("sample", help="draw digits from a trained image generator")
    parser.add_argument(
        "--checkpoint", required=True, help="checkpoint file or run folder (latest checkpoint)"
    )
    parser.add_argument("--prompt", help='e.g. "a handwritten 7"; omit for every digit')
    parser.add_argument(
        "--n", type=int, default=16, help="samples (per digit when no prompt is given)"
    )
    parser.add_argument("--out", required=True, help="PNG file for the grid")
    parser.add_argument(
        "--sampler", choices=["ddim", "ddpm"], help="diffusion only (default: ddim)"
    )
    parser.add_argument("--steps", type=int, help="DDIM steps, diffusion only (default: config)")
    parser.add_argument(
        "--guidance-scale", type=float, help="classifier-free guidance s, diffusion only"
    )
    parser.add_argument("--eta", type=float, help="DDIM noise (0 = deterministic), diffusion only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=int, default=4, help="pixel enlargement in the PNG")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.set_defaults(func=cmd_sample)


def _user_errors() -> tuple[type[Exception], ...]:
    from engine.vision.data import VisionInputError
    from engine.vision.train import TrainingError

    return (VisionInputError, TrainingError)


def cmd_train(args: argparse.Namespace) -> int:
    from engine.vision.config import load_config
    from engine.vision.train import train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"run_dir={args.out}")
    if args.evaluate < 0:
        raise EngineError(f"--evaluate must not be negative, got {args.evaluate}")
    try:
        config = load_config(args.kind, args.config, overrides)
        summary = train(
            config,
            resume=args.resume,
            eval_per_class=args.evaluate,
            progress=lambda line: print(line, file=sys.stderr, flush=True),
        )
    except _user_errors() as error:
        raise EngineError(str(error)) from None
    print(f"{summary.kind}: {summary.steps} steps in {summary.seconds:.0f}s")
    print(f"checkpoint: {summary.checkpoint}")
    print(f"samples: {summary.grid}")
    for key, value in summary.evaluation.items():
        print(f"{key}: {value:.4g}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from engine.vision.data import NUM_CLASSES, parse_prompt
    from engine.vision.evaluate import sample_in_batches
    from engine.vision.images import save_grid
    from engine.vision.train import load_recipe

    if not 1 <= args.n <= MAX_SAMPLES:
        raise EngineError(f"--n must be in [1, {MAX_SAMPLES}], got {args.n}")
    if not args.out.lower().endswith(".png"):
        raise EngineError(f"--out must name a .png file, got {args.out}")
    if not 1 <= args.scale <= 32:
        raise EngineError(f"--scale must be in [1, 32], got {args.scale}")
    options = {
        "sampler": args.sampler,
        "steps": args.steps,
        "guidance_scale": args.guidance_scale,
        "eta": args.eta,
    }
    try:
        recipe, payload = load_recipe(args.checkpoint, device=args.device)
        num_classes = payload["config"]["model"]["num_classes"]
        if args.prompt is not None:
            labels = torch.full((args.n,), parse_prompt(args.prompt, num_classes))
            nrow = math.ceil(math.sqrt(args.n))
        else:
            if args.n * num_classes > MAX_SAMPLES:
                raise EngineError(f"--n {args.n} per digit is more than {MAX_SAMPLES} in all")
            labels = torch.arange(num_classes).repeat_interleave(args.n)  # row = digit
            nrow = args.n
        images = sample_in_batches(recipe, labels, seed=args.seed, **options)
    except _user_errors() as error:
        raise EngineError(str(error)) from None
    path = save_grid(images, args.out, nrow=nrow, scale=args.scale)
    what = f"'{args.prompt}'" if args.prompt is not None else f"digits 0-{NUM_CLASSES - 1}"
    print(
        f"{images.shape[0]} samples of {what} from {payload['kind']} step {payload['step']}: {path}"
    )
    return 0
