"""DDIM with few steps vs DDPM with all 1000: speed and Frechet distance, same trained model.

    .venv/bin/python bench/bench_vision_sampling.py                  # 10 samples per digit
    .venv/bin/python bench/bench_vision_sampling.py --quick          # 3 per digit
    .venv/bin/python bench/bench_vision_sampling.py --per-class 50   # steadier FD (slow on CPU)

Uses the diffusion run of ``python -m engine train diffusion configs/vision/diffusion.yaml``
(var/runs/vision-diffusion); if it is missing, trains a short one first (flagged). Both
samplers draw the same digits with the same guidance scale; DDPM is the reference. The
Frechet distance of as many real training digits is printed too: with few samples the
distance is dominated by its small-sample bias, which is why the default is a rough check
and the closing figures use --per-class 50. Quality bar (issue 7): DDIM with 50 steps within
10% of DDPM's Frechet distance with 1000 steps, at 20x the speed.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from engine.vision.evaluate import Evaluator, balanced_labels, sample_in_batches

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    from bench_vision import trained_recipe  # same folder: the shared get-or-train helper

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 samples per digit")
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--ddim-steps", type=int, nargs="+", default=[50, 100])
    parser.add_argument(
        "--guidance-scale", type=float, default=1.0, help="s of classifier-free guidance"
    )
    parser.add_argument("--runs-root", type=Path, default=ROOT / "var" / "runs")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    per_class = 3 if args.quick else args.per_class
    torch.set_num_threads(1)

    evaluator = Evaluator.load_or_train(args.runs_root / "vision-evaluator.pt")
    recipe, payload, note = trained_recipe("diffusion", args.runs_root, args.train_steps)
    labels = balanced_labels(per_class)
    split = evaluator.split
    real_index = torch.randperm(
        split.train_images.shape[0], generator=torch.Generator().manual_seed(args.seed)
    )[: labels.numel()]
    real_fd = evaluator.frechet_distance(split.train_images[real_index])
    scale = args.guidance_scale
    print(
        f"diffusion step {payload['step']} {note}; {labels.numel()} samples, guidance {scale}; "
        f"FD of {labels.numel()} real training digits: {real_fd:.2f}"
    )

    def run(sampler: str, steps: int | None) -> tuple[float, float, float]:
        started = time.perf_counter()
        images = sample_in_batches(
            recipe, labels, seed=args.seed, sampler=sampler, steps=steps, guidance_scale=scale
        )
        seconds = time.perf_counter() - started
        return seconds, evaluator.accuracy(images, labels), evaluator.frechet_distance(images)

    ddpm_seconds, ddpm_acc, ddpm_fd = run("ddpm", None)
    timesteps = recipe.diffusion.timesteps
    print(
        f"{'sampler':<14} {'seconds':>8} {'speed-up':>9} {'accuracy':>9} {'FD':>8} {'FD/DDPM':>8}"
    )
    print(
        f"{'DDPM ' + str(timesteps):<14} {ddpm_seconds:>8.1f} {1.0:>9.1f} {ddpm_acc:>9.1%} "
        f"{ddpm_fd:>8.2f} {1.0:>8.3f}"
    )
    for steps in args.ddim_steps:
        seconds, accuracy, fd = run("ddim", steps)
        print(
            f"{'DDIM ' + str(steps):<14} {seconds:>8.1f} {ddpm_seconds / seconds:>9.1f} "
            f"{accuracy:>9.1%} {fd:>8.2f} {fd / ddpm_fd:>8.3f}"
        )


if __name__ == "__main__":
    main()
