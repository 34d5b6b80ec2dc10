"""One validator for every stored name: refused with the field and the code point named."""

import pytest

from controlplane.names import name_problem

pytestmark = pytest.mark.django_db

DISGUISED = "\u202egnp.exe"  # displayed as "exe.png"


@pytest.mark.parametrize(
    "name",
    [
        *(f"a{chr(c)}b" for c in range(0x202A, 0x202F)),
        *(f"a{chr(c)}b" for c in range(0x2066, 0x206A)),
        *(f"a{chr(c)}b" for c in range(0x200B, 0x2010)),
        "a\ufeffb",
        "a\x00b",
        "a\x7fb",
        "a\x85b",
        "a\u2028b",
        "a\ud800b",
        "e\u0301",
        "\u212b",
    ],
)
def test_disguising_names_are_refused(name):
    problem = name_problem(name)
    assert problem is not None and "U+" in problem


@pytest.mark.parametrize(
    "name", ["plays.jsonl", "café.txt", "数据集 v2", "Ünïcödé – fine", "emoji 🙂", "a b"]
)
def test_ordinary_names_pass(name):
    assert name_problem(name) is None


def test_the_message_names_the_code_point_and_the_risk():
    assert name_problem(DISGUISED) == (
        "name contains U+202E RIGHT-TO-LEFT OVERRIDE, which can disguise a file's extension "
        "or reorder what is shown"
    )


def test_project_names_are_checked(team, api):
    client = api(team.owner)
    created = client.post(
        "/api/v1/projects/", {"name": DISGUISED, "slug": "disguised"}, format="json"
    )
    assert created.status_code == 400
    assert "U+202E" in str(created.json()["error"]["fields"]["name"])
    renamed = client.patch(
        f"/api/v1/projects/{team.project.pk}/", {"name": "a\u200bb"}, format="json"
    )
    assert renamed.status_code == 400 and "U+200B" in str(renamed.json()["error"]["fields"])
    team.project.refresh_from_db()
    assert team.project.name == "Alpha"


def test_job_experiment_and_token_names_are_checked(team, api):
    client = api(team.engineer)
    job = client.post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "inspect", "params": {}, "experiment": "run\u202e1"},
        format="json",
    )
    assert job.status_code == 400 and "experiment" in job.json()["error"]["fields"]
    session = api()  # tokens are minted from a logged-in session
    session.force_login(team.engineer)
    token = session.post("/api/v1/tokens/", {"name": "ci\u2066"}, format="json")
    assert token.status_code == 400 and "U+2066" in str(token.json()["error"]["fields"])


def test_dashboard_forms_check_names(team, client):
    from controlplane.datasets.models import Dataset
    from controlplane.projects.models import Project

    client.force_login(team.engineer)
    client.post("/projects/", {"name": DISGUISED, "slug": "disguised"})
    client.post(
        f"/projects/{team.project.pk}/datasets/",
        {"name": DISGUISED, "slug": "plays", "kind": "text"},
    )
    assert not Project.objects.filter(slug="disguised").exists()
    assert not Dataset.objects.exists()
