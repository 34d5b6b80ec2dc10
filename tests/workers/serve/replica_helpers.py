"""Shared pieces of the replica tests: a tiny model and tokenizer, a spec, a replica started in
this process on a free port, the real `openai` client pointed at it, raw HTTP posts."""

from __future__ import annotations

import http.client
import json
import string
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
from tests.enginemodels import SPEECH, trained_gpt
from workers.serve.protocol import GuardrailConfig, ReplicaSpec

SECRET = "replica-test-secret"
# The speech plus every printable character: placeholders (<EMAIL>) and test prompts encode.
TOKENIZER = CharTokenizer.train(SPEECH + string.printable, special_tokens=DEFAULT_SPECIAL_TOKENS)
OFF = dict(pii="off", pii_output="off", toxicity="off")

torch.set_num_threads(1)  # the machine's two cores are shared; tiny models lose from more


def tiny_model():
    return trained_gpt(TOKENIZER, block_size=64)


def make_spec(task: str = "text-generation", guardrails: dict | None = None, **changes):
    fields = dict(
        replica_id="r" * 32,
        deployment_id=5,
        deployment="proj/tiny",
        project_id=2,
        model="tiny",
        version=3,
        version_id=11,
        task=task,
        files=[],
        guardrails=GuardrailConfig(**(OFF if guardrails is None else guardrails)),
    )
    return ReplicaSpec(**{**fields, **changes})


class ListArchiver:
    """Collects records as the Archiver would receive them."""

    def __init__(self):
        self.records: list[dict] = []
        self.closed = False

    def record(self, record: dict) -> None:
        json.dumps(record)  # a record must be plain JSON
        self.records.append(record)

    def close(self, timeout=None) -> None:
        self.closed = True

    def wait(self, count: int = 1, timeout: float = 10.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.records) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.records) >= count, f"{len(self.records)} records, expected {count}"
        return self.records


def text_engine(max_batch: int = 8, max_queue: int = 16):
    from engine.serve import TextEngine

    return TextEngine(tiny_model(), TOKENIZER, max_batch=max_batch, max_queue=max_queue)


@contextmanager
def running_replica(model=None, spec=None, archiver=None):
    from workers.serve.replica import ReplicaServer

    archiver = archiver if archiver is not None else ListArchiver()
    server = ReplicaServer(
        spec or make_spec(), model if model is not None else text_engine(), archiver, SECRET
    )
    server.start()
    try:
        yield server
    finally:
        if not server.draining:
            server.drain(timeout=10)


def client(server, **options):
    import openai

    return openai.OpenAI(
        base_url=server.url + "/v1",
        api_key="not-used-by-replicas",
        default_headers={"X-CP-Internal": SECRET},
        max_retries=0,
        timeout=30,
        **options,
    )


def post(server, path: str, body, headers: dict | None = None, secret: str | None = SECRET):
    """(status, headers, parsed JSON body) of a raw POST."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = {"Content-Type": "application/json", **(headers or {})}
    if secret is not None:
        sent["X-CP-Internal"] = secret
    connection.request("POST", path, data, sent)
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    try:
        parsed = json.loads(payload)
    except ValueError:
        parsed = payload
    return response.status, dict(response.headers), parsed


def alone(prompt: str, max_tokens: int) -> str:
    """The greedy text of the same request through the bare Generator."""
    from engine.infer.generate import Generator, SamplingParams

    params = SamplingParams(max_new_tokens=max_tokens, temperature=0.0)
    return Generator(tiny_model(), TOKENIZER).generate(prompt, params).generations[0].text


def vision_checkpoint_dir(root: Path, kind: str = "gan") -> Path:
    """The checkpoint file of a freshly initialised tiny image generator, saved as the training
    loop saves it (what is served is the plumbing, not image quality)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "engine" / "vision"))
    from vision_helpers import tiny_config

    from engine.vision.checkpoint import VisionCheckpoints
    from engine.vision.config import config_to_dict
    from engine.vision.recipes import make_recipe

    torch.manual_seed(0)
    config = tiny_config(kind, root / kind)
    recipe = make_recipe(config, torch.device("cpu"))
    payload = {"kind": kind, "config": config_to_dict(config), "state": recipe.state_dict()}
    return Path(VisionCheckpoints(root / kind).save(1, payload))
