"""Generation on a CUDA device: the same greedy text as on the CPU, the KV cache exact.

Marked `gpu` and skipped without CUDA (`make bench-gpu` runs them on a GPU machine).
"""

from __future__ import annotations

import copy

import pytest
import torch

from engine.data.tokenizers import CharTokenizer
from engine.infer.generate import Generator, SamplingParams
from tests.enginemodels import SPEECH, trained_gpt

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PROMPTS = ["To be", "Whether 'tis nobler in", "q"]


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_greedy_generation_on_cuda_matches_the_cpu(variant):
    tokenizer = CharTokenizer.train(SPEECH)
    model = trained_gpt(tokenizer, variant, block_size=96)
    params = SamplingParams(max_new_tokens=40, temperature=0.0, stop_at_eot=False)
    on_cpu = Generator(model, tokenizer).generate(PROMPTS, params)

    generator = Generator(copy.deepcopy(model).cuda(), tokenizer)
    assert generator.device.type == "cuda"
    cached = generator.generate(PROMPTS, params)
    recomputed = generator.generate(PROMPTS, params, use_cache=False)

    for cpu, gpu, again in zip(
        on_cpu.generations, cached.generations, recomputed.generations, strict=True
    ):
        assert gpu.token_ids == again.token_ids  # the cache changes nothing on cuda either
        assert gpu.token_ids == cpu.token_ids  # the trained model's margins are clear


def test_seeded_sampling_on_cuda_repeats():
    tokenizer = CharTokenizer.train(SPEECH)
    generator = Generator(copy.deepcopy(trained_gpt(tokenizer, block_size=96)).cuda(), tokenizer)
    params = SamplingParams(max_new_tokens=30, temperature=0.9, top_p=0.9, seed=11)
    first = generator.generate(PROMPTS, params)
    second = generator.generate(PROMPTS, params)
    assert [g.token_ids for g in first.generations] == [g.token_ids for g in second.generations]
