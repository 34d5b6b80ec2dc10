"""Serving end to end, every part a real process: gunicorn (the platform the node syncs
with), a control worker (archive index), a serve node with real replica processes, and the
official `openai` client.

- a completion and a streamed chat answer through the front equal the engine alone;
- the archive records are indexed and read back from the store;
- an alias move switches the deployment with requests in flight: none is dropped;
- kill -9 of a replica: the requests keep succeeding on the other, the node restarts it;
- bad input through the front: unknown / stopped deployment, wrong scope, bad field.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.enginemodels import SPEECH, trained_gpt
from tests.liveprocess import Process, get, gunicorn_command, process_env, wait_until
from tests.redisserver import PrivateRedis, free_port

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

openai = pytest.importorskip("openai")

NODE_SECRET = "e2e-node-secret-" + "x" * 16


@pytest.fixture
def stack(tmp_path):
    """gunicorn + control worker + a serve node (capacity 3), on a private Redis."""
    redis = PrivateRedis(tmp_path / "redis").start()
    web_port, node_port = free_port(), free_port()
    env = process_env(CELERY_BROKER_URL=redis.url, SERVE_NODE_SECRET=NODE_SECRET)
    celery = [sys.executable, "-m", "celery", "--quiet", "-A"]
    control = ["controlplane.celery_app", "worker", "-Q", "control", "--pool", "solo"]
    web = gunicorn_command(web_port) + ["--threads", "4"]
    node_env = {k: v for k, v in env.items() if k != "DATABASE_URL"}  # nodes hold no DB creds
    node = [
        *(sys.executable, "-m", "workers.serve"),
        *("--platform-url", f"http://127.0.0.1:{web_port}"),
        *("--listen", f"127.0.0.1:{node_port}", "--public-url", f"http://127.0.0.1:{node_port}"),
        *("--name", f"e2e-{node_port}", "--device", "cpu", "--capacity", "3"),
    ]
    processes = [
        Process("web", web, env, tmp_path),
        Process("control", celery + control + ["-n", f"control-{web_port}@test"], env, tmp_path),
        Process("node", node, node_env, tmp_path),
    ]

    class Stack:
        pass

    stack = Stack()
    stack.node_url = f"http://127.0.0.1:{node_port}"
    stack.logs = lambda: "\n".join(p.tail() for p in processes)
    stack.replica_logs = lambda: "\n".join(
        path.read_text(errors="replace")[-2000:] for path in tmp_path.glob("**/replica*.log")
    )
    try:
        wait_until(lambda: get(f"http://127.0.0.1:{web_port}/healthz") is not None, 60, stack.logs)
        wait_until(lambda: get(stack.node_url + "/healthz") is not None, 60, stack.logs)
        yield stack
    finally:
        for process in reversed(processes):
            process.stop()
        redis.stop()


@pytest.fixture
def served(tmp_path, team, put_text_version):
    """A text model with two ready versions (different weights) and an inference token."""
    from controlplane.accounts.models import Scope
    from controlplane.accounts.services import api_token_create

    v1 = put_text_version(tmp_path / "v1", "gpt2")
    v2 = put_text_version(tmp_path / "v2", "llama")
    _token, raw = api_token_create(user=team.engineer, name="app", scopes=[Scope.INFERENCE])
    _token, api_only = api_token_create(user=team.engineer, name="api", scopes=["api:read"])
    return {"v1": v1, "v2": v2, "token": raw, "api_token": api_only, "folders": {}}


def _client(stack, deployment, token, **kwargs):
    base = f"{stack.node_url}/p/{deployment.project.slug}/{deployment.name}/v1"
    return openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=60, **kwargs)


def _wait_ready(stack, deployment, count=1, version=None):
    from workers.serve.protocol import ReplicaState

    def ready():
        replicas = deployment.replica_set.filter(state=ReplicaState.READY)
        if version is not None:
            replicas = replicas.filter(version=version)
        return replicas.count() >= count

    wait_until(ready, 120, lambda: stack.logs() + stack.replica_logs())


def _alone(folder: Path, prompt: str, max_tokens: int) -> str:
    from engine.infer.loading import load_for_generation
    from engine.serve import CompletionParams, TextEngine

    model, tokenizer = load_for_generation(folder)
    with TextEngine(model, tokenizer).start() as engine:
        return engine.complete(prompt, CompletionParams(max_tokens=max_tokens)).text


def test_openai_client_through_the_front_and_the_archive(stack, team, served):
    from controlplane.serving import archive
    from controlplane.serving.models import InferenceRecord
    from controlplane.serving.services import deployment_create

    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="chat",
        model=served["v1"].model,
        version=served["v1"],
        replicas=1,
    )
    _wait_ready(stack, deployment)
    client = _client(stack, deployment, served["token"])

    answer = client.completions.create(
        model="chat", prompt="To be, or", max_tokens=8, temperature=0
    )
    assert answer.choices[0].text == _alone(served["v1"].folder, "To be, or", 8)
    assert answer.usage.completion_tokens == 8

    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=[{"role": "user", "content": "To be"}],
            max_tokens=6,
            temperature=0,
            stream=True,
        )
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(chunks) >= 2 and streamed

    wait_until(
        lambda: InferenceRecord.objects.filter(deployment=deployment).count() == 2,
        60,
        stack.logs,
    )
    first = InferenceRecord.objects.filter(deployment=deployment).order_by("created_at").first()
    record = archive.read_record(first)
    assert record["response"]["choices"][0]["text"] == answer.choices[0].text
    assert record["caller"]["user_id"] == team.engineer.pk


def test_an_alias_move_switches_without_dropping_requests_in_flight(stack, team, served):
    from controlplane.audit.models import AuditEvent
    from controlplane.registry.services import alias_set
    from controlplane.serving.services import deployment_create

    model = served["v1"].model
    alias_set(model=model, actor=team.owner, alias="candidate", version=served["v1"])
    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="canary",
        model=model,
        alias="candidate",
        replicas=1,
    )
    _wait_ready(stack, deployment)
    client = _client(stack, deployment, served["token"])
    results, errors = [], []

    def call():
        try:
            stream = client.completions.create(
                model="canary", prompt="To", max_tokens=24, temperature=0, stream=True
            )
            results.append("".join(c.choices[0].text for c in stream))
        except Exception as error:  # noqa: BLE001 - the assertion below shows it
            errors.append(repr(error))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for thread in threads[:3]:
        thread.start()
    alias_set(model=model, actor=team.owner, alias="candidate", version=served["v2"])
    for thread in threads[3:]:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == [] and len(results) == 6

    _wait_ready(stack, deployment, version=served["v2"])
    wait_until(
        lambda: (
            not deployment.replica_set.filter(version=served["v1"], state="ready").exists()
            and not deployment.replica_set.filter(version=served["v1"], state="draining").exists()
        ),
        60,
        stack.logs,
    )
    after = client.completions.create(model="canary", prompt="To", max_tokens=8, temperature=0)
    assert after.model.endswith(":v2")
    assert AuditEvent.objects.filter(action="deployment.switched").exists()


def test_kill_9_of_a_replica_loses_no_request_that_had_not_started(stack, team, served):
    from controlplane.serving.services import deployment_create

    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="pair",
        model=served["v1"].model,
        version=served["v1"],
        replicas=2,
    )
    _wait_ready(stack, deployment, count=2)
    victim = deployment.replica_set.filter(state="ready").first()
    os.kill(victim.pid, signal.SIGKILL)
    client = _client(stack, deployment, served["token"])
    for _ in range(8):
        answer = client.completions.create(model="pair", prompt="To", max_tokens=4, temperature=0)
        assert answer.choices[0].finish_reason == "length"
    wait_until(
        lambda: deployment.replica_set.filter(
            pk=victim.pk, state="ready", restarts__gte=1
        ).exists(),
        120,
        stack.logs,
    )


def _post(url: str, token: str, body: dict):
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_bad_input_through_the_front(stack, team, served):
    from controlplane.serving.services import deployment_create, deployment_stop

    deployment = deployment_create(
        project=team.project,
        actor=team.engineer,
        name="strict",
        model=served["v1"].model,
        version=served["v1"],
        replicas=1,
    )
    _wait_ready(stack, deployment)
    base = f"{stack.node_url}/p/{team.project.slug}"
    url = f"{base}/strict/v1/completions"
    token = served["token"]

    status, body = _post(f"{base}/nope/v1/completions", token, {"prompt": "To"})
    assert status == 404 and body["error"]["code"] == "deployment_not_found"
    status, body = _post(url, served["api_token"], {"prompt": "To"})
    assert status == 403
    status, body = _post(url, "cp_not-a-token", {"prompt": "To"})
    assert status == 401
    status, body = _post(url, token, {"prompt": "To", "temperature": 9})
    assert status == 400 and body["error"]["param"] == "temperature"
    status, body = _post(url, token, {"prompt": "To be " * 40, "max_tokens": 4})
    assert status == 400 and "64 tokens" in body["error"]["message"]

    deployment_stop(deployment=deployment, actor=team.engineer, reason="maintenance")
    wait_until(lambda: _post(url, token, {"prompt": "To"})[0] == 503, 60, stack.logs)
    status, body = _post(url, token, {"prompt": "To"})
    assert (
        body["error"]["code"] == "deployment_stopped" and "maintenance" in body["error"]["message"]
    )


def _trained_export(folder: Path, variant: str) -> Path:
    """A tiny GPT trained on SPEECH, exported: clear margins between its top choices, so
    its greedy text does not depend on how a batch was shaped."""
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
    from engine.train.export import export_model

    folder.mkdir(parents=True)
    tokenizer = CharTokenizer.train(SPEECH, special_tokens=DEFAULT_SPECIAL_TOKENS)
    tokenizer.save(folder.parent / f"{folder.name}-tokenizer.json")
    return export_model(
        trained_gpt(tokenizer, variant),
        folder,
        tokenizer_file=folder.parent / f"{folder.name}-tokenizer.json",
        eot_id=tokenizer.eot_id,
    )


@pytest.fixture
def put_text_version(team):
    """`put_text_version(folder, seed)`: a ready version of model "gpt" whose files are a
    real tiny GPT export (the version gets a `.folder` attribute: the export)."""
    from controlplane.jobs.models import Job, JobArtifact
    from controlplane.registry.services import finish_registration, version_register
    from controlplane.storage import object_store

    def make(folder: Path, variant: str):
        export = _trained_export(folder, variant)
        job = Job.objects.create(
            project=team.project,
            kind="pretrain",
            state="succeeded",
            params={},
            created_by=team.engineer,
            result={"val_loss": 1.5, "files": []},
        )
        for path in sorted(export.iterdir()):
            data = path.read_bytes()
            key = f"{job.output_prefix}attempt-1/model/{path.name}"
            object_store().put_bytes(key, data)
            JobArtifact.objects.create(
                job=job,
                kind="output",
                name=f"model/{path.name}",
                object_key=key,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
            )
        version = version_register(
            project=team.project, actor=team.engineer, job=job, model_name="gpt"
        )
        finish_registration(version.pk)
        version.refresh_from_db()
        assert version.state == "ready", version.refused_reason
        version.folder = export
        return version

    return make
