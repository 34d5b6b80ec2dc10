"""CPU training throughput of the nanoGPT shakespeare-char recipe, ours vs a plain reference loop.

    .venv/bin/python bench/bench_train.py            # 200 measured iterations each, in lockstep
    .venv/bin/python bench/bench_train.py --quick    # fewer iterations
    .venv/bin/python bench/bench_train.py --full     # also 2000 iterations each: validation loss

Recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12, AdamW lr 1e-3, beta2 0.99,
grad clip 1, fp32 on CPU (nanoGPT README's CPU command). "ours" is the real
:class:`engine.train.trainer.Trainer` fed by the token shards; "reference" is the
straightforward nanoGPT-style model and loop written out below (random windows from a
memory-mapped token array, ``torch.randint``, AdamW, clip, step). Both run in this process
on the same data, one step each in turn, so that other load on the machine hits both alike.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.shards import load_manifest  # noqa: E402
from engine.train.config import load_config  # noqa: E402
from engine.train.recipes import prepare_shakespeare_char  # noqa: E402
from engine.train.trainer import Trainer  # noqa: E402

DATA = ROOT / "var" / "data" / "shakespeare-char"
CONFIG = ROOT / "configs" / "shakespeare_char.yaml"
WARMUP = 10


# -- the reference: nanoGPT's model.py and train.py, reduced to what the recipe uses ---------
class RefAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=False)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class RefBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=False)
        self.attn = RefAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd, bias=False)
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=False)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=False)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.c_proj(F.gelu(self.c_fc(self.ln_2(x))))


class RefGPT(nn.Module):
    def __init__(self, vocab: int, block: int, n_layer: int, n_head: int, n_embd: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, n_embd)
        self.wpe = nn.Embedding(block, n_embd)
        self.h = nn.ModuleList(RefBlock(n_embd, n_head) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(n_embd, bias=False)
        self.lm_head = nn.Linear(n_embd, vocab, bias=False)
        self.lm_head.weight = self.wte.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for name, param in self.named_parameters():
            if name.endswith("c_proj.weight"):  # nanoGPT's scaled residual init
                nn.init.normal_(param, std=0.02 / math.sqrt(2 * n_layer))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


class RefRun:
    """nanoGPT's train.py loop on CPU: get_batch, forward, backward, clip, AdamW with warmup+cosine."""

    def __init__(self, config, vocab: int):
        torch.manual_seed(config.seed)
        m, o = config.model, config.optim
        self.config = config
        self.model = RefGPT(vocab, m.block_size, m.n_layer, m.n_head, m.n_embd)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        rest = [p for p in self.model.parameters() if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": o.weight_decay},
                {"params": rest, "weight_decay": 0.0},
            ],
            lr=o.lr,
            betas=(o.beta1, o.beta2),
        )
        self.train = np.memmap(DATA / "train_00000.bin", dtype=np.uint16, mode="r")
        self.val = np.memmap(DATA / "val_00000.bin", dtype=np.uint16, mode="r")
        self.step = 0

    def get_batch(self, data):
        block, batch = self.config.model.block_size, self.config.train.batch_size
        ix = torch.randint(len(data) - block, (batch,))
        x = torch.stack([torch.from_numpy(data[i : i + block].astype(np.int64)) for i in ix])
        y = torch.stack(
            [torch.from_numpy(data[i + 1 : i + 1 + block].astype(np.int64)) for i in ix]
        )
        return x, y

    def lr(self, it: int) -> float:
        o, warmup = self.config.optim, self.config.optim.warmup_iters
        if it < warmup:
            return o.lr * (it + 1) / (warmup + 1)
        decay = o.lr_decay_iters or self.config.train.max_iters
        if it > decay:
            return o.min_lr
        coeff = 0.5 * (1.0 + math.cos(math.pi * (it - warmup) / (decay - warmup)))
        return o.min_lr + coeff * (o.lr - o.min_lr)

    def run(self, iters: int) -> list[float]:
        """Train ``iters`` steps; return the seconds each took."""
        seconds = []
        for _ in range(iters):
            started = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = self.lr(self.step)
            x, y = self.get_batch(self.train)
            loss = self.model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            seconds.append(time.perf_counter() - started)
        return seconds

    @torch.no_grad()
    def val_loss(self, batches: int) -> float:
        """Mean loss over the validation batches the Trainer evaluates on (same windows)."""
        from engine.data.shards import TokenLoader

        cfg = self.config
        loader = TokenLoader(
            DATA,
            "val",
            batch_size=cfg.train.batch_size,
            block_size=cfg.model.block_size,
            seed=cfg.seed + 1,
        )
        self.model.eval()
        losses = []
        for _ in range(batches):
            x, y = (torch.from_numpy(a) for a in loader.next_batch())
            losses.append(self.model(x, y).item())
        self.model.train()
        return float(np.mean(losses))


# -- ours: the real Trainer, stepped in lockstep with the reference ------------------------
def recipe_config(run_dir: Path, max_iters: int, log_every: int, eval_iters: int = 20):
    """The shipped recipe config, with evaluation and checkpoints only at the end."""
    return load_config(
        CONFIG,
        [
            f"run_dir={run_dir}",
            f"data.path={DATA}",
            f"train.max_iters={max_iters}",
            f"train.log_interval={log_every}",
            "train.eval_interval=0",
            f"train.eval_iters={eval_iters}",
            "train.progress=false",
            "checkpoint.interval=0",
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="30 measured iterations instead of 100"
    )
    parser.add_argument(
        "--full", action="store_true", help="also train 2000 iterations each; compare val loss"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="torch threads (0 = torch's default)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    iters = 30 if args.quick else 200
    prepare_shakespeare_char(DATA)
    import tempfile

    tmp = Path(tempfile.mkdtemp(prefix="bench_train_"))
    vocab = load_manifest(DATA).vocab_size
    # Lockstep: one step of ours, one of the reference (order flipping every step), so a
    # burst of other load on the shared machine hits both alike; medians of step times.
    config = recipe_config(tmp / "ours", WARMUP + iters, log_every=1)
    trainer = Trainer(config, default_callbacks=False)
    trainer.model.train()
    reference = RefRun(config, vocab)
    ours: list[float] = []  # seconds per step
    ref: list[float] = []
    for i in range(WARMUP + iters):
        for which in (0, 1) if i % 2 == 0 else (1, 0):
            if which == 0:
                started = time.perf_counter()
                trainer.train_step()
                ours.append(time.perf_counter() - started)
            else:
                ref += reference.run(1)
    ours, ref = ours[WARMUP:], ref[WARMUP:]
    tokens_per_step = config.train.batch_size * config.model.block_size
    ours_tps = tokens_per_step / float(np.median(ours))
    ref_tps = tokens_per_step / float(np.median(ref))
    params = trainer.model.num_params()
    print(
        f"recipe: 4 layers, 4 heads, 128 wide, block 64, batch 12 ({params / 1e6:.2f}M params), "
        f"{torch.get_num_threads()} threads, {iters} iterations each in lockstep"
    )
    print(
        f"ours       {ours_tps:10,.0f} tokens/s median step  ({tokens_per_step / np.mean(ours):,.0f} mean)"
    )
    print(
        f"reference  {ref_tps:10,.0f} tokens/s median step  ({tokens_per_step / np.mean(ref):,.0f} mean)"
    )
    print(f"ratio ours/reference: {ours_tps / ref_tps:.2f}x")

    if args.full:
        config = recipe_config(tmp / "full", 2000, log_every=100, eval_iters=200)
        started = time.perf_counter()
        summary = Trainer(config, default_callbacks=False).fit()
        ours_seconds = time.perf_counter() - started
        reference = RefRun(config, vocab)
        ref_seconds = sum(reference.run(2000))
        ref_val = reference.val_loss(200)
        print(
            f"2000 iterations: ours val loss {summary.val_loss:.4f} in {ours_seconds:.0f} s; "
            f"reference val loss {ref_val:.4f} in {ref_seconds:.0f} s (the same 200 val batches)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
