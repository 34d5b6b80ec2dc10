"""Fixtures shared by the job tests."""

import hashlib

import pytest


@pytest.fixture
def model_job(team, tmp_path):
    """A succeeded job that published a tiny GPT (model/*) the way a pre-training job does."""
    import torch

    from controlplane.jobs.models import Job, JobArtifact
    from controlplane.storage import object_store
    from engine.data.tokenizers import DEFAULT_SPECIAL_TOKENS, CharTokenizer
    from engine.models.gpt import GPT, GPTConfig
    from engine.train.export import export_model
    from engine.train.recipes import shakespeare_texts

    text = "".join(shakespeare_texts().values())  # every character the built-in pairs use
    tokenizer = CharTokenizer.train(text, special_tokens=DEFAULT_SPECIAL_TOKENS)
    tokenizer.save(tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    config = GPTConfig(
        vocab_size=tokenizer.vocab_size, block_size=96, n_layer=1, n_head=2, n_embd=32
    )
    folder = export_model(
        GPT(config), tmp_path / "model", tokenizer_file=tmp_path / "tokenizer.json", eot_id=0
    )
    job = Job.objects.create(
        project=team.project,
        kind="pretrain",
        state="succeeded",
        params={},
        created_by=team.engineer,
    )
    for path in sorted(folder.iterdir()):
        data = path.read_bytes()
        key = f"{job.output_prefix}attempt-1/model/{path.name}"
        object_store().put_bytes(key, data)
        JobArtifact.objects.create(
            job=job,
            name=f"model/{path.name}",
            object_key=key,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
        )
    return job


@pytest.fixture
def job(team, make_upload):
    """A queued inspect job: the smallest real job, for the event-path tests."""
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\nb\n")
    return job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )


@pytest.fixture
def make_token_version(team, make_ready_version, settings, run_on_worker):
    """`raw, tokens = make_token_version(plays=2)`: a version of the plays (modern spelling)
    and the token-shard version the data pipeline derives from it, on the worker for real."""
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.services import job_create
    from engine.data.corpora import shakespeare_files

    settings.TRAINING_QUEUE = "cpu"

    def make(plays: int = 2):
        files = {p.name: p.read_bytes() for p in shakespeare_files("modern")[:plays]}
        dataset = dataset_create(
            project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
        )
        raw = make_ready_version(dataset, team.engineer, files)
        pipeline = run_on_worker(
            job_create(
                project=team.project,
                kind="data_pipeline",
                actor=team.engineer,
                params={"dataset_version_id": raw.pk, "val_fraction": 0.34},
            )
        )
        return raw, pipeline.produced_versions.get()

    return make


@pytest.fixture
def token_version(make_token_version):
    """A dataset version of token shards (the data pipeline run on two small plays)."""
    return make_token_version(plays=2)[1]
