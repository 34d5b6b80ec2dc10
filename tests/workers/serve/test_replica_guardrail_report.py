"""The guardrail decisions travel with the answer as `x_guardrails` (the archive record's
`guardrails`): on a stream's last chunk before [DONE], as a top-level field of a JSON answer.
The real `openai` client still parses both and keeps the field in `model_extra`."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from replica_helpers import ListArchiver, client, make_spec, post, running_replica

from engine.serve.engine import Request

EMAIL = "ann.lee@example.com"
LEAK = f"mail {EMAIL} "


class LeakyRequest(Request):
    """A request whose completions start by writing an e-mail address: the output PII the
    tiny model never writes by itself."""

    def __iter__(self):
        started: set[int] = set()
        for delta in super().__iter__():
            if delta.index not in started:
                started.add(delta.index)
                delta = replace(delta, text=LEAK + delta.text)
            yield delta

    def result(self, timeout=None):
        result = super().result(timeout)
        for choice in result.choices:
            if not choice.text.startswith(LEAK):
                choice.text = LEAK + choice.text
        return result


@pytest.fixture
def leaky(monkeypatch):
    """A replica redacting PII both ways, whose model leaks an e-mail address."""
    archiver = ListArchiver()
    spec = make_spec(guardrails={"pii": "redact", "pii_output": "redact", "toxicity": "flag"})
    with running_replica(spec=spec, archiver=archiver) as server:
        submit = server.engine.submit

        def leaking_submit(prompt, params=None):
            request = submit(prompt, params)
            request.__class__ = LeakyRequest
            return request

        monkeypatch.setattr(server.engine, "submit", leaking_submit)
        yield server, archiver


def sse(payload: bytes) -> list:
    """The `data:` payloads of a raw event stream, JSON decoded ([DONE] as the string)."""
    events = []
    for block in payload.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block[len("data: ") :]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_found_both_ways(guardrails: dict) -> None:
    assert guardrails["input"]["pii"] == {"EMAIL": 1}
    assert guardrails["input"]["pii_action"] == "redacted"
    assert guardrails["output"]["pii"] == {"EMAIL": 2}  # two completions, one leak each
    assert guardrails["output"]["pii_action"] == "redacted"
    assert {"toxicity", "toxicity_action"} <= set(guardrails["output"])


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
def test_a_stream_ends_with_the_guardrail_decisions(leaky, path):
    server, archiver = leaky
    text = f"write to {EMAIL}"
    body = {"max_tokens": 6, "n": 2, "seed": 1, "stream": True}
    if path.endswith("chat/completions"):
        body["messages"] = [{"role": "user", "content": text}]
    else:
        body["prompt"] = text
    status, _, payload = post(server, path, body)
    assert status == 200
    events = sse(payload)
    assert events[-1] == "[DONE]"
    last = events[-2]
    assert [c["finish_reason"] for c in last["choices"]] == ["length"]  # a choice's end
    assert_found_both_ways(last["x_guardrails"])
    assert not any("x_guardrails" in e for e in events[:-2])  # on the last chunk only
    finished = [c["index"] for e in events[:-1] for c in e["choices"] if c["finish_reason"]]
    assert sorted(finished) == [0, 1]  # both choices still end
    assert EMAIL not in payload.decode() and "<EMAIL>" in payload.decode()
    [record] = archiver.wait(1)
    assert record["guardrails"] == last["x_guardrails"]


def test_the_openai_client_parses_the_stream_and_keeps_the_field(leaky):
    server, archiver = leaky
    api = client(server)
    chunks = list(
        api.completions.create(
            model="m", prompt=f"to {EMAIL}", max_tokens=6, n=2, temperature=0, stream=True
        )
    )
    assert all(len(c.choices) == 1 for c in chunks)  # chunk.choices[0] reads every chunk
    assert_found_both_ways(chunks[-1].model_extra["x_guardrails"])
    assert all("x_guardrails" not in (c.model_extra or {}) for c in chunks[:-1])
    chat = list(
        api.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": f"to {EMAIL}"}],
            max_tokens=6,
            n=2,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    # With include_usage the usage chunk is the last one, and carries the decisions.
    assert chat[-1].choices == [] and chat[-1].usage.completion_tokens > 0
    assert_found_both_ways(chat[-1].model_extra["x_guardrails"])
    assert chat[-2].choices[0].finish_reason == "length"
    assert "x_guardrails" not in (chat[-2].model_extra or {})
    records = archiver.wait(2)
    assert [r["guardrails"] for r in records] == [
        chunks[-1].model_extra["x_guardrails"],
        chat[-1].model_extra["x_guardrails"],
    ]


def test_a_whole_answer_carries_the_decisions_at_its_top_level(leaky):
    server, archiver = leaky
    api = client(server)
    answer = api.completions.create(model="m", prompt=f"to {EMAIL}", max_tokens=4, n=2)
    chat = api.chat.completions.create(
        model="m", messages=[{"role": "user", "content": f"to {EMAIL}"}], max_tokens=4, n=2
    )
    for got in (answer, chat):
        assert_found_both_ways(got.model_extra["x_guardrails"])
    assert answer.choices[0].text.startswith("mail <EMAIL> ")
    records = archiver.wait(2)
    assert records[0]["guardrails"] == answer.model_extra["x_guardrails"]
    assert records[1]["guardrails"] == chat.model_extra["x_guardrails"]
    # The archived response is the OpenAI answer; the decisions are the record's own field.
    assert all("x_guardrails" not in r["response"] for r in records)


def test_no_pii_still_reports_the_decisions():
    with running_replica() as server:
        status, _, payload = post(
            server, "/v1/completions", {"prompt": "To be", "max_tokens": 3, "stream": True}
        )
        _, _, whole = post(server, "/v1/completions", {"prompt": "To be", "max_tokens": 3})
    events = sse(payload)
    nothing = {"pii": {}, "pii_action": "none", "toxicity": 0.0, "toxicity_action": "none"}
    assert events[-2]["x_guardrails"] == {"input": nothing, "output": nothing}
    assert whole["x_guardrails"] == {"input": nothing, "output": nothing}
