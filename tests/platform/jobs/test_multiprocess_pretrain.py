"""Pre-training jobs on several processes: torchrun under the worker, gloo on the CPU.

The worker's handler runs for real (workers/launch.py starts torchrun with two ranks of a
tiny GPT); its events go through the platform's event path as the control worker would
apply them. A job with ``resources.devices`` 2 must be the same job as with 1 process
(same global batch, same losses); a cancel ends the whole group; a rank that dies fails
the attempt, and the next attempt resumes from the last checkpoint.
"""

from __future__ import annotations

import os
import signal
import tempfile

import psutil
import pytest

from tests.platform.jobs.threaded_attempt import ThreadedAttempt

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def tokens(make_token_version):
    return make_token_version(plays=2)[1]


@pytest.fixture(autouse=True)
def _job_folders_under_tmp_path(tmp_path, monkeypatch):
    """The handler's work folders (and so the ranks' command lines) under this test's
    folder: what tells this test's training processes from anyone else's."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _create(team, params: dict, resources: dict):
    """A pre-training job whose params ask for ``resources`` (stored as the platform stores
    them once validated: in the params)."""
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    job = job_create(project=team.project, kind="pretrain", actor=team.engineer, params=params)
    job.params["resources"] = resources
    Job.objects.filter(pk=job.pk).update(params=job.params)
    return job


def _params(tokens, *, batch_size: int, max_iters: int = 6, **train) -> dict:
    return {
        "dataset_version_id": tokens.pk,
        "preset": "tiny",
        "model": {"block_size": 32},
        "train": {
            "max_iters": max_iters,
            "batch_size": batch_size,
            "eval_interval": 0,
            "eval_iters": 1,
            "log_interval": 1,
            **train,
        },
        "checkpoint_interval": 3,
        "sample_tokens": 5,
    }


def _losses(job) -> dict[int, float]:
    from controlplane.jobs.models import JobMetric

    return dict(JobMetric.objects.filter(job=job, key="train/loss").values_list("step", "value"))


def _why(job) -> str:
    """The failures the job's attempts reported: what a red assertion should show."""
    from controlplane.jobs.models import JobEventRecord

    failures = JobEventRecord.objects.filter(job=job, type="failed").order_by("attempt", "seq")
    reports = [f"attempt {f.attempt}: {f.payload.get('error')}" for f in failures]
    return f"{job.state} (error: {job.error}); " + "; ".join(reports)


def _group_processes(folder) -> list[psutil.Process]:
    """Live processes whose command line names this test's work folder (torchrun, ranks)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        if str(folder) in cmdline and process.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(process)
    return found


def test_two_processes_train_like_one_with_the_same_global_batch(team, tokens, run_on_worker):
    def train(devices: int, batch_size: int):
        job = _create(team, _params(tokens, batch_size=batch_size), {"devices": devices})
        return run_on_worker(job)

    one = train(devices=1, batch_size=4)
    two = train(devices=2, batch_size=2)  # 2 sequences per rank: the same 4 per step

    assert one.state == "succeeded" and two.state == "succeeded", two.error
    assert sorted(_losses(two)) == list(range(1, 7))
    for step, loss in _losses(one).items():
        assert _losses(two)[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
    # Rank 0 reported like a one-process job: checkpoints, the model, samples.
    assert [c.step for c in two.artifacts.filter(kind="checkpoint").order_by("step")] == [3, 6]
    assert {a.name for a in two.artifacts.filter(kind="output")} >= {"model/model.safetensors"}
    assert two.result["step"] == 6 and two.result["samples"]
    seqs = list(two.events.values_list("seq", flat=True))
    assert seqs == list(range(len(seqs)))  # one event stream, no gap, no duplicate


def test_a_rank_that_crashes_while_shutting_down_after_the_run_does_not_fail_it(
    team, tokens, run_on_worker, tmp_path, monkeypatch
):
    """gloo may abort a rank whose peer tore the process group down first: the run was
    complete (every rank said so, rank 0 sent its summary), so the job succeeds."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    # Rank 1 aborts (SIGABRT, as gloo's terminate does) once its run has returned.
    (hooks / "sitecustomize.py").write_text(
        "import atexit, os\nif os.environ.get('RANK') == '1':\n    atexit.register(os.abort)\n"
    )
    monkeypatch.setenv("PYTHONPATH", str(hooks))

    job = run_on_worker(_create(team, _params(tokens, batch_size=2), {"devices": 2}))

    assert job.state == "succeeded", _why(job)
    assert job.attempt == 1 and job.result["step"] == 6
    assert sorted(_losses(job)) == list(range(1, 7))
    logs = " ".join(job.events.filter(type="log").values_list("payload__message", flat=True))
    assert "after every process had finished the run" in logs


def test_cancel_stops_every_process_of_the_group(team, tokens, _job_folders_under_tmp_path):
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.services.lifecycle import put_marker
    from workers.protocol import cancel_marker_key

    params = _params(tokens, batch_size=2, max_iters=100_000, log_interval=2)
    params["checkpoint_interval"] = 0  # the stop's checkpoint is the only one
    job = _create(team, params, {"devices": 2})
    attempt = ThreadedAttempt(job_spec(job))
    attempt.wait_for(lambda event: event.type == "metric", 60)
    assert len(_group_processes(_job_folders_under_tmp_path)) == 3  # torchrun and 2 ranks
    put_marker(cancel_marker_key(job.pk), "cancel requested by the test")

    assert attempt.finish(60) == "cancelled"
    attempt.apply()
    job.refresh_from_db()
    assert job.state == "cancelled"
    # The stop's checkpoint was written by the group and reported, as for one process.
    (checkpoint,) = job.artifacts.filter(kind="checkpoint")
    assert checkpoint.step % 2 == 0  # a logging step: where the ranks learn of the stop
    assert _group_processes(_job_folders_under_tmp_path) == []


def test_a_killed_rank_fails_the_attempt_and_the_next_resumes_from_the_checkpoint(
    team, tokens, run_on_worker, _job_folders_under_tmp_path
):
    from controlplane.jobs.dispatch import job_spec

    params = _params(tokens, batch_size=2, max_iters=400, log_interval=2)
    params["checkpoint_interval"] = 4
    job = _create(team, params, {"devices": 2})
    attempt = ThreadedAttempt(job_spec(job))
    attempt.wait_for(lambda event: event.type == "checkpoint", 60)
    (rank_1,) = [
        process
        for process in _group_processes(_job_folders_under_tmp_path)
        if process.environ().get("RANK") == "1"
    ]
    os.kill(rank_1.pid, signal.SIGKILL)  # what the OOM killer does

    assert attempt.finish(60) == "failed"
    failed = attempt.events[-1]
    assert "rank 1 was killed by SIGKILL" in failed.payload["error"], failed.payload
    assert _group_processes(_job_folders_under_tmp_path) == []
    attempt.apply()
    job.refresh_from_db()
    # Retried as the reaper would: the next attempt, from the last reported checkpoint.
    assert job.state == "queued" and job.attempt == 2
    last = job.artifacts.filter(kind="checkpoint").order_by("-step").first()
    assert job.resume_checkpoint == last.object_key

    job.params["train"]["max_iters"] = last.step + 4  # not the 400 steps: a short test
    job.save(update_fields=["params"])
    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    assert job.result["step"] == last.step + 4
    assert sorted(_losses(job))[-1] == last.step + 4


def test_an_fsdp_job_resumes_from_its_sharded_checkpoint(team, tokens, run_on_worker):
    import io
    import tarfile

    from controlplane.jobs.models import Job
    from controlplane.storage import object_store

    job = _create(team, _params(tokens, batch_size=2), {"devices": 2, "strategy": "fsdp"})
    job = run_on_worker(job)
    assert job.state == "succeeded", _why(job)
    reference = _losses(job)
    halfway = job.artifacts.get(kind="checkpoint", step=3)
    with tarfile.open(fileobj=io.BytesIO(object_store().get_bytes(halfway.object_key))) as tar:
        assert any("/dcp/" in name for name in tar.getnames())  # each rank's shard

    # Attempt 2 as the reaper dispatches it: the sharded checkpoint, the same 2 ranks.
    Job.objects.filter(pk=job.pk).update(
        state="queued", attempt=2, resume_checkpoint=halfway.object_key, finished_at=None
    )
    job.refresh_from_db()
    job = run_on_worker(job)
    assert job.state == "succeeded", _why(job)
    assert job.result["step"] == 6
    resumed = _losses(job)
    for step in (4, 5, 6):
        assert resumed[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-5), step
