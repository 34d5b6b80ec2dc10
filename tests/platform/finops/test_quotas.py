"""GPU quotas: jobs over the quota wait as `queued (quota)` and are dispatched in
submission order when a slot frees; quota 0 refuses; two jobs ending at once never
release more than the quota allows."""

from __future__ import annotations

import pytest

from controlplane.finops.quotas import quota_release
from controlplane.finops.services import quota_set
from controlplane.jobs.models import Job, JobDispatch

pytestmark = pytest.mark.django_db


def gpu_job(api, user, project):
    answer = api(user).post(f"/api/v1/projects/{project.pk}/jobs/", {"kind": "vae"}, format="json")
    return answer


def finish(job: Job, state: str = "succeeded") -> None:
    Job.objects.filter(pk=job.pk if isinstance(job, Job) else job).update(state=state)


@pytest.fixture
def gpu(settings):
    settings.TRAINING_QUEUE = "gpu"


def test_a_job_over_quota_waits_and_is_released_in_submission_order(
    api, client, team, org_admin, gpu, sent_jobs
):
    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=1, max_gpus=None)
    first, second, third = (gpu_job(api, team.engineer, team.project).json() for _ in range(3))
    assert [first["held_for"], second["held_for"], third["held_for"]] == ["", "quota", "quota"]
    assert [job["state"] for job in (first, second, third)] == ["queued"] * 3
    assert list(JobDispatch.objects.values_list("job_id", flat=True)) == [first["id"]]
    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/jobs/{second['id']}/").content.decode()
    assert "queued (quota)" in page

    assert quota_release(team.project.pk) == []  # nothing freed yet
    finish(first["id"])
    assert quota_release(team.project.pk) == [second["id"]]
    finish(second["id"], "failed")
    assert quota_release(team.project.pk) == [third["id"]]
    assert Job.objects.get(pk=third["id"]).held_for == ""
    assert [d.job_id for d in JobDispatch.objects.order_by("id")] == [
        first["id"],
        second["id"],
        third["id"],
    ]


def test_a_new_job_does_not_overtake_jobs_already_waiting(api, team, org_admin, gpu):
    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=1, max_gpus=None)
    first = gpu_job(api, team.engineer, team.project).json()
    gpu_job(api, team.engineer, team.project)
    finish(first["id"])  # a slot is free, but a job waits already
    assert gpu_job(api, team.engineer, team.project).json()["held_for"] == "quota"


def test_a_quota_of_zero_refuses_gpu_jobs_with_a_clear_409(api, team, org_admin, gpu):
    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=0, max_gpus=None)
    answer = gpu_job(api, team.engineer, team.project)
    assert answer.status_code == 409
    error = answer.json()["error"]
    assert error["code"] == "gpu_quota_zero"
    assert "quota of 0" in error["message"] and "may not run GPU jobs" in error["message"]
    assert not Job.objects.exists()


def test_the_gpu_limit_counts_devices(team, org_admin, gpu):
    from controlplane.finops.quotas import quota_admit

    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=None, max_gpus=3)
    make = lambda devices: Job.objects.create(  # noqa: E731
        project=team.project,
        kind="vae",
        queue="gpu",
        created_by=team.owner,
        params={"resources": {"devices": devices}},
    )
    assert quota_admit(make(2)) is True
    assert quota_admit(make(2)) is False  # 4 > 3
    assert Job.objects.filter(held_for="quota").count() == 1


def test_only_org_admins_set_quotas_and_members_read_them(api, team, org_admin, other_org):
    url = f"/api/v1/projects/{team.project.pk}/quota/"
    body = {"max_concurrent_gpu_jobs": 2, "max_gpus": 4}
    assert api(team.owner).put(url, body, format="json").status_code == 403
    assert api(team.engineer).put(url, body, format="json").status_code == 403
    assert api(other_org.admin).put(url, body, format="json").status_code == 404
    assert api(org_admin).put(url, body, format="json").status_code == 200
    read = api(team.viewer).get(url).json()
    assert (read["max_concurrent_gpu_jobs"], read["max_gpus"], read["can_edit"]) == (2, 4, False)
    bad = api(org_admin).put(url, {"max_concurrent_gpu_jobs": -1, "max_gpus": None}, format="json")
    assert bad.status_code == 400 and "max_concurrent_gpu_jobs" in bad.json()["error"]["fields"]


def test_the_reaper_leaves_held_jobs_alone(team, org_admin, settings):
    from datetime import timedelta

    from django.utils import timezone

    from controlplane.jobs.services import jobs_reap_expired

    held = Job.objects.create(
        project=team.project,
        kind="vae",
        queue="gpu",
        created_by=team.owner,
        held_for="quota",
        dispatched_at=timezone.now() - timedelta(days=1),
    )
    assert held.pk not in jobs_reap_expired()
    held.refresh_from_db()
    assert (held.state, held.attempt) == ("queued", 1)


@pytest.mark.django_db(transaction=True)
def test_two_jobs_ending_at_once_release_no_more_than_the_quota(team, org_admin):
    from tests.threads import in_threads

    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=2, max_gpus=None)

    def make(held: str, state: str = "running") -> Job:
        return Job.objects.create(
            project=team.project,
            kind="vae",
            queue="gpu",
            state="queued" if held else state,
            created_by=team.owner,
            held_for=held,
        )

    running = [make(""), make("")]
    waiting = [make("quota") for _ in range(4)]
    for job in running:
        finish(job)
    results = in_threads(
        lambda: quota_release(team.project.pk), lambda: quota_release(team.project.pk)
    )
    assert not any(isinstance(r, BaseException) for r in results), results
    released = sorted(results[0] + results[1])
    assert released == [waiting[0].pk, waiting[1].pk]  # the two oldest, once each
    assert Job.objects.filter(held_for="quota").count() == 2


def test_a_gpu_job_ending_asks_for_a_release_and_the_beat_releases_too(
    api, team, org_admin, gpu, sent_jobs, django_capture_on_commit_callbacks
):
    from controlplane.finops.quotas import RELEASE_TASK, quota_release_all
    from controlplane.jobs.services import job_cancel

    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=1, max_gpus=None)
    first = Job.objects.get(pk=gpu_job(api, team.engineer, team.project).json()["id"])
    second = gpu_job(api, team.engineer, team.project).json()
    with django_capture_on_commit_callbacks(execute=True):
        job_cancel(job=first, actor=team.engineer)
    assert (RELEASE_TASK, [team.project.pk], "control") in sent_jobs
    assert quota_release_all() == 1  # as if the release message were lost
    assert Job.objects.get(pk=second["id"]).held_for == ""


def test_raising_the_quota_asks_for_a_release(
    api, team, org_admin, gpu, sent_jobs, django_capture_on_commit_callbacks
):
    from controlplane.finops.quotas import RELEASE_TASK

    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=1, max_gpus=None)
    gpu_job(api, team.engineer, team.project)
    waiting = gpu_job(api, team.engineer, team.project).json()
    with django_capture_on_commit_callbacks(execute=True):
        quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=2, max_gpus=None)
    assert (RELEASE_TASK, [team.project.pk], "control") in sent_jobs
    assert quota_release(team.project.pk) == [waiting["id"]]


def test_the_job_form_shows_a_zero_quota_refusal(client, team, org_admin, gpu):
    quota_set(project=team.project, actor=org_admin, max_concurrent_gpu_jobs=0, max_gpus=0)
    client.force_login(team.engineer)
    page = client.post(
        f"/projects/{team.project.pk}/jobs/new/vae/",
        {"preset": "recipe", "device": "auto"},
        follow=True,
    ).content.decode()
    assert "quota of 0" in page
    assert not Job.objects.exists()
