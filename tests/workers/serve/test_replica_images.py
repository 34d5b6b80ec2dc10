"""The images endpoint: PNGs of the digit a prompt names, through the real `openai` client."""

from __future__ import annotations

import base64

import openai
import pytest
from replica_helpers import (
    ListArchiver,
    client,
    make_spec,
    post,
    running_replica,
    vision_checkpoint_dir,
)

from engine.serve.images import DigitImageModel


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> DigitImageModel:
    return DigitImageModel.load(vision_checkpoint_dir(tmp_path_factory.mktemp("v")), device="cpu")


def image_spec(**guardrails):
    return make_spec("image-generation", guardrails={"pii": "off", "toxicity": "off", **guardrails})


def test_images_are_pngs_of_the_named_digit_repeatable_by_seed(digits):
    archiver = ListArchiver()
    with running_replica(digits, spec=image_spec(), archiver=archiver) as server:
        api = client(server)
        answer = api.images.generate(
            model="m",
            prompt="a handwritten seven",
            n=2,
            response_format="b64_json",
            extra_body={"seed": 4},
        )
        again = api.images.generate(model="m", prompt="7", n=2, extra_body={"seed": 4})
        other = api.images.generate(model="m", prompt="digit 3", extra_body={"seed": 4})
    pngs = [base64.b64decode(d.b64_json) for d in answer.data]
    assert len(pngs) == 2 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert [d.b64_json for d in again.data] == [d.b64_json for d in answer.data]
    assert other.data[0].b64_json not in {d.b64_json for d in answer.data}
    record = archiver.records[0]
    assert record["endpoint"] == "images.generations" and record["status"] == "ok"
    assert record["request"]["seed"] == 4 and record["response"]["data"][0]["b64_json"]


def test_image_requests_are_checked(digits):
    with running_replica(digits, spec=image_spec()) as server:
        cases = [
            (
                {"prompt": "a seven", "response_format": "url"},
                "unsupported_parameter",
                "response_format",
            ),
            ({"prompt": "a horse"}, "invalid_value", "prompt"),
            ({"prompt": "7", "n": 0}, "invalid_value", "n"),
            ({"prompt": "7", "guidance": 2.0}, "invalid_value", "guidance"),  # a GAN
            ({"prompt": "7", "size": "1024x1024"}, "unsupported_parameter", "size"),
        ]
        for body, code, param in cases:
            got, _, answer = post(server, "/v1/images/generations", body)
            assert got == 400, body
            assert (answer["error"]["code"], answer["error"]["param"]) == (code, param), answer
        with pytest.raises(openai.BadRequestError) as raised:
            client(server).completions.create(model="m", prompt="x")
        assert raised.value.code == "wrong_model_type"


def test_image_prompt_goes_through_the_input_guardrails(digits):
    archiver = ListArchiver()
    with running_replica(digits, spec=image_spec(pii="refuse"), archiver=archiver) as server:
        got, _, answer = post(server, "/v1/images/generations", {"prompt": "7 for a@b.org"})
    assert got == 400 and answer["error"]["code"] == "guardrail_refused"
    assert archiver.records[0]["request"]["prompt"] == "7 for <EMAIL>"


def test_an_image_answer_carries_the_guardrail_decisions(digits):
    archiver = ListArchiver()
    with running_replica(digits, spec=image_spec(pii="redact"), archiver=archiver) as server:
        answer = client(server).images.generate(model="m", prompt="7 for a@b.org")
    decisions = answer.model_extra["x_guardrails"]
    assert decisions["input"]["pii"] == {"EMAIL": 1}
    assert decisions["input"]["pii_action"] == "redacted"
    assert decisions["output"]["pii_action"] == "none"
    [record] = archiver.records
    assert record["guardrails"] == decisions and "x_guardrails" not in record["response"]
