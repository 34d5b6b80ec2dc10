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


# For the page, card and export tests: versions built straight in the ORM, the way the
# registration service leaves them (files under the version's prefix in the real local
# store, ModelFile rows with their sha256, lineage recorded), so the pages are tested
# apart from the services.
# A data pipeline report as engine/data/report.py writes it (keys and nesting).
PIPELINE_REPORT = {
    "records_read": 1200,
    "records_written": 1000,
    "input": {"files": 2, "bytes": 5_400_000},
    "input_problems": {"count": 0, "examples": []},
    "stages": {
        "normalize": {
            "removed": {},
            "removed_total": 0,
            "changed": 40,
            "counts": {},
            "examples": {},
        },
        "quality": {
            "removed": {"too_few_words": 90, "symbol_word_ratio": 10},
            "removed_total": 100,
            "changed": 0,
            "counts": {},
            "examples": {},
        },
        "pii": {
            "removed": {},
            "removed_total": 0,
            "changed": 7,
            "counts": {"email": 5, "phone": 3},
            "examples": {},
        },
        "toxicity": {
            "removed": {"above_threshold": 12},
            "removed_total": 12,
            "changed": 0,
            "counts": {},
            "examples": {},
        },
        "exact_dedup": {
            "removed": {"exact_duplicate": 60},
            "removed_total": 60,
            "changed": 0,
            "counts": {},
            "examples": {},
        },
        "near_dedup": {
            "removed": {"near_duplicate": 28},
            "removed_total": 28,
            "changed": 0,
            "counts": {},
            "examples": {},
        },
    },
    "output": {"shards": [], "subjects_indexed": 0},
    "run": {"processes": 1, "seconds": 1.2},
    "config": {},
}

WEIGHTS_BYTES = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 64
CONFIG_BYTES = json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 96}).encode()
TOKENIZER_BYTES = json.dumps({"kind": "char", "vocab": list("abc")}).encode()


@pytest.fixture
def plays_version(team):
    """A tokenized dataset version of the plays, licensed, with a pipeline report."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_create

    dataset = dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Plays",
        slug="plays",
        kind="text",
        source="https://www.gutenberg.org/ebooks/100",
        license="Public domain (Project Gutenberg)",
    )
    return DatasetVersion.objects.create(
        dataset=dataset,
        number=2,
        state="ready",
        byte_count=800_000,
        record_count=1000,
        report=PIPELINE_REPORT,
        created_by=team.engineer,
    )


@pytest.fixture
def make_version(team):
    """`make_version(model_name="gpt", datasets=[...], **fields)`: a ready version whose
    files are in the local object store."""
    from django.utils import timezone

    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelFile, ModelVersion, RegisteredModel
    from controlplane.storage import object_store

    def make(
        model_name="gpt",
        *,
        project=None,
        datasets=(),
        state="ready",
        files=None,
        task="text-generation",
        **fields,
    ):
        project = project or team.project
        model, _ = RegisteredModel.objects.get_or_create(
            project=project,
            name=model_name,
            defaults={"task": task, "created_by": team.engineer},
        )
        job = Job.objects.create(
            project=project,
            kind="pretrain",
            state="succeeded",
            params={"preset": "tiny", "train": {"max_iters": 200, "lr": 0.001}},
            result={"final": {"val_loss": 2.1}},
            created_by=team.engineer,
        )
        model.last_version_number += 1
        model.save(update_fields=["last_version_number"])
        version = ModelVersion.objects.create(
            model=model,
            number=model.last_version_number,
            state=state,
            source_job=job,
            source_attempt=1,
            params=job.params,
            metrics={"val_loss": 2.1, "train_loss": 1.9},
            architecture={"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 96},
            parameter_count=16_000,
            created_by=team.engineer,
            ready_at=timezone.now() if state == "ready" else None,
            **fields,
        )
        version.lineage_jobs.add(job)
        version.dataset_versions.add(*datasets)
        contents = files or {
            "model.safetensors": ("weights", WEIGHTS_BYTES),
            "config.json": ("config", CONFIG_BYTES),
            "tokenizer.json": ("tokenizer", TOKENIZER_BYTES),
        }
        for name, (role, data) in contents.items():
            key = f"{version.object_prefix}{name}"
            object_store().put_bytes(key, data)
            ModelFile.objects.create(
                version=version,
                name=name,
                role=role,
                source_key=f"{job.output_prefix}attempt-1/model/{name}",
                object_key=key,
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                verified_at=timezone.now(),
            )
        return version

    return make
