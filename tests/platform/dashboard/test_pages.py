import pytest

pytestmark = pytest.mark.django_db


def test_login_required(client):
    response = client.get("/")
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_login_and_logout(team, client):
    response = client.post("/login/", {"username": "owner", "password": "pw-for-tests-1"})
    assert response.status_code == 302
    assert client.get("/").status_code == 200
    client.post("/logout/")
    assert client.get("/").status_code == 302


def test_overview_shows_real_figures(team, client):
    from django.utils import timezone

    from controlplane.finops.models import JobAttemptUsage
    from controlplane.jobs.models import Job

    job = Job.objects.create(project=team.project, kind="train", created_by=team.owner)
    now = timezone.now()
    JobAttemptUsage.objects.create(
        job=job,
        attempt=1,
        project=team.project,
        kind="train",
        queue="cpu",
        started_at=now,
        updated_at=now,
        cost="3.21",
    )
    client.force_login(team.owner)
    page = client.get("/").content.decode()
    assert "3.21" in page and "Alpha" in page and "Beta" not in page


def test_every_project_page_renders_for_a_member(team, client, make_upload):
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\n")
    job = job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )
    client.force_login(team.viewer)
    p = team.project.pk
    for url in [
        "/projects/",
        f"/projects/{p}/",
        f"/projects/{p}/jobs/",
        f"/projects/{p}/jobs/{job.pk}/",
        f"/projects/{p}/members/",
        f"/projects/{p}/audit/",
        "/account/tokens/",
    ]:
        assert client.get(url).status_code == 200, url


def test_job_rows_are_a_fragment_for_htmx(team, client, make_upload):
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\n")
    job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )
    client.force_login(team.viewer)
    fragment = client.get(
        f"/projects/{team.project.pk}/jobs/", HTTP_HX_REQUEST="true"
    ).content.decode()
    assert "<html" not in fragment and "queued" in fragment
    page = client.get(f"/projects/{team.project.pk}/jobs/").content.decode()
    assert "<html" in page and 'hx-trigger="every 2s"' in page


@pytest.mark.django_db(transaction=True)  # dispatch happens on commit
def test_engineer_starts_an_inspect_job_from_the_page(team, client, make_upload, sent_jobs):
    from controlplane.jobs.models import Job

    upload = make_upload(team.project, team.engineer, b"a\n")
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/uploads/{upload.pk}/inspect/",
        {"upload_id": upload.pk, "preview_records": 3},
    )
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/jobs/{job.pk}/")
    assert job.params == {"upload_id": upload.pk, "preview_records": 3} and sent_jobs


def test_owner_manages_members_from_the_page(team, client):
    client.force_login(team.owner)
    client.post(f"/projects/{team.project.pk}/members/", {"username": "outsider", "role": "viewer"})
    client.post(f"/projects/{team.project.pk}/members/{team.outsider.pk}/", {"role": "engineer"})
    from controlplane.projects.models import Membership

    assert Membership.objects.get(project=team.project, user=team.outsider).role == "engineer"


def test_create_project_from_the_page(make_user, client):
    client.force_login(make_user())
    response = client.post("/projects/", {"name": "Gamma", "slug": "gamma"})
    assert response.status_code == 302


def test_admin_lists_every_model(team, client):
    client.force_login(team.admin)
    team.admin.is_superuser = True
    team.admin.save()
    for url in [
        "/admin/projects/project/",
        "/admin/jobs/job/",
        "/admin/audit/auditevent/",
        "/admin/uploads/upload/",
        "/admin/accounts/apitoken/",
        "/admin/jobs/jobeventrecord/",
        "/admin/projects/membership/",
    ]:
        assert client.get(url).status_code == 200, url


def test_healthz(client):
    assert client.get("/healthz").json()["status"] == "ok"
