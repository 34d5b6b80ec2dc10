"""Continuous batching: every row computes what it computes alone, rows join and leave at
any step, and the engine's per-request controls (n, seed, stop, queue, cancel, limits)."""

from __future__ import annotations

import copy
import threading
import time

import pytest
import torch
from serve_helpers import trained_model

from engine.infer.generate import Generator, SamplingParams
from engine.serve import (
    Cancelled,
    CompletionParams,
    EngineStopped,
    PromptTooLong,
    QueueFull,
    ServeError,
    TextEngine,
)

PROMPTS = ["To be", "Whether 'tis nobler in", "q", "that is the question:\n", "or not"]
MAX_TOKENS = [20, 7, 30, 12, 25]


def alone(model, tokenizer, prompt: str, max_tokens: int, **sampling) -> list[int]:
    params = SamplingParams(
        max_new_tokens=max_tokens, stop_at_eot=False, **{"temperature": 0.0, **sampling}
    )
    return Generator(model, tokenizer).generate(prompt, params).generations[0].token_ids


def greedy(max_tokens: int, **changes) -> CompletionParams:
    return CompletionParams(max_tokens=max_tokens, temperature=0.0, stop_at_eot=False, **changes)


@pytest.mark.parametrize("variant", ["gpt2", "llama"])
def test_staggered_greedy_requests_equal_each_request_alone(tokenizer, variant):
    """Five prompts of different lengths arrive at different steps into a batch of three:
    some wait in the queue, rows leave at different steps and others take their slots; the
    cache is compacted on the way (headroom 16). Each answer is the same as alone."""
    model = trained_model(tokenizer, variant)
    engine = TextEngine(model, tokenizer, max_batch=3, max_queue=8, cache_headroom=16)
    engine.start(thread=False)
    requests, batch_sizes = [], []
    arrivals = {0: [0, 1], 3: [2], 5: [3], 9: [4]}  # step -> prompts arriving then
    step = 0
    while step < 200 and (len(requests) < len(PROMPTS) or not all(r.done for r in requests)):
        for i in arrivals.get(step, []):
            requests.append(engine.submit(PROMPTS[i], greedy(MAX_TOKENS[i])))
        engine.step()
        batch_sizes.append(engine.load["running"])
        step += 1
    assert max(batch_sizes) == 3 and min(batch_sizes[:20]) < 3  # rows joined and left
    assert engine.stats["prefills"] >= 4  # joins happened at several steps
    assert engine._cache.compactions >= 2  # the timeline was moved back under running rows
    for i, request in enumerate(requests):
        result = request.result(timeout=0)
        assert result.choices[0].token_ids == alone(model, tokenizer, PROMPTS[i], MAX_TOKENS[i])
        assert result.finish_reason == "length"
        assert result.prompt_tokens == len(PROMPTS[i])
        assert result.completion_tokens == MAX_TOKENS[i]
    assert len({tuple(r.result().choices[0].token_ids) for r in requests}) == 5


def test_concurrent_clients_on_the_loop_thread_get_their_own_answers(tokenizer, model):
    results: dict[int, object] = {}
    with TextEngine(model, tokenizer, max_batch=4, max_queue=16) as engine:

        def client(i: int) -> None:
            request = engine.submit(PROMPTS[i], greedy(MAX_TOKENS[i]))
            streamed = "".join(delta.text for delta in request)
            results[i] = (streamed, request.result(timeout=30))

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    for i, (streamed, result) in results.items():
        assert result.choices[0].token_ids == alone(model, tokenizer, PROMPTS[i], MAX_TOKENS[i])
        assert streamed == result.text
        timings = result.timings
        assert 0 <= timings.queue_seconds <= timings.first_token_seconds <= timings.total_seconds
        assert timings.prefill_seconds > 0 and timings.decode_seconds > 0
    assert len(results) == len(PROMPTS)


def test_a_seeded_request_samples_the_same_alone_and_in_a_batch(tokenizer, model):
    params = CompletionParams(max_tokens=30, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    engine = TextEngine(model, tokenizer, max_batch=8).start(thread=False)
    solo = engine.submit("To be", params)
    while engine.step():
        pass
    others = [engine.submit(p, CompletionParams(max_tokens=40, temperature=1.2)) for p in PROMPTS]
    engine.step()
    engine.step()
    batched = engine.submit("To be", params)  # joins a running batch, two steps late
    while engine.step():
        pass
    assert solo.result().text == batched.result().text
    assert all(o.done for o in others)
    # Completion 0 of a seeded request samples as the engine's Generator does with that seed.
    reference = Generator(model, tokenizer).generate(
        "To be", SamplingParams(max_new_tokens=30, temperature=1.0, top_k=20, top_p=0.9, seed=7)
    )
    assert solo.result().text == reference.generations[0].text


def test_n_completions_of_one_prompt(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_batch=4).start(thread=False)
    request = engine.submit("To be", CompletionParams(max_tokens=24, temperature=1.5, n=3, seed=1))
    deltas = {0: "", 1: "", 2: ""}
    while engine.step():
        pass
    for delta in request:
        deltas[delta.index] += delta.text
    result = request.result()
    assert [c.index for c in result.choices] == [0, 1, 2]
    assert len({c.text for c in result.choices}) == 3  # three different samples
    assert all(deltas[c.index] == c.text for c in result.choices)
    assert result.prompt_tokens == 5
    assert result.completion_tokens == sum(len(c.token_ids) for c in result.choices)
    again = engine.submit("To be", CompletionParams(max_tokens=24, temperature=1.5, n=3, seed=1))
    while engine.step():
        pass
    assert [c.text for c in again.result().choices] == [c.text for c in result.choices]
    with pytest.raises(ServeError, match="n \\(5\\) is more than this engine's batch of 4"):
        engine.submit("To be", CompletionParams(n=5))


def test_greedy_n_rows_share_the_prompt_and_agree(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_batch=4).start(thread=False)
    request = engine.submit("or not", greedy(15, n=2))
    while engine.step():
        pass
    choices = request.result().choices
    assert choices[0].token_ids == choices[1].token_ids == alone(model, tokenizer, "or not", 15)


def test_a_stop_string_ends_the_completion_before_it(tokenizer, model):
    full = tokenizer.decode(alone(model, tokenizer, "To be", 40))
    stop = full[10:13]
    engine = TextEngine(model, tokenizer).start(thread=False)
    request = engine.submit("To be", greedy(40, stop=[stop, "zzz"]))
    other = engine.submit("Whether", greedy(40))
    while engine.step():
        pass
    result = request.result()
    assert result.finish_reason == "stop"
    assert result.text == full[: full.find(stop)] and stop not in result.text
    assert "".join(d.text for d in request) == result.text  # the held-back tail never leaks
    assert other.result().finish_reason == "length"


def test_end_of_text_is_a_stop_and_is_not_in_the_text(tokenizer):
    """A copy of the Llama-style model (untied head) whose end-of-text logit is 1.5x the
    space's: where the model would write its first space, it ends the text instead."""
    model = copy.deepcopy(trained_model(tokenizer, "llama"))
    eot, space = tokenizer.eot_id, tokenizer.encode(" ")[0]
    with torch.no_grad():
        model.lm_head.weight[eot] = 1.5 * model.lm_head.weight[space]
    engine = TextEngine(model, tokenizer).start(thread=False)
    request = engine.submit("To be", CompletionParams(max_tokens=40, temperature=0.0))
    while engine.step():
        pass
    result = request.result()
    ids = result.choices[0].token_ids
    assert ids[-1] == eot and result.finish_reason == "stop"
    assert result.text == tokenizer.decode(ids[:-1]) and "<|" not in result.text
    deltas = list(request)
    assert deltas[-1].finish_reason == "stop" and "".join(d.text for d in deltas) == result.text


def test_a_full_queue_refuses_at_once_with_a_retry_estimate(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_batch=2, max_queue=2).start(thread=False)
    engine.submit("To be", greedy(5))
    engine.submit("To be", greedy(5))
    with pytest.raises(QueueFull) as refused:
        engine.submit("To be", greedy(5))
    assert refused.value.retry_after >= 1 and refused.value.capacity == 2
    assert "queue is full (2 waiting)" in str(refused.value)
    engine.step()  # both join the batch: the queue has room again
    engine.submit("To be", greedy(5))


def test_cancelling_frees_the_row_at_the_next_step(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_batch=2, max_queue=4).start(thread=False)
    leaving = engine.submit("To be", greedy(40))
    staying = engine.submit("Whether", greedy(20))
    queued = engine.submit("q", greedy(10))
    waiting = engine.submit("or not", greedy(10))
    for _ in range(3):
        engine.step()
    assert engine.load == {"running": 2, "waiting": 2}
    leaving.cancel()
    waiting.cancel()  # still queued: dropped when its turn comes
    engine.step()
    assert engine.load["running"] == 2  # "q" took the freed row
    while engine.step():
        pass
    with pytest.raises(Cancelled):
        leaving.result(timeout=0)
    with pytest.raises(Cancelled):
        list(waiting)
    assert staying.result().choices[0].token_ids == alone(model, tokenizer, "Whether", 20)
    assert queued.result().choices[0].token_ids == alone(model, tokenizer, "q", 10)
    assert engine.load == {"running": 0, "waiting": 0}
    assert engine.health()["up"] and engine.health()["error"] is None


def test_a_prompt_too_long_for_the_context_names_the_limit(tokenizer, model):
    engine = TextEngine(model, tokenizer).start(thread=False)
    prompt = ("To be, or not to be " * 4)[:60]
    with pytest.raises(PromptTooLong, match="context is 64 tokens; the prompt has 60") as error:
        engine.submit(prompt, greedy(10))
    assert error.value.limit == 64
    with pytest.raises(ServeError, match="max_tokens \\(64\\) must be less than"):
        engine.submit("To be", greedy(64))
    request = engine.submit(prompt, greedy(10, truncate=True))
    while engine.step():
        pass
    result = request.result()
    assert result.prompt_tokens == 54 and result.truncated_tokens == 6
    one = engine.submit("To be", greedy(1))  # done at the prefill's sample: timed all the same
    engine.step()
    timings = one.result(timeout=0).timings
    assert timings.prefill_seconds > 0 and timings.first_token_seconds >= timings.prefill_seconds
    assert result.choices[0].token_ids == alone(model, tokenizer, prompt[6:], 10)


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"temperature": -1.0}, "temperature must be 0 \\(greedy\\) or between"),
        ({"top_p": 1.5}, "top_p must be between"),
        ({"top_k": 0}, "top_k must be at least 1"),
        ({"max_tokens": 0}, "max_tokens must be at least 1"),
        ({"n": 0}, "n must be an integer"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop: at most 4"),
        ({"stop": [""]}, "stop sequences must be non-empty"),
        ({"seed": "x"}, "seed must be an integer"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"stop": 5}, "stop must be a string or a list"),
        ({"top_p": float("nan")}, "top_p must be a finite number"),
        ({"max_tokens": 1.5}, "max_tokens must be an integer"),
        ({"top_k": True}, "top_k must be an integer"),
    ],
)
def test_out_of_range_parameters_are_named(changes, message):
    with pytest.raises(ServeError, match=message):
        CompletionParams(**changes)


def test_unknown_characters_and_token_ids_are_refused(tokenizer, model):
    engine = TextEngine(model, tokenizer).start(thread=False)
    with pytest.raises(ServeError, match="prompt: character 'Z'"):
        engine.submit("Zebra")
    with pytest.raises(ServeError, match="token ids must be in"):
        engine.submit([10_000])


def test_a_stopped_engine_refuses_and_fails_what_it_held(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_batch=1).start(thread=False)
    running = engine.submit("To be", greedy(10))
    queued = engine.submit("or not", greedy(10))
    engine.step()
    engine.stop()
    for request in (running, queued):
        with pytest.raises(EngineStopped, match="the engine stopped"):
            request.result(timeout=5)
    with pytest.raises(EngineStopped):
        engine.submit("To be")
    idle = TextEngine(model, tokenizer)
    with pytest.raises(EngineStopped, match="not running"):
        idle.submit("To be")


def test_a_draining_stop_finishes_what_is_in_flight_and_refuses_new_requests(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_batch=1, max_queue=4).start()
    first = engine.submit("To be", greedy(30))
    second = engine.submit("or not", greedy(30))  # waits for the one slot
    stopper = threading.Thread(target=engine.stop, kwargs={"drain": True})
    stopper.start()
    deadline = time.monotonic() + 10
    while engine.running and time.monotonic() < deadline:  # stop() has begun draining
        time.sleep(0.001)
    with pytest.raises(EngineStopped):
        engine.submit("q")
    stopper.join(30)
    assert first.result(timeout=0).completion_tokens == 30
    assert second.result(timeout=0).choices[0].token_ids == alone(model, tokenizer, "or not", 30)
    assert not engine.running


def test_a_failing_forward_fails_its_requests_and_takes_the_engine_down(tokenizer, model):
    engine = TextEngine(model, tokenizer).start()

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    engine.model = out_of_memory
    request = engine.submit("To be", greedy(5))
    with pytest.raises(EngineStopped, match="out of memory"):
        request.result(timeout=10)
    assert not engine.running
    health = engine.health()
    assert health["up"] is False and "out of memory" in health["error"]
    with pytest.raises(EngineStopped):
        engine.submit("To be")
    engine.stop()


def test_prefill_tokens_per_step_are_capped_so_running_rows_keep_moving(tokenizer, model):
    engine = TextEngine(model, tokenizer, max_prefill_tokens=8).start(thread=False)
    first = engine.submit("To be", greedy(6))  # 5 tokens
    second = engine.submit("or not", greedy(6))  # 6 more would pass the cap of 8
    engine.step()
    assert engine.load == {"running": 1, "waiting": 1}
    engine.step()
    assert engine.load == {"running": 2, "waiting": 0}
    while engine.step():
        pass
    assert first.result().choices[0].token_ids == alone(model, tokenizer, "To be", 6)
    assert second.result().choices[0].token_ids == alone(model, tokenizer, "or not", 6)


@pytest.mark.parametrize("interval, handed_over", [(0.0, 4), (60.0, 1)])
def test_deltas_reach_the_client_at_most_every_stream_interval(
    tokenizer, model, interval, handed_over
):
    """The first token goes out at once; later ones wait for the interval or the end."""
    engine = TextEngine(model, tokenizer, stream_interval=interval).start(thread=False)
    request = engine.submit("To be", greedy(12))
    for _ in range(3):  # the prefill's token and one decode step, then two more steps
        engine.step()
    assert request._events.qsize() == handed_over
    while engine.step():
        pass
    deltas = list(request)
    assert len(deltas) == 12 and deltas[-1].finish_reason == "length"
    assert "".join(d.text for d in deltas) == request.result().text


def test_an_engine_from_an_exported_model_serves_what_the_generator_gives(
    tmp_path, tokenizer, model
):
    from engine.train.export import export_model

    tokenizer.save(tmp_path / "tok.json")
    export_model(
        model, tmp_path / "model", tokenizer_file=tmp_path / "tok.json", eot_id=tokenizer.eot_id
    )
    engine = TextEngine.from_checkpoint(tmp_path / "model", max_batch=2).start(thread=False)
    request = engine.submit("To be", greedy(10))
    while engine.step():
        pass
    assert request.result().choices[0].token_ids == alone(model, tokenizer, "To be", 10)
