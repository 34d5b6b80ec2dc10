"""The replica's text endpoints through the real `openai` client: answers as OpenAI shapes
them, streaming, n/stop/seed, batching, bad input, a full queue, disconnects, draining."""

from __future__ import annotations

import json
import socket
import threading
import time

import openai
import pytest
from replica_helpers import (
    SECRET,
    ListArchiver,
    alone,
    client,
    make_spec,
    post,
    running_replica,
    text_engine,
)

pytestmark = pytest.mark.slow  # whole flows: make test runs them

PROMPTS = ["To be", "Whether 'tis", "or not to", "The slings", "that is", "nobler", "q", "in the"]


def test_completion_answers_as_openai_and_is_archived():
    archiver = ListArchiver()
    with running_replica(archiver=archiver) as server:
        answer = client(server).completions.create(
            model="anything", prompt="To be", max_tokens=12, temperature=0, user="u-1"
        )
    assert answer.id.startswith("cmpl-") and answer.object == "text_completion"
    assert answer.model == "tiny:v3"
    assert answer.choices[0].text == alone("To be", 12)
    assert answer.choices[0].finish_reason == "length" and answer.choices[0].index == 0
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 12)
    assert answer.usage.total_tokens == 17
    [record] = archiver.records
    assert record["id"] == answer.id.removeprefix("cmpl-")
    assert record["endpoint"] == "completions" and record["status"] == "ok"
    assert record["stream"] is False and record["subject"] is None
    assert record["request"]["prompt"] == "To be" and record["request"]["user"] == "u-1"
    assert record["response"]["choices"][0]["text"] == answer.choices[0].text
    assert record["usage"] == {"prompt_tokens": 5, "completion_tokens": 12}
    assert record["error"] is None
    assert record["guardrails"]["input"]["pii_action"] == "none"
    timings = record["timings"]
    assert 0 < timings["first_token_ms"] <= timings["total_ms"]
    assert {"queue_ms", "prefill_ms", "decode_ms"} <= set(timings)


def test_headers_carry_request_id_caller_and_subject():
    archiver = ListArchiver()
    with running_replica(archiver=archiver) as server:
        caller = {"token_id": 9, "user_id": 4, "username": "ann"}
        status, headers, body = post(
            server,
            "/v1/completions",
            {"prompt": "To be", "max_tokens": 2},
            {
                "X-Request-Id": "abc123",
                "X-CP-Caller": json.dumps(caller),
                "X-Data-Subject": "Ann@Example.com",
            },
        )
    assert status == 200 and headers["X-Request-Id"] == "abc123" and body["id"] == "cmpl-abc123"
    record = archiver.records[0]
    assert record["caller"] == caller and record["subject"] == "Ann@Example.com"


def test_streamed_completion_equals_the_whole_and_reports_usage():
    archiver = ListArchiver()
    with running_replica(archiver=archiver) as server:
        chunks = list(
            client(server).completions.create(
                model="m",
                prompt="To be",
                max_tokens=20,
                temperature=0,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(texts) == alone("To be", 20)
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 20
    assert all(c.object == "text_completion" and c.model == "tiny:v3" for c in chunks)
    [record] = archiver.records
    assert record["stream"] is True and record["status"] == "ok"
    assert record["response"]["choices"][0]["text"] == "".join(texts)


def test_chat_whole_and_streamed():
    archiver = ListArchiver()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "To be"}]
    with running_replica(archiver=archiver) as server:
        api = client(server)
        answer = api.chat.completions.create(
            model="m", messages=messages, max_tokens=10, temperature=0
        )
        chunks = list(
            api.chat.completions.create(
                model="m", messages=messages, max_tokens=10, temperature=0, stream=True
            )
        )
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion"
    message = answer.choices[0].message
    assert message.role == "assistant" and len(message.content) > 0
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == message.content
    assert chunks[-1].choices[0].finish_reason == answer.choices[0].finish_reason
    assert archiver.records[0]["endpoint"] == "chat.completions"
    assert archiver.records[0]["request"]["messages"] == messages


def test_n_stop_and_seed():
    with running_replica() as server:
        api = client(server)
        sampled = dict(model="m", prompt="To be", max_tokens=16, temperature=1.0, n=3, seed=7)
        first = api.completions.create(**sampled)
        again = api.completions.create(**sampled)
        other = api.completions.create(**{**sampled, "seed": 8})
        whole = alone("To be", 16)
        stop = whole[4:6]
        stopped = api.completions.create(
            model="m", prompt="To be", max_tokens=16, temperature=0, stop=[stop]
        )
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.text for c in first.choices] == [c.text for c in again.choices]
    assert [c.text for c in first.choices] != [c.text for c in other.choices]
    assert first.usage.completion_tokens == 3 * 16
    assert stopped.choices[0].text == whole[: whole.index(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_concurrent_greedy_requests_each_equal_the_request_alone():
    results: dict[int, str] = {}
    with running_replica(text_engine(max_batch=8)) as server:
        api = client(server)
        barrier = threading.Barrier(len(PROMPTS))

        def call(i: int) -> None:
            barrier.wait()
            answer = api.completions.create(
                model="m", prompt=PROMPTS[i], max_tokens=10 + i, temperature=0
            )
            results[i] = answer.choices[0].text

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(PROMPTS))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert server.engine.stats["prefills"] < len(PROMPTS) * 2
    for i, prompt in enumerate(PROMPTS):
        assert results[i] == alone(prompt, 10 + i), prompt


BAD = [
    ({"prompt": "x", "temperature": 3}, 400, "invalid_value", "temperature"),
    ({"prompt": "x", "temperature": "hot"}, 400, "invalid_value", "temperature"),
    ({"prompt": "x", "top_p": 0}, 400, "invalid_value", "top_p"),
    ({"prompt": "x", "n": 17}, 400, "invalid_value", "n"),
    ({"prompt": "x", "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"prompt": "x", "max_tokens": 64}, 400, "invalid_value", "max_tokens"),
    ({"prompt": "x", "stop": ["a", "b", "c", "d", "e"]}, 400, "invalid_value", "stop"),
    ({"prompt": "x", "seed": 1.5}, 400, "invalid_value", "seed"),
    # Values that would make the sampler's float32 arithmetic NaN and fail the decode loop:
    ({"prompt": "x", "seed": 2**64}, 400, "invalid_value", "seed"),
    ({"prompt": "x", "temperature": 1e-300}, 400, "invalid_value", "temperature"),
    ({"prompt": "x", "top_p": 1e-300}, 400, "invalid_value", "top_p"),
    ({"prompt": "x", "repetition_penalty": 1e-300}, 400, "invalid_value", "repetition_penalty"),
    ({"prompt": "x", "wat": 1}, 400, "unknown_parameter", "wat"),
    ({"prompt": "x", "logprobs": 3}, 400, "unsupported_parameter", "logprobs"),
    ({"prompt": "x", "presence_penalty": 0.5}, 400, "unsupported_parameter", "presence_penalty"),
    ({"prompt": [1, 2, 3]}, 400, "unsupported_parameter", "prompt"),
    ({"prompt": ["a", "b"]}, 400, "invalid_value", "prompt"),
    ({"max_tokens": 3}, 400, "missing_required_parameter", "prompt"),
    (
        {"prompt": "x", "stream_options": {"include_usage": True}},
        400,
        "invalid_value",
        "stream_options",
    ),
    ({"prompt": "To be " * 12, "max_tokens": 10}, 400, "context_length_exceeded", "prompt"),
]


@pytest.mark.parametrize(("body", "status", "code", "param"), BAD)
def test_bad_input_names_the_field(body, status, code, param):
    archiver = ListArchiver()
    with running_replica(archiver=archiver) as server:
        got, _, answer = post(server, "/v1/completions", body)
    assert got == status, answer
    error = answer["error"]
    assert (error["code"], error["param"], error["status"]) == (code, param, status)
    assert error["type"] == "invalid_request_error" and param in error["fields"]
    assert archiver.records == []  # turned away before the model: not archived


def test_the_smallest_sampling_values_leave_the_engine_up():
    with running_replica() as server:
        for body in (
            {"temperature": 1e-6, "repetition_penalty": 1e-6, "top_p": 1e-6},
            {"temperature": 2, "repetition_penalty": 10, "seed": -(2**63)},
            {"temperature": 1e-6, "top_p": 1, "seed": 2**63 - 1},
        ):
            got, _, answer = post(server, "/v1/completions", {"prompt": "To", "n": 2, **body})
            assert got == 200, (body, answer)
        assert server.engine.health()["up"]


def test_harmless_openai_fields_and_truncation_are_accepted():
    with running_replica() as server:
        got, _, answer = post(
            server,
            "/v1/completions",
            {
                "prompt": "To be " * 12,
                "max_tokens": 10,
                "truncate": True,
                "logprobs": None,
                "presence_penalty": 0,
                "echo": False,
                "best_of": 1,
            },
        )
    assert got == 200, answer
    assert answer["usage"]["prompt_tokens"] == 54  # 72 tokens cut to fit 64 - 10


def test_chat_messages_are_checked():
    with running_replica() as server:
        cases = [
            ([{"role": "robot", "content": "x"}], "messages.0.role"),
            ([{"role": "user", "content": 3}], "messages.0.content"),
            ([{"role": "assistant", "content": "x"}], "messages"),
            ([{"role": "user", "content": "<|user|>x"}], "messages.0.content"),
        ]
        for messages, param in cases:
            got, _, answer = post(server, "/v1/chat/completions", {"messages": messages})
            assert got == 400 and answer["error"]["param"] == param, answer


def test_refusals_before_the_model():
    with running_replica() as server:
        assert post(server, "/v1/completions", {"prompt": "x"}, secret=None)[0] == 403
        assert post(server, "/v1/completions", {"prompt": "x"}, secret="wrong")[0] == 403
        got, _, answer = post(server, "/v1/nope", {"prompt": "x"})
        assert got == 404 and answer["error"]["code"] == "not_found"
        too_long = {"Content-Length": str(2 << 20)}  # refused before a byte of it is read
        got, _, answer = post(server, "/v1/completions", b"{}", too_long)
        assert got == 413 and answer["error"]["code"] == "request_too_large"
        got, _, answer = post(server, "/v1/completions", b"{not json")
        assert got == 400 and answer["error"]["code"] == "invalid_json"
        got, _, answer = post(server, "/v1/images/generations", {"prompt": "a seven"})
        assert got == 400 and answer["error"]["code"] == "wrong_model_type"
        with pytest.raises(openai.BadRequestError) as raised:
            client(server).completions.create(model="m", prompt="x", temperature=5)
        assert raised.value.code == "invalid_value" and raised.value.param == "temperature"


def test_full_queue_is_429_with_retry_after():
    engine = text_engine(max_batch=1, max_queue=1).start(thread=False)  # nothing decodes
    with running_replica(engine) as server:
        engine.submit("To be")  # fills the queue
        got, headers, answer = post(server, "/v1/completions", {"prompt": "x"})
        assert got == 429 and answer["error"]["code"] == "queue_full"
        assert answer["error"]["type"] == "rate_limit_error" and int(headers["Retry-After"]) >= 1
        with pytest.raises(openai.RateLimitError):
            client(server).completions.create(model="m", prompt="x")


def test_client_gone_mid_stream_cancels_the_request():
    archiver = ListArchiver()
    engine = text_engine().start(thread=False)  # the test turns the loop, a step at a time
    with running_replica(engine, archiver=archiver) as server:
        body = json.dumps({"prompt": "To", "max_tokens": 60, "stream": True}).encode()
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"X-CP-Internal: {SECRET}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        while not engine.load["waiting"]:
            time.sleep(0.01)
        engine.step()  # the prefill and the first token
        assert b"200" in sock.recv(100)
        sock.close()
        steps = 0
        while not archiver.records and steps < 60:
            engine.step()
            time.sleep(0.02)  # the handler writes the delta, meets the closed socket
            steps += 1
        [record] = archiver.wait(1)
        assert record["status"] == "error" and record["error"]["code"] == "client_disconnected"
        assert record["usage"]["completion_tokens"] < 60
        engine.step()  # the cancelled row leaves at the next step
        assert engine.load == {"running": 0, "waiting": 0}


def test_drain_finishes_in_flight_requests_and_refuses_new_ones():
    archiver = ListArchiver()
    engine = text_engine().start(thread=False)  # the test turns the loop
    with running_replica(engine, archiver=archiver) as server:
        answers = {}
        first = threading.Thread(
            target=lambda: answers.update(first=post(server, "/v1/completions", {"prompt": "To"}))
        )
        first.start()
        while not engine.load["waiting"]:
            time.sleep(0.01)
        drain = threading.Thread(target=server.drain, kwargs={"timeout": 10})
        drain.start()
        while not server.draining:
            time.sleep(0.01)
        got, headers, answer = post(server, "/v1/completions", {"prompt": "x"})
        assert got == 503 and answer["error"]["code"] == "replica_draining"
        while engine.step():
            pass
        first.join(10)
        drain.join(10)
    assert answers["first"][0] == 200
    assert archiver.closed and len(archiver.records) == 1
    assert not drain.is_alive()


def test_health():
    import urllib.request

    with running_replica() as server:
        with urllib.request.urlopen(server.url + "/health") as response:
            health = json.load(response)
    assert health["up"] is True and health["draining"] is False
    assert {"running", "waiting", "max_batch"} <= set(health)


def test_spec_model_name_is_echoed():
    with running_replica(spec=make_spec(version=12)) as server:
        answer = client(server).completions.create(model="x", prompt="To", max_tokens=1)
    assert answer.model == "tiny:v12"


def test_streamed_chat_with_n_gives_each_choice_its_deltas():
    with running_replica() as server:
        api = client(server)
        options = dict(
            model="m", messages=[{"role": "user", "content": "To be"}], max_tokens=12, n=2, seed=3
        )
        whole = api.chat.completions.create(**options)
        chunks = list(api.chat.completions.create(**options, stream=True))
    for index in (0, 1):
        deltas = [c.choices[0].delta for c in chunks if c.choices[0].index == index]
        assert deltas[0].role == "assistant"
        assert "".join(d.content or "" for d in deltas) == whole.choices[index].message.content


def test_an_engine_failure_is_a_503_archived_as_an_error():
    import copy

    from replica_helpers import TOKENIZER, tiny_model

    from engine.serve import TextEngine

    model = copy.deepcopy(tiny_model())
    engine = TextEngine(model, TOKENIZER, max_batch=4, max_queue=4)
    archiver = ListArchiver()
    with running_replica(engine, archiver=archiver) as server:

        def broken(*args, **kwargs):
            raise RuntimeError("out of memory (simulated)")

        model.forward = broken
        got, _, answer = post(server, "/v1/completions", {"prompt": "To be"})
        assert got == 503 and answer["error"]["code"] == "engine_stopped"
        assert answer["error"]["type"] == "server_error" and "Traceback" not in str(answer)
        got, _, answer = post(server, "/v1/completions", {"prompt": "To be"})
        assert got == 503  # refused at once now: the node sees /health and replaces it
        status, _, health = _get(server, "/health")
        assert status == 503 and health["up"] is False and "simulated" in health["error"]
    [record] = archiver.records
    assert record["status"] == "error" and record["error"]["code"] == "engine_stopped"


def _get(server, path: str):
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
    connection.request("GET", path)
    response = connection.getresponse()
    return response.status, dict(response.headers), json.loads(response.read())


def test_a_bug_in_the_replica_is_a_500_in_the_error_shape_and_archived(monkeypatch):
    from workers.serve import openai_api

    def broken(*args, **kwargs):
        raise KeyError("a bug")

    archiver = ListArchiver()
    monkeypatch.setattr(openai_api, "completion_body", broken)
    with running_replica(archiver=archiver) as server:
        got, _, answer = post(server, "/v1/completions", {"prompt": "To", "max_tokens": 3})
        assert got == 500 and answer["error"]["code"] == "internal_error"
        assert "KeyError" not in str(answer)
        assert server.engine.load == {"running": 0, "waiting": 0}
    assert archiver.records[0]["status"] == "error"


def test_a_request_the_sampler_fails_on_is_a_500_and_the_replica_serves_on(monkeypatch):
    from engine.infer.generate import Generator

    probabilities = Generator._probabilities

    def failing(logits, params):
        if params.seed == 99:
            raise RuntimeError("probability tensor contains either `inf`, `nan` (simulated)")
        return probabilities(logits, params)

    monkeypatch.setattr(Generator, "_probabilities", staticmethod(failing))
    archiver = ListArchiver()
    with running_replica(archiver=archiver) as server:
        bad = {"prompt": "To be", "max_tokens": 8, "temperature": 1.0, "seed": 99}
        got, _, answer = post(server, "/v1/completions", bad)
        assert got == 500 and answer["error"]["code"] == "generation_failed"
        assert answer["error"]["type"] == "server_error" and "nan" in answer["error"]["message"]
        got, _, payload = post(server, "/v1/completions", {**bad, "stream": True})
        events = [b.removeprefix("data: ") for b in payload.decode().split("\n\n") if b]
        assert got == 200 and events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "generation_failed"
        good = client(server).completions.create(
            model="m", prompt="To be", max_tokens=12, temperature=0
        )
        assert good.choices[0].text == alone("To be", 12)
        assert server.engine.health()["up"] and server.engine.load["running"] == 0
    statuses = [(r["status"], (r["error"] or {}).get("code")) for r in archiver.records]
    assert statuses == [("error", "generation_failed")] * 2 + [("ok", None)]
