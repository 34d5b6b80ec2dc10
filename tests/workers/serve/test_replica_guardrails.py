"""Guardrails on the replica: PII redacted before the model sees it (and in the archive),
refused without echoing it, toxicity flagged or refused, outputs redacted, streams too."""

from __future__ import annotations

import random
import time

import openai
import pytest
from replica_helpers import (
    TOKENIZER,
    ListArchiver,
    client,
    make_spec,
    post,
    running_replica,
    text_engine,
)

from engine.data.pii import PIIConfig, PIIRedactor
from workers.serve.guardrails import GuardrailRefused, Guardrails, StreamRedactor
from workers.serve.protocol import GuardrailConfig

EMAIL = "ann.lee@example.com"
TOXIC = "you bastards, crap crap"


def guarded(**changes):
    return make_spec(guardrails={"pii": "redact", "pii_output": "redact", **changes})


def test_pii_is_redacted_before_the_model_and_in_the_archive():
    archiver = ListArchiver()
    with running_replica(spec=guarded(toxicity="off"), archiver=archiver) as server:
        prompt = f"mail {EMAIL} now"
        answer = client(server).completions.create(model="m", prompt=prompt, max_tokens=2)
    [record] = archiver.records
    seen = "mail <EMAIL> now"
    assert record["request"]["prompt"] == seen
    assert answer.usage.prompt_tokens == len(TOKENIZER.encode(seen))  # what the model read
    assert EMAIL not in str(record)
    assert record["guardrails"]["input"]["pii"] == {"EMAIL": 1}
    assert record["guardrails"]["input"]["pii_action"] == "redacted"
    assert record["status"] == "ok"


def test_chat_messages_are_redacted_one_by_one():
    archiver = ListArchiver()
    with running_replica(spec=guarded(toxicity="off"), archiver=archiver) as server:
        client(server).chat.completions.create(
            model="m",
            messages=[
                {"role": "system", "content": f"owner {EMAIL}"},
                {"role": "user", "content": "call 020 7946 0958"},
            ],
            max_tokens=2,
        )
    messages = archiver.records[0]["request"]["messages"]
    assert [m["content"] for m in messages] == ["owner <EMAIL>", "call <PHONE>"]
    assert archiver.records[0]["guardrails"]["input"]["pii"] == {"EMAIL": 1, "PHONE": 1}


def test_pii_refused_names_the_types_never_the_values():
    archiver = ListArchiver()
    with running_replica(spec=guarded(pii="refuse", toxicity="off"), archiver=archiver) as server:
        got, _, answer = post(server, "/v1/completions", {"prompt": f"mail {EMAIL}"})
        with pytest.raises(openai.BadRequestError) as raised:
            client(server).completions.create(model="m", prompt=f"hi {EMAIL}")
    assert got == 400 and answer["error"]["code"] == "guardrail_refused"
    assert "EMAIL" in answer["error"]["message"] and EMAIL not in str(answer)
    assert raised.value.code == "guardrail_refused"
    record = archiver.records[0]
    assert record["status"] == "refused" and record["response"] is None
    assert record["request"]["prompt"] == "mail <EMAIL>"
    assert record["error"]["code"] == "guardrail_refused"
    assert record["guardrails"]["input"]["pii_action"] == "refused"


def test_toxic_input_is_flagged_or_refused():
    archiver = ListArchiver()
    with running_replica(spec=guarded(toxicity="flag"), archiver=archiver) as server:
        answer = client(server).completions.create(model="m", prompt=TOXIC, max_tokens=2)
    assert answer.choices[0].text is not None
    record = archiver.records[0]
    assert record["status"] == "flagged"
    assert record["guardrails"]["input"]["toxicity_action"] == "flagged"
    assert record["guardrails"]["input"]["toxicity"] > 0.02

    archiver = ListArchiver()
    with running_replica(spec=guarded(toxicity="refuse"), archiver=archiver) as server:
        got, _, answer = post(server, "/v1/completions", {"prompt": TOXIC})
        clean, _, _ = post(server, "/v1/completions", {"prompt": "To be", "max_tokens": 2})
    assert got == 400 and answer["error"]["code"] == "guardrail_refused"
    assert clean == 200
    assert [r["status"] for r in archiver.records] == ["refused", "ok"]


def test_output_is_redacted_and_toxic_output_filtered():
    guard = Guardrails(GuardrailConfig(pii_output="redact", toxicity="refuse"))
    texts, refused, report = guard.check_output([f"write to {EMAIL}", TOXIC, "fine"])
    assert texts == ["write to <EMAIL>", "", "fine"] and refused == [False, True, False]
    assert report["pii"] == {"EMAIL": 1} and report["toxicity_action"] == "refused"
    flag = Guardrails(GuardrailConfig(pii_output="off", toxicity="flag"))
    texts, refused, report = flag.check_output([TOXIC])
    assert texts == [TOXIC] and refused == [False] and report["toxicity_action"] == "flagged"
    with pytest.raises(GuardrailRefused) as raised:
        Guardrails(GuardrailConfig(pii="refuse")).check_input([f"a {EMAIL}"])
    assert raised.value.texts == ["a <EMAIL>"] and EMAIL not in str(raised.value)


def test_pii_types_limit_what_is_redacted():
    guard = Guardrails(GuardrailConfig(pii_types=["PHONE"], toxicity="off"))
    texts, report = guard.check_input([f"{EMAIL} 020 7946 0958"])
    assert texts == [f"{EMAIL} <PHONE>"] and report["pii"] == {"PHONE": 1}


STREAM_TEXTS = [
    f"Write to {EMAIL} or call +44 20 7946 0958 today, said the clerk.",
    "Her NI number is AB 12 34 56 C and the card 4111 1111 1111 1111 expired.",
    "IBAN DE89 3704 0044 0532 0130 00 at 10.0.0.1 with no digits later on at all here",
    "Plain prose with no digits at all streams word by word as it comes.",
    "Call (020) 7946 0958 or +1 555-010-4477, I said; ZZ 12 34 56 A is not one.\nAB 12 34 56 C",
    "GB82 WEST 1234 5698 7654 32 and 4111-1111-1111-1111 and 123-45-6789 ok ann@b.co  ",
]


@pytest.mark.parametrize("text", STREAM_TEXTS)
def test_streamed_redaction_equals_redacting_the_whole(text):
    redactor = PIIRedactor(PIIConfig())
    whole, found = redactor.redact(text)
    rng = random.Random(0)
    for _ in range(30):
        stream = StreamRedactor(redactor)
        out, position = [], 0
        while position < len(text):
            step = rng.randint(1, 4)
            out.append(stream.feed(text[position : position + step]))
            position += step
        out.append(stream.finish())
        assert "".join(out) == whole
        assert stream.found == found
    for cut in range(len(text)):  # and every split in two
        stream = StreamRedactor(redactor)
        assert stream.feed(text[:cut]) + stream.feed(text[cut:]) + stream.finish() == whole


def test_prose_streams_word_by_word():
    stream = StreamRedactor(PIIRedactor(PIIConfig()))
    assert stream.feed("Plain pro") == "Plain "
    assert stream.feed("se and ") == "prose and "
    assert stream.feed("AB ") == ""  # could start a national insurance number
    assert stream.feed("was here ") == "AB was here "
    assert stream.feed("at 12 ") == "at "
    assert stream.feed("34\n") == "12 34\n"


def test_streamed_answer_with_output_redaction_matches_the_whole():
    with running_replica(spec=guarded(toxicity="off")) as server:
        api = client(server)
        whole = api.completions.create(model="m", prompt="To be", max_tokens=30, temperature=0)
        chunks = api.completions.create(
            model="m", prompt="To be", max_tokens=30, temperature=0, stream=True
        )
        streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == whole.choices[0].text


class LengthScorer:
    """Scores any text longer than 3 characters as toxic: the model's output, not "To"."""

    def score(self, text: str) -> float:
        return 1.0 if len(text) > 3 else 0.0


def test_toxic_output_is_filtered_whole_and_streamed():
    archiver = ListArchiver()
    engine = text_engine()
    forward = engine.model.forward

    def slow_forward(*args, **kwargs):
        # 40 tokens take 0.4 s at least: the filter's cancel (after the first words) comes
        # long before the end even on a loaded machine, where the tiny model could
        # otherwise finish first.
        time.sleep(0.01)
        return forward(*args, **kwargs)

    engine.model.forward = slow_forward
    with running_replica(engine, spec=guarded(toxicity="refuse"), archiver=archiver) as server:
        server.guardrails.scorer = LengthScorer()
        api = client(server)
        whole = api.completions.create(model="m", prompt="To", max_tokens=20, temperature=0)
        options = dict(model="m", prompt="To", max_tokens=40, temperature=0, stream=True)
        chunks = list(api.completions.create(**options))
    assert whole.choices[0].text == "" and whole.choices[0].finish_reason == "content_filter"
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert len("".join(c.choices[0].text for c in chunks)) <= 3
    assert [r["status"] for r in archiver.records] == ["refused", "refused"]
    assert archiver.records[1]["guardrails"]["output"]["toxicity_action"] == "refused"
    assert archiver.records[1]["usage"]["completion_tokens"] < 40  # cancelled, slot freed
    assert engine.load == {"running": 0, "waiting": 0}
