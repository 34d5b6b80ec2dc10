"""Image generators on the digits: how often samples show the requested digit, and how far
their features are from real held-out digits (Frechet distance), for diffusion, GAN and VAE.

    .venv/bin/python bench/bench_vision.py                 # 50 samples per digit per model
    .venv/bin/python bench/bench_vision.py --quick         # 10 per digit
    .venv/bin/python bench/bench_vision.py --per-class 100 --grids docs/img/vision

Models come from the runs that ``python -m engine train <kind> configs/vision/<kind>.yaml``
writes (var/runs/vision-<kind>); a run that is missing is trained here first with a
shortened schedule (``--train-steps``, flagged in the output). Diffusion samples with DDIM
(50 steps) at guidance scale 1.0 (``--guidance-scale``: higher
scales make more prototypical digits: accuracy up, Frechet distance up).

Reference figures from the same scorer in the same run: real training digits (as many as
the samples; the floor that sampling noise allows) and uniform noise. Quality bar (issue 7):
guided diffusion samples recognised as the requested digit >= 90%, and the diffusion model
has the lowest Frechet distance of the three.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from engine.vision.checkpoint import VisionCheckpoints
from engine.vision.config import KINDS, load_config
from engine.vision.evaluate import Evaluator, balanced_labels, sample_in_batches
from engine.vision.images import save_grid
from engine.vision.train import load_recipe, train

ROOT = Path(__file__).resolve().parent.parent


def trained_recipe(kind: str, runs_root: Path, train_steps: int):
    """The run's latest checkpoint, or a short run trained now (returns recipe, note)."""
    run_dir = runs_root / f"vision-{kind}"
    note = ""
    if VisionCheckpoints(run_dir).latest() is None:
        config = load_config(
            kind,
            ROOT / "configs" / "vision" / f"{kind}.yaml",
            [f"run_dir={run_dir}", f"train.steps={train_steps}", "train.sample_interval=0"],
        )
        started = time.perf_counter()
        train(config)
        note = f"(no run found: trained {train_steps} steps here in {time.perf_counter() - started:.0f}s)"
    recipe, payload = load_recipe(run_dir, device="cpu")
    return recipe, payload, note


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 samples per digit")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--runs-root", type=Path, default=ROOT / "var" / "runs")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--grids", type=Path, help="also write sample grids (PNG) here")
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, help="diffusion's classifier-free guidance s"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    per_class = 10 if args.quick else args.per_class
    torch.set_num_threads(1)

    evaluator = Evaluator.load_or_train(args.runs_root / "vision-evaluator.pt")
    labels = balanced_labels(per_class)
    split = evaluator.split
    real_index = torch.randperm(
        split.train_images.shape[0], generator=torch.Generator().manual_seed(args.seed)
    )[: labels.numel()]
    real = evaluator.score(split.train_images[real_index], split.train_labels[real_index])
    reference = evaluator.reference(args.seed)
    print(f"evaluator: held-out real digits recognised {reference['heldout_accuracy']:.1%}")
    print(
        f"samples per model: {labels.numel()} ({per_class} per digit); FD vs {split.heldout_images.shape[0]} held-out digits"
    )
    print(f"{'model':<12} {'accuracy':>9} {'FD':>9} {'FD/real':>8} {'s/sample':>9}  step")
    print(
        f"{'real train':<12} {real['eval/accuracy']:>9.1%} {real['eval/frechet_distance']:>9.2f} {1.0:>8.2f} {'-':>9}"
    )
    noise = reference["noise"]
    print(
        f"{'noise':<12} {noise['eval/accuracy']:>9.1%} {noise['eval/frechet_distance']:>9.2f} "
        f"{noise['eval/frechet_distance'] / real['eval/frechet_distance']:>8.1f} {'-':>9}"
    )

    results = {}
    for kind in KINDS:
        recipe, payload, note = trained_recipe(kind, args.runs_root, args.train_steps)
        started = time.perf_counter()
        options = {"guidance_scale": args.guidance_scale} if kind == "diffusion" else {}
        images = sample_in_batches(recipe, labels, seed=args.seed, **options)
        seconds = (time.perf_counter() - started) / labels.numel()
        scores = evaluator.score(images, labels)
        results[kind] = scores
        ratio = scores["eval/frechet_distance"] / real["eval/frechet_distance"]
        print(
            f"{kind:<12} {scores['eval/accuracy']:>9.1%} {scores['eval/frechet_distance']:>9.2f} "
            f"{ratio:>8.2f} {seconds:>9.4f}  {payload['step']} {note}"
        )
        if args.grids:
            rows = torch.arange(10).repeat_interleave(10)
            grid = sample_in_batches(recipe, rows, seed=args.seed + 1, **options)
            save_grid(grid, args.grids / f"{kind}_samples.png", nrow=10, scale=4)
            if kind == "vae":
                originals = split.heldout_images[:50]
                recon = recipe.reconstruct(originals, split.heldout_labels[:50])
                pairs = torch.stack([originals, recon], dim=1).view(-1, 1, 8, 8)
                save_grid(pairs, args.grids / "vae_reconstructions.png", nrow=10, scale=4)
    if args.grids:
        save_grid(split.heldout_images[:100], args.grids / "real_heldout.png", nrow=10, scale=4)
        print(f"grids written to {args.grids}")

    best = min(results, key=lambda kind: results[kind]["eval/frechet_distance"])
    accuracy = results["diffusion"]["eval/accuracy"]
    print(
        f"bar: diffusion accuracy {accuracy:.1%} (goal >= 90%: {'met' if accuracy >= 0.9 else 'NOT met'}); "
        f"lowest FD: {best} (goal diffusion: {'met' if best == 'diffusion' else 'NOT met'})"
    )


if __name__ == "__main__":
    main()
