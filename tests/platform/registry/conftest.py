"""Fixtures of the registry's page, card and export tests.

`make_version` builds a registered version the way the registration service leaves it
(files copied under the version's prefix in the real local store, ModelFile rows with
their sha256, lineage recorded), straight in the ORM, so the pages can be tested apart
from the services.
"""

from __future__ import annotations

import hashlib
import json

import pytest

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

WEIGHTS = b"\x08\x00\x00\x00\x00\x00\x00\x00{}      " + bytes(range(256)) * 64
CONFIG = json.dumps({"n_layer": 1, "n_head": 2, "n_embd": 32, "block_size": 96}).encode()
TOKENIZER = json.dumps({"kind": "char", "vocab": list("abc")}).encode()


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

    def make(model_name="gpt", *, project=None, datasets=(), state="ready", files=None, **fields):
        project = project or team.project
        model, _ = RegisteredModel.objects.get_or_create(
            project=project,
            name=model_name,
            defaults={"task": "text-generation", "created_by": team.engineer},
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
            "model.safetensors": ("weights", WEIGHTS),
            "config.json": ("config", CONFIG),
            "tokenizer.json": ("tokenizer", TOKENIZER),
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


@pytest.fixture
def make_evaluation(team):
    """`make_evaluation(version, {"val_loss": 1.9, ...})`: a finished evaluate job."""
    from django.utils import timezone

    from controlplane.jobs.models import Job
    from controlplane.registry.models import ModelEvaluation

    def make(version, metrics: dict, finished: bool = True):
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
            finished_at=timezone.now() if finished else None,
        )

    return make
