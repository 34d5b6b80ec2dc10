"""Fixtures of the registry tests: jobs that published small real model files.

`make_model_job(kind="pretrain", params=..., state="succeeded")` makes a Job with its
JobArtifact rows and the files in the test's object store: a text job publishes
model/model.safetensors (a real safetensors header and data), model/config.json and
model/tokenizer.json; a vision job (diffusion, gan, vae) a torch checkpoint .pt.
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
from datetime import timedelta

import pytest

# Two tensors: 4x8 + 8 = 40 parameters.
TENSORS = {"wte.weight": [4, 8], "ln_f.bias": [8]}
TEXT_PARAMETERS = 40
CONFIG = {"model_type": "gpt2", "n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 4}


def safetensors_bytes(tensors: dict[str, list[int]] = TENSORS) -> bytes:
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 4
        for n in shape:
            size *= n
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    header["__metadata__"] = {"format": "pt"}
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + bytes(offset)


def checkpoint_bytes(kind: str = "gan") -> tuple[bytes, int]:
    """A vision checkpoint as the engine writes it (format, kind, step, config, state)."""
    import torch

    state = {
        "generator": {"a.weight": torch.zeros(3, 4), "a.bias": torch.zeros(3)},
        "discriminator": {"b.weight": torch.zeros(2, 5)},
        "ema": {"model": {"a.weight": torch.zeros(3, 4)}},
        "opt_g": {"state": {0: {"exp_avg": torch.zeros(3, 4)}}, "param_groups": []},
    }
    payload = {
        "format": "engine.vision.checkpoint/1",
        "kind": kind,
        "step": 7,
        "config": {"model": {"z_dim": 16}, "data": {"image_size": 8}, "train": {"steps": 7}},
        "state": state,
        "rng": {"torch": torch.get_rng_state()},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue(), 12 + 3 + 10


@pytest.fixture
def put_artifact():
    from controlplane.jobs.models import JobArtifact
    from controlplane.storage import object_store

    def put(job, name: str, data: bytes, *, kind: str = "output", step=None, attempt: int = 1):
        key = f"{job.output_prefix}attempt-{attempt}/{name}"
        object_store().put_bytes(key, data)
        return JobArtifact.objects.create(
            job=job,
            kind=kind,
            name=name,
            step=step,
            object_key=key,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )

    return put


@pytest.fixture
def make_model_job(team, put_artifact):
    from controlplane.jobs.models import Job

    def make(
        kind: str = "pretrain",
        *,
        params: dict | None = None,
        state: str = "succeeded",
        project=None,
        user=None,
        result: dict | None = None,
        files: bool = True,
    ):
        job = Job.objects.create(
            project=project or team.project,
            kind=kind,
            state=state,
            params=params or {},
            created_by=user or team.engineer,
            result=result
            if result is not None
            else {"val_loss": 1.5, "train_loss": 1.25, "samples": ["x"], "files": []},
        )
        if not files:
            return job
        if kind in ("diffusion", "gan", "vae"):
            data, _ = checkpoint_bytes(kind)
            put_artifact(job, "checkpoints/step_000003.pt", data, kind="checkpoint", step=3)
            put_artifact(job, "checkpoints/step_000007.pt", data, kind="checkpoint", step=7)
        else:
            put_artifact(job, "model/model.safetensors", safetensors_bytes())
            put_artifact(job, "model/config.json", json.dumps(CONFIG).encode())
            put_artifact(job, "model/tokenizer.json", b'{"kind": "char"}')
        return job

    return make


@pytest.fixture
def commit_hooks():
    """`commit_hooks()`: run the on-commit callbacks waiting in the test's transaction (the
    test never commits): what a real commit would do, e.g. sending the finish task."""
    from django.db import connection

    def run():
        while connection.run_on_commit:
            _savepoints, callback, _robust = connection.run_on_commit.pop(0)
            callback()

    return run


@pytest.fixture
def finish_sent(sent_jobs, commit_hooks):
    """`finish_sent()`: run every registration the services asked the control worker for."""
    from controlplane.registry.services import FINISH_TASK, finish_registration

    def run():
        commit_hooks()
        done = []
        while sent_jobs:
            name, args, _queue = sent_jobs.pop(0)
            if name == FINISH_TASK:
                done.append(finish_registration(*args))
        return done

    return run


@pytest.fixture
def ready_version(team, make_model_job, finish_sent):
    """`ready_version(model_name="gpt", job=None)`: a registered, verified version."""
    from controlplane.registry.services import version_register

    def make(model_name: str = "gpt", job=None, **job_kwargs):
        job = job or make_model_job(**job_kwargs)
        version = version_register(
            project=job.project, actor=team.engineer, job=job, model_name=model_name
        )
        finish_sent()
        version.refresh_from_db()
        assert version.state == "ready", version.refused_reason
        return version

    return make


@pytest.fixture
def evaluate(team):
    """`evaluate(version, {"val_loss": 1.2})`: a finished evaluation of the version."""
    from django.utils import timezone

    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelEvaluation

    def make(version, metrics: dict, *, finished: bool = True, age_seconds: int = 0):
        job = Job.objects.create(
            project=version.model.project,
            kind="evaluate",
            state="succeeded" if finished else "running",
            params={"model_version_id": version.pk},
            created_by=team.engineer,
        )
        return ModelEvaluation.objects.create(
            version=version,
            job=job,
            metrics=metrics,
            finished_at=timezone.now() - timedelta(seconds=age_seconds) if finished else None,
        )

    return make


@pytest.fixture
def audit_actions():
    """`audit_actions(project)` -> the project's audit actions, oldest first."""
    from controlplane.audit.models import AuditEvent

    def actions(project, prefix: str = ""):
        return list(
            AuditEvent.objects.filter(project_id=project.pk, action__startswith=prefix)
            .order_by("seq")
            .values_list("action", flat=True)
        )

    return actions
