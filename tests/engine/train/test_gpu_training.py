"""On a CUDA device: bf16 numerics, a checkpoint round trip, the compiled model.

Marked `gpu` and skipped without CUDA; `make bench-gpu` runs them on a GPU machine
(`pytest -m gpu tests/engine`), after the throughput benchmark.
"""

from __future__ import annotations

import shutil

import pytest
import torch

from engine.models.gpt import GPT, GPTConfig
from engine.train.trainer import Trainer

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
FP32 = {"device": "cuda", "dtype": "float32"}
BF16 = {"device": "cuda", "dtype": "bfloat16"}


def test_a_forward_pass_under_bf16_autocast_agrees_with_fp32():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=512, block_size=128, n_layer=4, n_head=4, n_embd=256, dropout=0)
    model = GPT(config).cuda().eval()
    ids = torch.randint(0, 512, (8, 129), device="cuda")
    with torch.no_grad():
        logits32, loss32 = model(ids[:, :-1], ids[:, 1:])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits16, loss16 = model(ids[:, :-1], ids[:, 1:])
    assert logits16.dtype == torch.bfloat16  # the matmuls really ran in bf16
    assert abs(loss16.item() - loss32.item()) < 0.01 * loss32.item()
    # bf16 keeps 8 bits of mantissa: logits agree to a few hundredths of their spread.
    spread = logits32.float().std().item()
    assert (logits16.float() - logits32).abs().mean().item() < 0.05 * spread


def test_bf16_training_tracks_fp32_and_learns(make_config):
    fp32 = dict(Trainer(make_config("fp32", train=FP32)).fit().losses)
    trainer = Trainer(make_config("bf16", train=BF16))
    assert trainer.dtype == torch.bfloat16
    bf16 = dict(trainer.fit().losses)

    assert sorted(bf16) == sorted(fp32)
    for step, loss in fp32.items():
        assert abs(bf16[step] - loss) < 0.05 * loss, step
    assert bf16[max(bf16)] < bf16[min(bf16)]


def test_a_checkpoint_written_on_cuda_resumes_there_and_loads_on_cpu(make_config, tmp_path):
    uninterrupted = dict(Trainer(make_config("full", train=FP32)).fit().losses)
    stopped_dir = tmp_path / "stopped" / "checkpoints"
    stopped_dir.mkdir(parents=True)
    shutil.copytree(tmp_path / "full" / "checkpoints" / "step_000004", stopped_dir / "step_000004")

    trainer = Trainer(make_config("stopped", train=FP32), resume=True)
    assert trainer.step == 4
    assert next(trainer.model.parameters()).device.type == "cuda"
    resumed = dict(trainer.fit().losses)
    assert sorted(resumed) == [5, 6, 7, 8]
    for step, loss in resumed.items():
        # Not bit-exact: some CUDA kernels reduce in a different order from run to run.
        assert loss == pytest.approx(uninterrupted[step], rel=1e-3), step

    on_cpu = Trainer(make_config("stopped", train={"device": "cpu"}), resume=True)
    assert on_cpu.step == 8 and next(on_cpu.model.parameters()).device.type == "cpu"


def test_the_compiled_model_trains_on_cuda(make_config):
    trainer = Trainer(make_config("compiled", train={**BF16, "compile": True}))
    losses = dict(trainer.fit().losses)
    assert len(losses) == 8 and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert losses[8] < losses[1]
