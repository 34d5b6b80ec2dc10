"""Bad input is a 400 in the JSON error shape naming the field, never a 500, and creates nothing.

Each case was an HTML 500 before (issue 11, "Bad input must never be a 500").
"""

import pytest

pytestmark = pytest.mark.django_db


def _jobs_url(team) -> str:
    return f"/api/v1/projects/{team.project.pk}/jobs/"


def _post_raw(client, url: str, text: str):
    return client.generic("POST", url, text.encode("utf-8", "surrogatepass"), "application/json")


def _assert_error(response, status: int, field: str | None = None) -> dict:
    assert response.status_code == status, response.content[:500]
    assert response["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["status"] == status and error["code"] and error["message"]
    if field is not None:
        assert field in error["fields"], error
    return error


@pytest.mark.parametrize(
    ("kind", "params", "field"),
    [
        ("pretrain", {"preset": []}, "params.preset"),
        ("pretrain", {"preset": {}}, "params.preset"),
        ("pretrain", {"device": ["cpu"]}, "params.device"),
        ("diffusion", {"preset": {"a": 1}}, "params.preset"),
        ("diffusion", {"device": {}}, "params.device"),
        ("data_pipeline", {"text_field": ["text"]}, "params.text_field"),
        ("data_pipeline", {"tokenizer": {"kind": ["bpe"]}}, "params.tokenizer.kind"),
        ("dpo", {"base_job_id": 1, "device": []}, "params.device"),
        (
            "lora",
            {"base_job_id": 1, "lora": {"target_modules": [[1]]}},
            "params.lora.target_modules",
        ),
        (
            "dpo",
            {"base_job_id": 1, "dpo": {"precompute_reference": []}},
            "params.dpo.precompute_reference",
        ),
    ],
)
def test_unhashable_or_mistyped_params_are_field_errors(api, team, kind, params, field):
    from controlplane.jobs.models import Job

    response = api(team.engineer).post(
        _jobs_url(team), {"kind": kind, "params": params}, format="json"
    )
    _assert_error(response, 400, field)
    assert not Job.objects.exists()


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ('{"kind": "pretrain", "params": {"preset": "a\\u0000b"}}', "params.preset"),
        ('{"kind": "pretrain", "params": {"preset": "\\ud800"}}', "params.preset"),
        (
            '{"kind": "pretrain", "params": {"sample_prompts": ["ok", "\\udc00x"]}}',
            "params.sample_prompts.1",
        ),
        ('{"kind": "pretrain", "params": {"k\\u0000ey": 1}}', "params.k\x00ey"),
        ('{"kind": "inspect\\u0000", "params": {}}', "kind"),
        ('{"kind": "inspect", "experiment": "\\ud83d", "params": {}}', "experiment"),
    ],
)
def test_nul_and_lone_surrogates_in_json_are_field_errors(api, team, text, field):
    from controlplane.jobs.models import Job

    _assert_error(_post_raw(api(team.engineer), _jobs_url(team), text), 400, field)
    assert not Job.objects.exists()


@pytest.mark.parametrize("text_field", ["te\\u0000xt", "te\\ud800xt"])
def test_nul_in_a_param_that_would_be_stored_creates_no_job(
    api, team, make_ready_version, text_field
):
    """A valid request but for one string: it used to reach jsonb, which refused it (500)."""
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import Job

    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Text", slug="text", kind="text"
    )
    version = make_ready_version(dataset, team.engineer, {"a.jsonl": b'{"text": "hi"}\n'})
    params = f'{{"dataset_version_id": {version.pk}, "text_field": "{text_field}"}}'
    text = '{"kind": "data_pipeline", "params": ' + params + "}"
    _assert_error(_post_raw(api(team.engineer), _jobs_url(team), text), 400, "params.text_field")
    assert not Job.objects.exists()


def test_a_surrogate_pair_and_an_escaped_backslash_are_fine(api, team):
    from controlplane.projects.models import Project

    client = api(team.owner)
    text = '{"name": "emoji \\ud83d\\ude00 and \\\\u0000 as text", "slug": "emoji"}'
    response = _post_raw(client, "/api/v1/projects/", text)
    assert response.status_code == 201, response.json()
    assert Project.objects.get(slug="emoji").name == "emoji \U0001f600 and \\u0000 as text"


def test_nul_in_any_json_endpoint_is_refused_before_the_view(api, team):
    from controlplane.projects.models import Project

    before = Project.objects.count()
    response = _post_raw(
        api(team.owner), "/api/v1/projects/", '{"name": "a\\u0000", "slug": "nul"}'
    )
    _assert_error(response, 400, "name")
    assert Project.objects.count() == before


@pytest.mark.parametrize("depth", [65, 100_000])
def test_deep_nesting_is_a_400_not_a_recursion_error(api, team, depth):
    from controlplane.jobs.models import Job

    text = '{"kind": "pretrain", "params": {"model": ' + "[" * depth + "]" * depth + "}}"
    error = _assert_error(_post_raw(api(team.engineer), _jobs_url(team), text), 400)
    assert "nested deeper than 64" in error["message"]
    assert not Job.objects.exists()


def test_brackets_inside_strings_do_not_count_as_nesting(api, team):
    text = '{"name": "' + "[" * 100 + '", "slug": "brackets"}'
    assert _post_raw(api(team.owner), "/api/v1/projects/", text).status_code == 201


@pytest.mark.parametrize("number", ["1e999", "-1e400", "NaN", "Infinity"])
def test_non_finite_numbers_are_refused(api, team, number):
    text = '{"kind": "pretrain", "params": {"optim": {"lr": ' + number + "}}}"
    _assert_error(_post_raw(api(team.engineer), _jobs_url(team), text), 400)


def test_invalid_utf8_is_a_400(api, team):
    response = api(team.owner).generic(
        "POST", "/api/v1/projects/", b'{"name": "\xff\xfe", "slug": "x"}', "application/json"
    )
    _assert_error(response, 400)


@pytest.mark.parametrize(
    ("path", "param"),
    [
        ("jobs/", "kind"),
        ("jobs/", "state"),
        ("datasets/", "kind"),
        ("audit/", "action"),
        ("audit/", "artifact_type"),
        ("audit/", "artifact_id"),
    ],
)
def test_nul_in_a_text_query_parameter_names_the_parameter(api, team, path, param):
    url = f"/api/v1/projects/{team.project.pk}/{path}?{param}=a%00b"
    _assert_error(api(team.viewer).get(url), 400, param)


def test_nul_in_the_metrics_key_names_the_parameter(api, team, make_upload):
    from controlplane.jobs.services import job_create

    upload = make_upload(team.project, team.engineer, b"a\n")
    job = job_create(
        project=team.project, kind="inspect", params={"upload_id": upload.pk}, actor=team.engineer
    )
    url = f"/api/v1/projects/{team.project.pk}/jobs/{job.pk}/metrics/?key=a%00b"
    _assert_error(api(team.viewer).get(url), 400, "key")


def test_unknown_kind_filters_name_the_choices(api, team):
    client = api(team.viewer)
    error = _assert_error(client.get(_jobs_url(team), {"kind": "teleport"}), 400, "kind")
    assert "pretrain" in error["fields"]["kind"][0]
    url = f"/api/v1/projects/{team.project.pk}/datasets/"
    _assert_error(client.get(url, {"kind": "smell"}), 400, "kind")
