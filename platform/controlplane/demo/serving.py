"""The demo's serving walk: the DPO model's `production` alias deployed on a real serve
node, called with the official `openai` client (a completion, a streamed chat answer, and
a request carrying PII that the guardrails redact), its archive records read back from the
store, then the deployment stopped.

The serve node asks the platform over HTTP what to run, so the walk starts a web process
of its own (gunicorn on a free port) and a `python -m workers.serve` node beside the
Celery workers, and stops both at the end.
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import TYPE_CHECKING

from django.core.management.base import CommandError

from controlplane.accounts.models import Scope
from controlplane.accounts.services import api_token_create
from controlplane.demo.processes import free_port, serve_node_start, stop_process, web_start
from controlplane.serving import archive
from controlplane.serving.models import Deployment, InferenceRecord
from controlplane.serving.services import deployment_create, deployment_stop
from workers.serve.protocol import BASE_PATH, ReplicaState

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project

DEPLOYMENT = "shakespeare-chat"
# The demo model reads 64 characters at most: prompt and answer must fit.
PII_PROMPT = "ROMEO: mail romeo@verona.example\nJULIET:"
SUBJECT = "romeo@verona.example"


def _wait(command, what: str, predicate, timeout: float | None = None):
    deadline = time.monotonic() + (timeout or command.timeout)
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.25)
    raise CommandError(f"{what} did not happen in time; see var/logs/serve-*.log")


def _ready(deployment: Deployment) -> bool:
    return deployment.replica_set.filter(
        state=ReplicaState.READY, version=deployment.target_version
    ).exists()


def _up(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def serving_walk(command, project: Project, users: dict[str, User], model_name: str) -> None:
    from openai import OpenAI  # a dev dependency, as `make demo` installs it

    command.step("Serving: a serve node and the platform's web process for it")
    web_port, node_port = free_port(), free_port()
    web = web_start(web_port, command.stdout)
    node = None
    try:
        _wait(
            command,
            "the web process answering",
            lambda: _up(f"http://127.0.0.1:{web_port}/healthz"),
            60,
        )
        node = serve_node_start(f"http://127.0.0.1:{web_port}", node_port, command.stdout)
        _wait(
            command,
            "the serve node answering",
            lambda: _up(f"http://127.0.0.1:{node_port}/healthz"),
            60,
        )
        _serve(command, project, users, model_name, node_port, OpenAI)
    finally:
        if node is not None:
            stop_process(node)
        stop_process(web)


def _serve(command, project, users, model_name, node_port, client_class) -> None:
    bob = users["bob"]
    command.step(f"Serving: bob deploys {model_name}@production as '{DEPLOYMENT}'")
    model = project.registered_models.get(name=model_name)
    deployment = deployment_create(
        project=project, actor=bob, name=DEPLOYMENT, model=model, alias="production", replicas=1
    )
    guard = deployment.guardrails
    command.stdout.write(
        f"    follows @production = v{deployment.target_version.number}; guardrails from "
        f"{guard.get('source')}: input PII {guard.get('pii')}, output PII "
        f"{guard.get('pii_output')}, toxicity {guard.get('toxicity')} above "
        f"{guard.get('toxicity_threshold')}"
    )
    started = time.monotonic()
    _wait(command, "a ready replica", lambda: _ready(deployment))
    command.stdout.write(f"    replica ready in {time.monotonic() - started:.1f}s")

    _token, secret = api_token_create(user=bob, name="demo app", scopes=[Scope.INFERENCE])
    base_url = f"http://127.0.0.1:{node_port}" + BASE_PATH.format(
        project=project.slug, deployment=DEPLOYMENT
    )
    command.stdout.write(
        f"    base URL {base_url} (an `inference` token: it can call deployments only)"
    )
    client = client_class(base_url=base_url, api_key=secret, max_retries=0)

    completion = client.completions.create(
        model=DEPLOYMENT, prompt="ROMEO:", max_tokens=48, temperature=0.8, seed=1
    )
    text = completion.choices[0].text.replace("\n", " ")
    command.stdout.write(
        f"    completion ({completion.usage.completion_tokens} tokens): {text[:70]!r}"
    )

    stream = client.chat.completions.create(
        model=DEPLOYMENT,
        messages=[{"role": "user", "content": "Speak of love."}],
        max_tokens=32,
        temperature=0.8,
        seed=7,
        stream=True,
    )
    pieces = [chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices]
    command.stdout.write(
        f"    streamed chat answer in {len(pieces)} chunks: {''.join(pieces)[:70]!r}"
    )

    client.with_options(default_headers={"X-Data-Subject": SUBJECT}).completions.create(
        model=DEPLOYMENT, prompt=PII_PROMPT, max_tokens=16, temperature=0
    )
    _archive(command, deployment, expected=3)

    command.step(f"Serving: bob stops '{DEPLOYMENT}'")
    deployment_stop(deployment=deployment, actor=bob, reason="demo finished")
    _wait(
        command,
        "the replica drained",
        lambda: (
            not deployment.replica_set.exclude(
                state__in=[ReplicaState.STOPPED, ReplicaState.FAILED, ReplicaState.LOST]
            ).exists()
        ),
    )
    command.stdout.write("    stopped: its replica drained and exited; requests now answer 503")


def _archive(command, deployment: Deployment, expected: int) -> None:
    records = _wait(
        command,
        "the archive records indexed",
        lambda: (
            list(InferenceRecord.objects.filter(deployment=deployment).order_by("created_at"))
            if InferenceRecord.objects.filter(deployment=deployment).count() >= expected
            else None
        ),
    )
    command.stdout.write(f"    archived: {len(records)} requests, each read back from the store:")
    for entry in records:
        record = archive.read_record(entry)
        decisions = record.get("guardrails", {}).get("input", {})
        prompt = record.get("request", {}).get("prompt") or record.get("request", {}).get(
            "messages"
        )
        command.stdout.write(
            f"      {entry.request_id[:8]} {entry.endpoint:<17} {entry.status:<8} "
            f"{entry.prompt_tokens}+{entry.completion_tokens} tokens {entry.latency_ms:.0f} ms"
            + (f" subject {entry.subject_hash[:10]}…" if entry.subject_hash else "")
        )
        if decisions.get("pii"):
            command.stdout.write(
                f"        PII {json.dumps(decisions['pii'])} {decisions.get('pii_action')}: "
                f"the model saw {str(prompt)[:60]!r}"
            )
