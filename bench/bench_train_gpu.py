"""GPU training throughput and MFU: GPT-2 124M, bf16 autocast, torch.compile, block 1024.

    make bench-gpu                                            # this, FSDP2, the gpu tests
    .venv/bin/python bench/bench_train_gpu.py                 # needs CUDA; prints "skipped" without
    .venv/bin/python bench/bench_train_gpu.py --quick         # fewer steps
    .venv/bin/python bench/bench_train_gpu.py --fsdp          # FSDP2 on every GPU (torchrun)
    .venv/bin/python bench/bench_train_gpu.py --tiny --device cpu   # the same code path, tiny, on CPU

Runs the real :class:`engine.train.trainer.Trainer` on token shards of random ids (the data
does not change the speed), micro-batch 16 x 1024 tokens, fused AdamW, and reports tokens/s
and MFU (6N + 12LHQT FLOPs per token against the device's dense bf16 peak). Goal on an
H100/H200: 45 % MFU or more. Before training it checks what the figure depends on and
says so: the optimizer is the fused AdamW, and SDPA's FlashAttention kernel runs at the
model's shapes (else attention falls back to a slower kernel silently). With ``--fsdp``
it runs itself under torchrun with one process per GPU and the model sharded (FSDP2);
tokens/s is then the whole machine's, MFU per GPU. The last line is the result as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.shards import ShardWriter  # noqa: E402
from engine.loop.callbacks import Callback  # noqa: E402
from engine.train.config import config_from_dict  # noqa: E402
from engine.train.trainer import Trainer  # noqa: E402


class Records(Callback):
    def __init__(self) -> None:
        self.records: list[dict] = []

    def on_metrics(self, step, metrics):
        if "train/tokens_per_second" in metrics:
            self.records.append({"step": step, **metrics})


def random_shards(folder: Path, vocab: int, tokens: int) -> Path:
    rng = np.random.default_rng(0)
    with ShardWriter(folder, vocab_size=vocab, eot_id=0) as writer:
        writer.add(rng.integers(1, vocab, size=tokens), split="train")
        writer.add(rng.integers(1, vocab, size=tokens // 10), split="val")
    return folder


def flash_attention_runs(head_dim: int, block: int) -> str:
    """ "yes", or why SDPA's FlashAttention kernel does not run at the model's shapes."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 12, block, head_dim, device="cuda", dtype=torch.bfloat16)
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError as error:
        return f"no ({str(error).splitlines()[0]})"
    return "yes"


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_on_every_gpu(argv: list[str]) -> int:
    """This script again, one process per GPU, under torchrun (FSDP2)."""
    gpus = torch.cuda.device_count()
    if gpus < 2:
        print(f"bench_train_gpu --fsdp: {gpus} GPU here; FSDP2 needs 2 or more, skipped")
        return 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node", str(gpus), __file__, *argv]
    return subprocess.call(command)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--tiny", action="store_true", help="a 2-layer model (to check the code path)"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--fsdp", action="store_true", help="FSDP2 on every GPU (torchrun)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        print("bench_train_gpu: no CUDA device here; skipped")
        return 0
    if args.fsdp and not under_torchrun():
        return relaunch_on_every_gpu(sys.argv[1:])
    main_rank = int(os.environ.get("RANK", "0")) == 0
    model = {
        "vocab_size": 50304,
        "block_size": 1024,
        "n_layer": 12,
        "n_head": 12,
        "n_embd": 768,
        "dropout": 0.0,
        "bias": False,
    }
    if args.tiny:
        model.update(block_size=128, n_layer=2, n_head=2, n_embd=64)
    steps, warmup, log_every = (30, 10, 5) if args.quick else (60, 20, 10)
    with tempfile.TemporaryDirectory() as tmp:
        data = random_shards(
            Path(tmp) / "data", model["vocab_size"], 5_000_000 if not args.tiny else 200_000
        )
        config = config_from_dict(
            {
                "run_dir": str(Path(tmp) / "run"),
                "model": model,
                "data": {"path": str(data)},
                "optim": {"lr": 6e-4, "min_lr": 6e-5, "warmup_iters": 5},
                "train": {
                    "max_iters": steps,
                    "batch_size": args.batch_size,
                    "eval_interval": 0,
                    "eval_iters": 1,
                    "log_interval": log_every,
                    "device": args.device,
                    "compile": not args.no_compile and args.device == "cuda",
                    "parallel": "fsdp" if args.fsdp else "auto",
                    "progress": False,
                },
                "checkpoint": {"interval": 0, "keep_last": 1},
            }
        )
        records = Records()
        trainer = Trainer(config, callbacks=[records], default_callbacks=False)
        fused = bool(trainer.optimizer.param_groups[0].get("fused"))
        flash = (
            flash_attention_runs(model["n_embd"] // model["n_head"], model["block_size"])
            if args.device == "cuda"
            else "n/a (cpu)"
        )
        if main_rank:
            print(f"fused AdamW: {'yes' if fused else 'no'}; FlashAttention through SDPA: {flash}")
        trainer.fit()
    if not main_rank:
        return 0
    measured = [r for r in records.records if r["step"] > warmup]
    tokens_per_second = float(np.median([r["train/tokens_per_second"] for r in measured]))
    mfus = [r["train/mfu"] for r in measured if "train/mfu" in r]
    device = torch.cuda.get_device_name() if args.device == "cuda" else args.device
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(
        f"{trainer.model.num_params() / 1e6:.0f}M params, {config.model.block_size} block, micro-batch "
        f"{args.batch_size}, {trainer.dtype}, compile={config.train.compile}, "
        f"{'FSDP2 on ' + str(world) + ' GPUs' if args.fsdp else '1 process'}, on {device}"
    )
    print(f"tokens/s: {tokens_per_second:,.0f} (median of steps {warmup + 1}-{steps})")
    mfu = 100 * float(np.median(mfus)) if mfus else None
    if mfu is not None:
        print(f"MFU: {mfu:.1f}% (goal >= 45% on an H100/H200)")
    else:
        print("MFU: unknown peak for this device")
    result = {
        "device": device,
        "processes": world,
        "parallel": "fsdp" if args.fsdp else "none",
        "params_m": round(trainer.model.num_params() / 1e6, 1),
        "micro_batch": args.batch_size,
        "compile": config.train.compile,
        "fused_adamw": fused,
        "flash_attention": flash,
        "tokens_per_second": round(tokens_per_second),
        "mfu_percent": None if mfu is None else round(mfu, 1),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
