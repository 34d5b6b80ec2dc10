"""Jobs of every kind in every state, shaped as the platform stores them: parameters as
validation leaves them (check_params' defaults plus what each kind's validator adds) and
results as the workers return them (workers/jobs/*.py). The job page's tests render
these; a worker that changes its result's shape should change it here too."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from controlplane.jobs.models import ArtifactKind, Job, JobArtifact, JobEventRecord, JobMetric
from controlplane.jobs.params import check_params
from workers.protocol import JobKind

STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TRAINING_KINDS = (
    "pretrain",
    "diffusion",
    "gan",
    "vae",
    "sft",
    "lora",
    "qlora",
    "reward",
    "dpo",
    "ppo",
)
POSTTRAIN_KINDS = ("sft", "lora", "qlora", "reward", "dpo", "ppo")
SHA = "ab12" * 16


def _file(name: str, size: int) -> dict:
    return {"name": name, "key": f"projects/1/jobs/1/{name}", "sha256": SHA, "size": size}


def _samples() -> list[dict]:
    return [{"prompt": "ROMEO:", "text": " What light through yonder window breaks?"}]


# What each posttrain kind's held-out evaluation reports (engine/finetune/*: evaluate()).
POSTTRAIN_EVAL = {
    "sft": ({"eval/loss": 2.61}, {"eval/loss": 1.94}),
    "lora": ({"eval/loss": 2.61}, {"eval/loss": 2.12}),
    "qlora": ({"eval/loss": 2.61}, {"eval/loss": 2.20}),
    "reward": (
        {"eval/loss": 0.693, "eval/accuracy": 0.594, "eval/margin": 0.01},
        {"eval/loss": 0.41, "eval/accuracy": 0.812, "eval/margin": 1.35},
    ),
    "dpo": (
        {
            "eval/accuracy": 0.5,
            "eval/margin": 0.0,
            "eval/logp_margin": -0.3,
            "eval/loss": 0.693,
            "eval/pairs": 64.0,
        },
        {
            "eval/accuracy": 0.75,
            "eval/margin": 0.42,
            "eval/logp_margin": 1.1,
            "eval/loss": 0.52,
            "eval/pairs": 64.0,
        },
    ),
    "ppo": ({"eval/reward": -0.2, "eval/kl": 0.0}, {"eval/reward": 0.65, "eval/kl": 0.12}),
}


def result_of(kind: str, world) -> dict:
    """A succeeded job's result as its worker returns it."""
    if kind == "inspect":
        return {
            "size": 5_123_456,
            "sha256": SHA,
            "compression": None,
            "content_bytes": 5_123_456,
            "format": "jsonl",
            "line_count": 1200,
            "records": [{"text": "First Citizen: Before we proceed"}, {"text": "All: Speak"}],
        }
    if kind == "data_pipeline":
        return {
            "report": {
                "records_read": 100,
                "records_written": 97,
                "stages": [{"name": "dedup", "removed": 3}],
            },
            "summary": "read 100 records, wrote 97",
            "records": 97,  # a count here: the 500 of issue 19
            "preview": [{"text": "First Citizen"}],
            "tokenizer": {"kind": "char", "vocab_size": 65},
            "tokens": {"train": 95_000, "val": 5_000},
            "files": [
                _file("clean/records-00000.jsonl", 120_000),
                _file("tokens/train-00000.bin", 190_000),
            ],
        }
    if kind == "pretrain":
        return {
            "step": 300,
            "train_loss": 1.8123,
            "val_loss": 1.9456,
            "best_val_loss": 1.9301,
            "tokens_per_second": 12345.6,
            "seconds": 123.45,
            "samples": _samples(),
            "files": [_file("model/model.safetensors", 4_800_000)],
        }
    if kind in ("diffusion", "gan", "vae"):
        return {
            "kind": kind,
            "steps": 500,
            "seconds": 61.3,
            "metrics": {"train/loss": 0.051, "train/lr": 0.001},
            "evaluation": {
                "eval/accuracy": 0.91,
                "eval/frechet_distance": 12.3,
                "eval/samples": 100.0,
                "eval/sample_seconds": 3.2,
            },
        }
    if kind in POSTTRAIN_KINDS:
        before, after = POSTTRAIN_EVAL[kind]
        return {
            "kind": kind,
            "steps": 200,
            "seconds": 95.2,
            "trainable_parameters": 12_288,
            "total_parameters": 1_234_567,
            "metrics": {"train/loss": 1.9, "train/lr": 1e-05, "train/steps_per_second": 2.1},
            "baseline": before,
            "evaluation": after,
            "samples": _samples() if kind != "reward" else [],
            "files": [_file("model/model.safetensors", 4_800_000)],
        }
    if kind == "evaluate":
        return {
            "metrics": {"eval/loss": 2.1, "eval/perplexity": 8.17, "eval/toxicity_rate": 0.0},
            "details": {
                "samples": _samples(),
                "model_version_id": world.model_version.pk,
                "dataset_version_id": world.version.pk,
                "training_dataset_version_id": None,
            },
        }
    if kind == "erasure":
        return {
            "request_id": 7,
            "versions": [
                {
                    "id": world.version.pk,
                    "found": {
                        "method": "field",
                        "records": 2,
                        "files": [{"name": "a.jsonl", "records": 2}],
                    },
                    "new_files": [
                        {
                            "name": "a.jsonl",
                            "key": "k",
                            "sha256": SHA,
                            "size": 900,
                            "status": "rewritten",
                        }
                    ],
                    "unchanged": [],
                    "dropped": [],
                    "rebuild": [],
                    "token_shards": {},
                }
            ],
            "records": 2,
        }
    raise AssertionError(f"no result shape for {kind}: add one (workers/jobs/)")


def params_of(kind: str, world) -> dict:
    """A job's stored parameters: the kind's defaults and what its validator adds."""
    if kind == "inspect":
        return {"upload_id": world.upload_id, "preview_records": 5}
    if kind == "erasure":
        return {
            "request_id": 7,
            "versions": [
                {
                    "id": world.version.pk,
                    "label": "corpus v1",
                    "search": "field",
                    "subject_field": "user",
                    "files": [{"name": "a.jsonl", "input": 0}],
                }
            ],
        }
    clean, errors = check_params(kind, {})
    assert not errors, (kind, errors)
    if kind == "data_pipeline":
        clean.update(
            pipeline={"stages": [{"dedup": {"exact": True}}, {"length": {"min_chars": 10}}]},
            dataset_version_id=world.version.pk,
            subject_field="",
            input_names=["a.jsonl"],
        )
    elif kind == "pretrain":
        clean["train"]["device"] = clean.pop("device")
        clean.update(dataset_version_id=world.version.pk, input_names=["tokens/train-00000.bin"])
    elif kind in POSTTRAIN_KINDS:
        clean.update(base_job_id=world.base_job.pk, input_names=["base/model.safetensors"])
        if kind == "ppo":
            clean["reward_job_id"] = world.base_job.pk
    elif kind == "evaluate":
        clean.update(
            model_version_id=world.model_version.pk,
            task="text-generation",
            dataset_version_id=world.version.pk,
            training_dataset_version_id=world.version.pk,
            input_names=["model/model.safetensors"],
        )
    return clean


def _events(job: Job, kind: str, state: str) -> None:
    now = timezone.now()
    payloads = [("started", {"worker": "celery@gpu-1", "tracking_run_id": None}), ("heartbeat", {})]
    payloads.append(("progress", {"fraction": 0.4, "message": "training: step 120 of 300"}))
    if kind in TRAINING_KINDS:
        payloads.append(
            ("metric", {"step": 100, "values": {"train/loss": 2.5, "train/lr": 0.0006}})
        )
        payloads.append(
            (
                "checkpoint",
                {
                    "name": "checkpoint-100",
                    "step": 100,
                    "key": f"{job.output_prefix}ckpt-100.pt",
                    "sha256": SHA,
                    "size": 4_812_345,
                },
            )
        )
    payloads.append(("log", {"message": "read 100 records, wrote 97"}))
    if state == "succeeded":
        payloads.append(
            (
                "artifact",
                {
                    "name": "model/config.json",
                    "key": f"{job.output_prefix}model/config.json",
                    "sha256": SHA,
                    "size": 412,
                },
            )
        )
        payloads.append(("finished", {"result": job.result}))
    elif state == "failed":
        payloads.append(("failed", {"error": "JobFailed: the pipeline removed every record"}))
    elif state == "cancelled":
        payloads.append(("cancelled", {"reason": "cancelled by user"}))
    JobEventRecord.objects.bulk_create(
        JobEventRecord(job=job, attempt=1, seq=seq, type=t, payload=p, emitted_at=now)
        for seq, (t, p) in enumerate(payloads)
    )


def _training_outputs(job: Job) -> None:
    now = timezone.now()
    JobMetric.objects.bulk_create(
        [
            JobMetric(job=job, key="train/loss", step=s, value=3.0 - s / 200, recorded_at=now)
            for s in range(0, 300, 10)
        ]
        + [
            JobMetric(job=job, key="val/loss", step=s, value=3.1 - s / 220, recorded_at=now)
            for s in range(0, 300, 50)
        ]
        + [
            JobMetric(job=job, key="train/lr", step=s, value=0.0006, recorded_at=now)
            for s in range(0, 300, 10)
        ]
    )
    JobArtifact.objects.create(
        job=job,
        kind=ArtifactKind.CHECKPOINT,
        name="checkpoint-100",
        step=100,
        object_key=f"{job.output_prefix}ckpt-100.pt",
        sha256=SHA,
        size=4_812_345,
    )


def make_job(world, kind: str, state: str) -> Job:
    """A job of `kind` in `state`, with the events, metrics and checkpoints it would have."""
    now = timezone.now()
    started = state != "queued"
    job = Job.objects.create(
        project=world.project,
        kind=kind,
        queue="cpu" if kind in ("inspect", "data_pipeline", "erasure") else "gpu",
        state=state,
        params=params_of(kind, world),
        created_by=world.owner,
        experiment="shakespeare" if kind in TRAINING_KINDS else "",
        started_at=now - dt.timedelta(seconds=95) if started else None,
        finished_at=now if state in ("succeeded", "failed", "cancelled") else None,
        worker="celery@gpu-1" if started else "",
        progress={"queued": 0.0, "running": 0.4}.get(state, 1.0 if state == "succeeded" else 0.4),
        progress_message="training: step 120 of 300" if started else "",
        result=result_of(kind, world) if state == "succeeded" else None,
        error="JobFailed: the pipeline removed every record" if state == "failed" else "",
    )
    Job.objects.filter(pk=job.pk).update(created_at=now - dt.timedelta(seconds=100))
    job.refresh_from_db()
    if started:
        _events(job, kind, state)
    if started and kind in TRAINING_KINDS:
        _training_outputs(job)
    return job


def build_world(team, make_upload):
    """The objects the jobs' parameters name: an upload, a dataset version, a base job
    and a registered model version, all in the team's project."""
    from controlplane.datasets.models import Dataset, DatasetVersion
    from controlplane.registry.models import ModelVersion, RegisteredModel

    class World:
        pass

    world = World()
    world.project, world.owner = team.project, team.owner
    world.upload_id = make_upload(team.project, team.engineer, b'{"text": "a"}\n', "a.jsonl").pk
    dataset = Dataset.objects.create(
        project=team.project, name="Corpus", slug="corpus", kind="text", created_by=team.owner
    )
    world.version = DatasetVersion.objects.create(
        dataset=dataset, number=1, state="ready", created_by=team.owner
    )
    world.base_job = Job.objects.create(
        project=team.project, kind="pretrain", state="succeeded", created_by=team.owner
    )
    model = RegisteredModel.objects.create(
        project=team.project, name="bard", task="text-generation", created_by=team.owner
    )
    world.model_version = ModelVersion.objects.create(
        model=model,
        number=1,
        state="ready",
        source_job=world.base_job,
        source_attempt=1,
        created_by=team.owner,
    )
    return world


ALL_KINDS = tuple(JobKind)
