"""Every page form and filter answers hostile input with a form error or a 400, never a 500.

The same classes of fault the API had (issue 11): NUL characters, numbers too large for
the database, digits that are not ASCII ("²".isdigit() is True, int("²") raises),
non-finite floats, JSON nested too deep or holding NUL, malformed page numbers.
"""

import pytest

pytestmark = pytest.mark.django_db

HOSTILE = ["a\x00b", "9" * 30, "-1", "²", "1e999", "nan", "[]", " "]


@pytest.fixture
def world(team, make_upload, make_ready_version, client):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b'{"text": "hi"}\n')
    job = job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.owner
    )
    dataset = dataset_create(
        project=team.project, actor=team.owner, name="Text", slug="text", kind="text"
    )
    version = make_ready_version(dataset, team.owner, {"a.jsonl": b'{"text": "hi"}\n'})
    client.force_login(team.owner)
    p = team.project.pk
    forms = {
        "/projects/": {"name": "N", "slug": "n-1", "description": ""},
        "/account/tokens/": {"name": "t"},
        f"/projects/{p}/uploads/{upload.pk}/inspect/": {
            "upload_id": upload.pk,
            "preview_records": 5,
            "read_rate_limit_mb_s": "",
        },
        f"/projects/{p}/jobs/new/diffusion/": {
            "preset": "tiny",
            "device": "cpu",
            "train.steps": 5,
            "train.lr": 0.001,
            "seed": 1,
            "experiment": "e",
        },
        f"/projects/{p}/jobs/new/pretrain/": {
            "dataset_version_id": version.pk,
            "sample_prompts": "ROMEO:",
            "model.block_size": 32,
        },
        f"/projects/{p}/jobs/new/inspect/": {"upload_id": upload.pk, "preview_records": 3},
        f"/projects/{p}/members/": {"username": team.outsider.username, "role": "viewer"},
        f"/projects/{p}/members/{team.viewer.pk}/": {"role": "engineer"},
        f"/projects/{p}/datasets/": {"name": "D", "slug": "d-1", "kind": "text"},
        f"/projects/{p}/datasets/{dataset.pk}/v{version.number}/": {
            "action": "pipeline",
            "pipeline": "{}",
            "tokenizer": "char",
            "val_fraction": 0.05,
        },
        # The same page's second form (the query string only keeps the dict keys apart).
        f"/projects/{p}/datasets/{dataset.pk}/v{version.number}/?train": {
            "action": "train",
            "preset": "tiny",
            "max_iters": 10,
            "batch_size": 2,
            "lr": 0.001,
            "min_lr": 0.0001,
            "warmup_iters": 0,
            "eval_interval": 0,
            "device": "cpu",
            "sample_prompt": "ROMEO:",
        },
        f"/projects/{p}/jobs/{job.pk}/posttrain/": {"kind": "sft", "steps": 10, "batch_size": 2},
        f"/projects/{p}/jobs/{job.pk}/resume/": {"checkpoint_id": 1},
    }
    pages = {
        f"/projects/{p}/jobs/": ["state", "kind", "experiment", "page"],
        f"/projects/{p}/audit/": [
            "artifact_type",
            "artifact_id",
            "page",
            "actor",
            "action",
            "since",
            "until",
        ],
        f"/projects/{p}/audit/events.csv": ["actor", "since", "artifact_id"],
        f"/projects/{p}/experiments/": ["experiment", "jobs", "sort", "order"],
        f"/projects/{p}/datasets/": ["page"],
    }
    return client, forms, pages


@pytest.mark.slow
def test_no_form_field_turns_hostile_input_into_a_500(world):
    client, forms, _pages = world
    for url, valid in forms.items():
        for field in valid:
            for value in HOSTILE:
                response = client.post(url, {**valid, field: value})
                assert response.status_code < 500, (url, field, value)


def test_no_page_filter_turns_hostile_input_into_a_500(world):
    client, _forms, pages = world
    for url, params in pages.items():
        for param in params:
            for value in HOSTILE:
                response = client.get(url, {param: value})
                assert response.status_code in (200, 400), (url, param, value)


@pytest.mark.parametrize(
    "text",
    [
        '{"stages": "\\u0000"}',
        '{"stages": NaN}',
        '{"stages": 1e999}',
        '{"stages": ' + "[" * 5000 + "]" * 5000 + "}",
    ],
    ids=["nul", "nan", "overflow", "deep"],
)
def test_pipeline_json_typed_into_the_page_is_checked_like_an_api_body(world, team, text):
    from controlplane.jobs.models import Job

    client, forms, _pages = world
    url = next(u for u in forms if "/datasets/" in u and "/v" in u)
    before = Job.objects.count()
    response = client.post(url, {**forms[url], "pipeline": text})
    assert response.status_code == 200 and b"not valid JSON" in response.content
    assert Job.objects.count() == before


@pytest.mark.parametrize(
    "url",
    [
        "/admin/jobs/job/?state__exact=a%00b",
        "/admin/projects/project/?slug=a%00b",
        "/projects/?x=a%00b",
    ],
)
def test_nul_in_any_query_is_a_400_page_even_in_the_admin(team, client, url):
    team.admin.is_superuser = True
    team.admin.save()
    client.force_login(team.admin)
    response = client.get(url)
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")


def test_nul_in_an_unknown_api_query_parameter_is_a_json_400(team, api):
    response = api(team.owner).get("/api/v1/projects/?colour=a%00b")
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"colour": ["must not contain NUL characters"]}
