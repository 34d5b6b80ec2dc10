"""One request's bad sampling fails that request alone: the parameters that would make the
float32 sampler overflow are refused up front, and a sampler that fails anyway (values that
slipped past the checks, or a bug) frees only its request's rows; the others finish with
the tokens they get alone and the engine stays up."""

from __future__ import annotations

import pytest
import torch
from serve_helpers import trained_model  # noqa: F401 - the conftest's model fixture uses it

from engine.infer.generate import Generator, SamplingParams
from engine.serve import CompletionParams, RequestFailed, ServeError, TextEngine
from engine.serve.params import MIN_SAMPLING_VALUE

# Values that turn the sampler's float32 arithmetic into inf/NaN, or a seed torch refuses.
OVERFLOWING = [
    {"temperature": 1e-300},
    {"top_p": 1e-300},
    {"repetition_penalty": 1e-300},
    {"seed": 2**64},
]


def alone(model, tokenizer, prompt: str, max_tokens: int) -> list[int]:
    params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0, stop_at_eot=False)
    return Generator(model, tokenizer).generate(prompt, params).generations[0].token_ids


def greedy(max_tokens: int) -> CompletionParams:
    return CompletionParams(max_tokens=max_tokens, temperature=0.0, stop_at_eot=False)


@pytest.mark.parametrize(
    "changes",
    [
        *OVERFLOWING,
        {"temperature": 3.0},
        {"temperature": -1e-300},
        {"top_p": 0.0},
        {"repetition_penalty": 11},
        {"seed": -(2**63) - 1},
    ],
)
def test_values_the_sampler_cannot_take_are_refused_naming_the_field(changes):
    (name,) = changes
    with pytest.raises(ServeError, match=f"^{name} must be"):
        CompletionParams(**changes)


def test_the_bounds_themselves_are_accepted():
    low = MIN_SAMPLING_VALUE
    CompletionParams(temperature=low, top_p=low, repetition_penalty=low, seed=-(2**63))
    CompletionParams(temperature=2, top_p=1, repetition_penalty=10, seed=2**63 - 1)
    CompletionParams(temperature=0)


def test_submit_checks_parameters_changed_after_they_were_made(tokenizer, model):
    engine = TextEngine(model, tokenizer).start(thread=False)
    params = CompletionParams(temperature=1.0)
    params.temperature = 1e-300
    with pytest.raises(ServeError, match="^temperature must be"):
        engine.submit("To be", params)
    assert engine.load == {"running": 0, "waiting": 0}


@pytest.mark.parametrize("changes", OVERFLOWING, ids=lambda c: next(iter(c)))
def test_a_request_the_sampler_fails_on_fails_alone(tokenizer, model, monkeypatch, changes):
    """The values reach the loop (the checks are switched off): the bad request, joining a
    running batch with two completions, fails naming the cause; the others are untouched.
    multinomial never sees the bad distribution (on CUDA its check is a device-side assert
    that would take every request of the process down)."""
    multinomial = torch.multinomial

    def checked_multinomial(probs, *args, **kwargs):
        assert bool(torch.isfinite(probs).all()), "multinomial got a non-finite distribution"
        return multinomial(probs, *args, **kwargs)

    monkeypatch.setattr(torch, "multinomial", checked_multinomial)
    engine = TextEngine(model, tokenizer, max_batch=8).start(thread=False)
    first = engine.submit("To be", greedy(20))
    engine.step()
    engine.step()
    with monkeypatch.context() as unchecked:
        unchecked.setattr(CompletionParams, "validate", lambda self: None)
        sampled = {"max_tokens": 20, "temperature": 1.0, "n": 2, **changes}
        bad = engine.submit("or not", CompletionParams(**sampled))
    second = engine.submit("q", greedy(12))
    while engine.step():
        pass
    cause = "Overflow" if "seed" in changes else "the next-token distribution is not finite"
    with pytest.raises(RequestFailed, match=f"sampling failed for this request: {cause}"):
        bad.result(timeout=0)
    with pytest.raises(RequestFailed):
        list(bad)  # its stream raises too
    assert first.result(timeout=0).choices[0].token_ids == alone(model, tokenizer, "To be", 20)
    assert second.result(timeout=0).choices[0].token_ids == alone(model, tokenizer, "q", 12)
    assert engine.running and engine.health()["up"] and engine.health()["error"] is None
    assert engine.load == {"running": 0, "waiting": 0}  # the bad request's rows were freed
    after = engine.submit("or not", greedy(9))
    while engine.step():
        pass
    assert after.result(timeout=0).choices[0].token_ids == alone(model, tokenizer, "or not", 9)


def test_a_sampler_failing_mid_decode_frees_every_row_of_its_request(tokenizer, model, monkeypatch):
    """Completion 1 of a sampled request fails at its fourth token, on the loop thread:
    the request's stream ends in RequestFailed after what it had streamed, both its rows
    leave, and the greedy requests sharing the batch finish as they would alone."""
    sample_row = TextEngine._sample_row
    calls = {"row": 0}

    def failing(logits, slot):
        if slot.request.params.seed == 99 and slot.row.index == 1:
            calls["row"] += 1
            if calls["row"] == 4:
                raise RuntimeError("simulated sampler failure")
        return sample_row(logits, slot)

    monkeypatch.setattr(TextEngine, "_sample_row", staticmethod(failing))
    with TextEngine(model, tokenizer, max_batch=8, stream_interval=0) as engine:
        first = engine.submit("To be", greedy(30))
        bad = engine.submit(
            "or not", CompletionParams(max_tokens=30, temperature=1.0, n=2, seed=99)
        )
        second = engine.submit("q", greedy(25))
        streamed = []
        with pytest.raises(RequestFailed, match="simulated sampler failure"):
            for delta in bad:
                streamed.append(delta)
        assert {d.index for d in streamed} <= {0, 1} and len(streamed) >= 3
        assert first.result(timeout=30).choices[0].token_ids == alone(model, tokenizer, "To be", 30)
        assert second.result(timeout=30).choices[0].token_ids == alone(model, tokenizer, "q", 25)
        assert engine.running and engine.health()["up"]
        assert engine.load["running"] == 0
        assert engine.complete("To be", greedy(5)).choices[0].token_ids == alone(
            model, tokenizer, "To be", 5
        )
