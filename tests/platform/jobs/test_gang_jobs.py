"""Multi-node pre-training: two node tasks of one attempt meet through the platform.

Both nodes run the worker's code for real, each in a thread of this process (a worker
each), on loopback: each starts torchrun with one CPU process (gloo), and the two
torchruns meet through the c10d rendezvous the first node to join hosts. What the nodes
tell the control queue (join, beat, leave) and the events of the node that speaks for
the attempt are applied to the platform here, as the control worker would.
"""

from __future__ import annotations

import queue
import socket
import tempfile
import time

import pytest

from tests.platform.jobs.threaded_attempt import ThreadedAttempt

pytestmark = [pytest.mark.django_db, pytest.mark.slow]


@pytest.fixture
def tokens(make_token_version):
    return make_token_version(plays=2)[1]


@pytest.fixture(autouse=True)
def _job_folders_under_tmp_path(tmp_path, monkeypatch):
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def control(monkeypatch):
    """What the nodes send to the control queue, collected to be applied by `pump`."""
    import workers.gang

    messages: queue.Queue = queue.Queue()
    monkeypatch.setattr(workers.gang, "send_control", lambda task, body: messages.put((task, body)))
    monkeypatch.setenv("WORKER_RENDEZVOUS_HOST", "127.0.0.1")
    monkeypatch.setenv("WORKER_RENDEZVOUS_PORT", str(_free_port()))
    return messages


def _apply_control(messages: queue.Queue, capture) -> None:
    from controlplane.jobs import tasks

    handlers = {
        "control.gang_join": tasks.gang_join_task,
        "control.gang_beat": tasks.gang_beat_task,
        "control.gang_leave": tasks.gang_leave_task,
    }
    while not messages.empty():
        task, body = messages.get()
        with capture(execute=True):  # the rendezvous is published after commit
            handlers[task](body)


def _run_gang(job, members, messages, capture, timeout: float = 120) -> list[ThreadedAttempt]:
    """Start the gang's node tasks ``members`` and apply what they say until they end."""
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.gang import gang_specs

    specs = gang_specs(job, job_spec(job))
    nodes = [ThreadedAttempt(specs[member]) for member in members]
    deadline = time.monotonic() + timeout
    while any(node.thread.is_alive() for node in nodes):
        assert time.monotonic() < deadline, [node.events for node in nodes]
        _apply_control(messages, capture)
        time.sleep(0.1)
    _apply_control(messages, capture)
    for node in nodes:
        node.apply()
    job.refresh_from_db()
    return nodes


def _pretrain(team, tokens, *, batch_size: int, resources: dict):
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import job_create

    params = {
        "dataset_version_id": tokens.pk,
        "preset": "tiny",
        "model": {"block_size": 32},
        "train": {
            "max_iters": 6,
            "batch_size": batch_size,
            "eval_interval": 0,
            "eval_iters": 1,
            "log_interval": 1,
        },
        "checkpoint_interval": 3,
        "sample_tokens": 5,
    }
    job = job_create(project=team.project, kind="pretrain", actor=team.engineer, params=params)
    job.params["resources"] = resources  # as the platform stores it once validated
    Job.objects.filter(pk=job.pk).update(params=job.params)
    return job


def _losses(job) -> dict[int, float]:
    from controlplane.jobs.models import JobMetric

    return dict(JobMetric.objects.filter(job=job, key="train/loss").values_list("step", "value"))


def test_two_nodes_train_together_like_one_process(
    team, tokens, control, run_on_worker, django_capture_on_commit_callbacks
):
    from controlplane.jobs.models import GangMember

    one = run_on_worker(_pretrain(team, tokens, batch_size=4, resources={"devices": 1}))
    job = _pretrain(team, tokens, batch_size=2, resources={"nodes": 2, "devices": 1})
    nodes = _run_gang(job, [0, 1], control, django_capture_on_commit_callbacks)

    assert {node.outcome for node in nodes} == {"finished"}
    assert job.state == "succeeded", job.error
    assert sorted(_losses(job)) == list(range(1, 7))
    for step, loss in _losses(one).items():
        assert _losses(job)[step] == pytest.approx(loss, rel=1e-5, abs=1e-5), step
    # One node spoke for the attempt: one stream of events, the other node's dropped.
    assert [len(node.events) > 0 for node in nodes].count(True) == 1
    assert job.events.filter(type="started").count() == 1
    assert job.result["step"] == 6 and job.artifacts.filter(kind="checkpoint").count() == 2
    members = GangMember.objects.filter(job=job, attempt=1)
    assert members.count() == 2 and members.filter(is_host=True).count() == 1
    assert all(m.left_at and not m.error for m in members)


def test_an_incomplete_gang_is_given_up_and_retried(
    team, tokens, control, settings, django_capture_on_commit_callbacks, _job_folders_under_tmp_path
):
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.gang import gang_specs, gangs_reap

    settings.GANG_TIMEOUT_SECONDS = 30
    job = _pretrain(team, tokens, batch_size=2, resources={"nodes": 2, "devices": 1})

    node = ThreadedAttempt(gang_specs(job, job_spec(job))[0])  # node 1 never starts
    deadline = time.monotonic() + 60
    while control.empty():  # node 0 joined
        assert node.thread.is_alive() and time.monotonic() < deadline
        time.sleep(0.1)
    _apply_control(control, django_capture_on_commit_callbacks)
    assert gangs_reap() == []  # within its timeout: nothing to do

    later = timezone.now() + timedelta(seconds=31)
    with django_capture_on_commit_callbacks(execute=True):
        assert gangs_reap(now=later) == [job.pk]
    node.thread.join(30)
    assert node.outcome == "superseded"  # node 0 stopped waiting: the platform gave up
    job.refresh_from_db()
    assert job.state == "queued" and job.attempt == 2
    reason = AuditEvent.objects.filter(action="job.retried", artifact_id=str(job.pk)).get()
    assert "1 of 2 nodes joined" in reason.payload["reason"]


def test_a_rendezvous_port_in_use_fails_the_attempt_which_is_retried(
    team, tokens, control, django_capture_on_commit_callbacks
):
    import os

    from controlplane.audit.models import AuditEvent

    job = _pretrain(team, tokens, batch_size=2, resources={"nodes": 2, "devices": 1})
    port = int(os.environ["WORKER_RENDEZVOUS_PORT"])
    with socket.socket() as taken:
        taken.bind(("", port))
        taken.listen()
        (node,) = _run_gang(job, [0], control, django_capture_on_commit_callbacks, timeout=60)

    assert node.outcome == "failed"
    assert job.state == "queued" and job.attempt == 2
    reason = AuditEvent.objects.filter(action="job.retried", artifact_id=str(job.pk)).get()
    assert f"the rendezvous port {port} on 127.0.0.1 is in use" in reason.payload["reason"]


def test_a_node_whose_beats_stop_loses_the_attempt(team, tokens, settings):
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.gang import gang_beat, gang_join, gangs_reap
    from controlplane.jobs.models import GangMember
    from controlplane.storage import object_store
    from workers.protocol import superseded_marker_key

    job = _pretrain(team, tokens, batch_size=2, resources={"nodes": 2, "devices": 1})
    assert gang_join(job_id=job.pk, attempt=1, member=1, endpoint="10.0.0.2:29400")
    assert not gang_join(job_id=job.pk, attempt=1, member=0, endpoint="10.0.0.1:29400")
    quiet = timezone.now() - timedelta(seconds=settings.JOB_LEASE_SECONDS + 1)
    GangMember.objects.filter(job=job, member=0).update(last_beat_at=quiet)
    gang_beat(job_id=job.pk, attempt=1, member=1)

    assert gangs_reap() == [job.pk]
    job.refresh_from_db()
    assert job.state == "queued" and job.attempt == 2  # resumed from its last checkpoint
    assert object_store().exists(superseded_marker_key(job.pk, 1))  # every node stops
    reason = AuditEvent.objects.filter(action="job.retried", artifact_id=str(job.pk)).get()
    assert reason.payload["reason"].startswith("node 0 lost")
    # A late beat or join of the lost attempt changes nothing.
    assert not gang_join(job_id=job.pk, attempt=1, member=0, endpoint="10.0.0.1:29400")
