"""Generation: the KV cache changes nothing but speed; batching, sampling, stops and streaming."""

from __future__ import annotations

import pytest

from engine.data.tokenizers import CharTokenizer
from engine.infer.generate import Generator, SamplingError, SamplingParams
from engine.models.gpt import GPT
from tests.enginemodels import SPEECH, trained_gpt

TEXT = SPEECH


@pytest.fixture(scope="module")
def tokenizer() -> CharTokenizer:
    return CharTokenizer.train(TEXT)


def _model(tokenizer, variant: str = "gpt2") -> GPT:
    """Trained for a moment on TEXT (block size 96): see `tests.enginemodels.trained_gpt`."""
    return trained_gpt(tokenizer, variant, block_size=96)


PROMPTS = ["To be", "Whether 'tis nobler in", "q"]


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_greedy_with_cache_equals_greedy_without(tokenizer, variant):
    generator = Generator(_model(tokenizer, variant), tokenizer)
    params = SamplingParams(max_new_tokens=40, temperature=0.0, stop_at_eot=False)
    cached = generator.generate(PROMPTS, params)
    recomputed = generator.generate(PROMPTS, params, use_cache=False)
    for a, b in zip(cached.generations, recomputed.generations, strict=True):
        assert a.token_ids == b.token_ids
        assert len(a.token_ids) == 40
    assert len({tuple(g.token_ids) for g in cached.generations}) == 3  # not a degenerate model


def test_a_batch_of_different_lengths_equals_each_prompt_alone(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    params = SamplingParams(max_new_tokens=25, temperature=0.0, stop_at_eot=False)
    batched = generator.generate(PROMPTS, params)
    for prompt, generation in zip(PROMPTS, batched.generations, strict=True):
        assert generator.generate(prompt, params).generations[0].token_ids == generation.token_ids
        assert generation.prompt_tokens == len(prompt)
    assert batched.completion_tokens == 75 and batched.tokens_per_second > 0


def test_a_seed_makes_sampling_repeatable(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    params = SamplingParams(
        max_new_tokens=30,
        temperature=1.0,
        top_k=10,
        top_p=0.9,
        seed=5,
        repetition_penalty=1.3,
        stop_at_eot=False,
    )
    first = generator.generate(PROMPTS, params)
    again = generator.generate(PROMPTS, params)
    other = generator.generate(PROMPTS, SamplingParams(**{**params.__dict__, "seed": 6}))
    assert [g.token_ids for g in first.generations] == [g.token_ids for g in again.generations]
    assert [g.token_ids for g in first.generations] != [g.token_ids for g in other.generations]


def test_repetition_penalty_discourages_repeats(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    plain = SamplingParams(max_new_tokens=40, temperature=0.0, stop_at_eot=False)
    penalised = SamplingParams(
        max_new_tokens=40, temperature=0.0, stop_at_eot=False, repetition_penalty=5.0
    )
    distinct = len(set(generator.generate("To be", plain).generations[0].token_ids))
    distinct_penalised = len(set(generator.generate("To be", penalised).generations[0].token_ids))
    assert distinct_penalised > distinct


def test_top_k_1_is_greedy(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    greedy = generator.generate("To", SamplingParams(max_new_tokens=20, temperature=0.0))
    top1 = generator.generate(
        "To", SamplingParams(max_new_tokens=20, temperature=1.5, top_k=1, seed=1)
    )
    assert greedy.generations[0].token_ids == top1.generations[0].token_ids


def test_a_stop_sequence_ends_the_completion_before_it(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    free = generator.generate(
        "To be", SamplingParams(max_new_tokens=40, temperature=0.0, stop_at_eot=False)
    )
    text = free.generations[0].text
    stop = text[10:12]
    stopped = generator.generate(
        "To be", SamplingParams(max_new_tokens=40, temperature=0.0, stop=[stop])
    )
    generation = stopped.generations[0]
    assert generation.finish_reason == "stop"
    assert generation.text == text[: text.find(stop)]
    assert stop not in generation.text


def test_streaming_yields_the_same_text_token_by_token(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    params = SamplingParams(
        max_new_tokens=30, temperature=0.7, seed=2, stop=["the"], stop_at_eot=False
    )
    expected = generator.generate("To be", params).generations[0]
    events = list(generator.stream("To be", params))
    assert "".join(e.text for e in events) == expected.text
    assert [e.token_id for e in events] == expected.token_ids
    assert events[-1].finished and not any(e.finished for e in events[:-1])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"temperature": -0.5}, "temperature must be in"),
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"repetition_penalty": 0.0}, "repetition_penalty must be in"),
        ({"max_new_tokens": 0}, "max_new_tokens must be at least 1"),
        ({"stop": [""]}, "stop sequences must be non-empty"),
    ],
)
def test_out_of_range_sampling_parameters_are_named(changes, message):
    with pytest.raises(SamplingError, match=message):
        SamplingParams(**changes)


def test_a_prompt_longer_than_the_context_is_refused(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    with pytest.raises(SamplingError, match="longer than the model's context of 96 tokens"):
        generator.generate("To be " * 17, SamplingParams(max_new_tokens=20))


def test_completions_run_past_the_context_on_the_last_block_of_tokens(tokenizer):
    generator = Generator(_model(tokenizer), tokenizer)
    params = SamplingParams(max_new_tokens=120, temperature=0.0, stop_at_eot=False)
    cached = generator.generate(PROMPTS, params)  # 22 + 120 tokens > the context of 96
    recomputed = generator.generate(PROMPTS, params, use_cache=False)
    for a, b in zip(cached.generations, recomputed.generations, strict=True):
        assert len(a.token_ids) == 120
        assert a.token_ids == b.token_ids


def test_a_tokenizer_larger_than_the_model_vocabulary_is_refused(tokenizer):
    bigger = CharTokenizer.train(TEXT + "XYZ#")
    with pytest.raises(SamplingError, match="do not belong together"):
        Generator(_model(tokenizer), bigger)
