"""The "New job" pages: one form per kind with the API's fields, submitted through the same
service as the API (its validation, policy, budget and audit), for engineers and owners only."""

import hashlib

import pytest

pytestmark = pytest.mark.django_db

MODEL = ["model/config.json", "model/model.safetensors", "model/tokenizer.json"]


def _url(team, kind=""):
    return f"/projects/{team.project.pk}/jobs/new/" + (f"{kind}/" if kind else "")


def _succeeded_with(team, kind, names):
    from controlplane.jobs.models import Job, JobArtifact

    job = Job.objects.create(
        project=team.project, kind=kind, state="succeeded", created_by=team.engineer
    )
    for name in names:
        JobArtifact.objects.create(
            job=job,
            name=name,
            object_key=f"{job.output_prefix}attempt-1/{name}",
            sha256=hashlib.sha256(name.encode()).hexdigest(),
            size=len(name),
        )
    return job


def test_every_kind_a_member_may_start_is_offered():
    from controlplane.jobs.kinds import _VALIDATORS
    from controlplane.jobs.new_views import STARTABLE

    offered = {entry.kind for entry in STARTABLE}
    # Erasure jobs come from an approved erasure request only (they refuse the API too).
    assert offered == set(_VALIDATORS) - {"erasure"}


@pytest.mark.parametrize(
    "kind", ["inspect", "data_pipeline", "pretrain", "diffusion", "dpo", "ppo"]
)
def test_a_kinds_form_has_exactly_the_apis_fields(team, kind):
    from controlplane.jobs.forms import NewJobForm, _leaves
    from controlplane.jobs.params import PLATFORM_FIELDS, param_schema

    form = NewJobForm(kind=kind, project=team.project)
    api_fields = {dotted for dotted, _ in _leaves(param_schema(kind))} | set(PLATFORM_FIELDS[kind])
    assert set(form.fields) - {"experiment"} == api_fields
    # Grouped as the schema nests them, every field in exactly one fieldset.
    grouped = [name for section in form.sections for name in section.fields]
    assert sorted(grouped) == sorted(form.fields)


def test_the_list_links_every_kinds_form_and_each_renders(team, client):
    from controlplane.jobs.new_views import STARTABLE

    client.force_login(team.engineer)
    page = client.get(_url(team)).content.decode()
    for entry in STARTABLE:
        assert f'href="{_url(team, entry.kind.value)}"' in page
        form = client.get(_url(team, entry.kind.value))
        assert form.status_code == 200, entry.kind
        assert f"Start {entry.kind.value} job" in form.content.decode()
    assert client.get(_url(team, "erasure")).status_code == 404
    assert client.get(_url(team, "nonsense")).status_code == 404


def test_an_image_job_from_the_form_is_the_job_the_api_makes(team, client, api, settings):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job

    settings.TRAINING_QUEUE = "cpu"
    client.force_login(team.engineer)
    response = client.post(
        _url(team, "diffusion"),
        {"preset": "tiny", "train.steps": "6", "experiment": "digits", "seed": ""},
    )
    job = Job.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"/jobs/{job.pk}/")
    assert job.kind == "diffusion" and job.experiment == "digits"
    through_api = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "diffusion", "params": {"preset": "tiny", "train": {"steps": 6}}},
        format="json",
    )
    assert through_api.status_code == 201
    assert Job.objects.get(pk=through_api.json()["id"]).params == job.params
    assert AuditEvent.objects.filter(
        action="job.created", artifact_type="job", artifact_id=str(job.pk)
    ).exists()


def test_the_platforms_errors_land_on_the_fields_they_name(team, client):
    from controlplane.jobs.models import Job

    client.force_login(team.engineer)
    response = client.post(_url(team, "pretrain"), {"optim.lr": "0.0001", "optim.min_lr": "0.001"})
    assert response.status_code == 200 and not Job.objects.exists()
    form = response.context["form"]
    assert form.errors["dataset_version_id"] == ["this field is required"]
    assert form.errors["optim.min_lr"] == ["must not exceed optim.lr"]
    page = response.content.decode()
    assert "must not exceed optim.lr" in page and 'aria-invalid="true"' in page


def test_what_the_browser_gets_wrong_is_said_before_asking_the_platform(team, client):
    from controlplane.jobs.models import Job

    client.force_login(team.engineer)
    response = client.post(
        _url(team, "data_pipeline"), {"val_fraction": "lots", "pipeline": "{not json"}
    )
    form = response.context["form"]
    assert "val_fraction" in form.errors and "not valid JSON" in form.errors["pipeline"][0]
    assert not Job.objects.exists()


def test_an_inspect_job_from_the_form(team, client, make_upload):
    from controlplane.jobs.models import Job

    upload = make_upload(team.project, team.engineer, b"a\nb\n", filename="notes.txt")
    client.force_login(team.engineer)
    form = client.get(_url(team, "inspect")).content.decode()
    assert f"notes.txt (upload {upload.pk})" in form
    missing = client.post(_url(team, "inspect"), {})
    assert missing.context["form"].errors["upload_id"] == ["this field is required"]
    response = client.post(_url(team, "inspect"), {"upload_id": upload.pk, "preview_records": 3})
    job = Job.objects.get()
    assert response.status_code == 302 and job.params["upload_id"] == upload.pk
    assert job.params["preview_records"] == 3


def test_adapters_are_trained_only_when_a_lora_setting_is_given(team, client, settings):
    from controlplane.jobs.models import Job

    settings.TRAINING_QUEUE = "cpu"
    base = _succeeded_with(team, "pretrain", MODEL)
    client.force_login(team.engineer)
    page = client.get(_url(team, "dpo")).content.decode()
    assert f"job {base.pk} (pretrain)" in page and "train LoRA adapters only" in page
    client.post(_url(team, "dpo"), {"base_job_id": base.pk, "dpo.beta": "0.3"})
    client.post(_url(team, "dpo"), {"base_job_id": base.pk, "lora.r": "4"})
    full, adapters = Job.objects.filter(kind="dpo").order_by("id")
    assert "lora" not in full.params and full.params["dpo"]["beta"] == 0.3
    assert adapters.params["lora"]["r"] == 4
    assert adapters.params["train"]["lr"] == 1e-4  # the adapter learning rate by default


def test_a_list_parameter_is_one_line_per_item(team, client, settings, make_ready_version):
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.forms import NewJobForm

    form = NewJobForm(
        {"sample_prompts": "ROMEO:\n\\nJULIET:\n\n"}, kind="pretrain", project=team.project
    )
    assert form.is_valid()
    assert form.job_params() == {"sample_prompts": ["ROMEO:", "\nJULIET:"]}
    nul = NewJobForm({"sample_prompts": "a\x00b"}, kind="pretrain", project=team.project)
    assert not nul.is_valid() and "Null characters" in nul.errors["sample_prompts"][0]
    # Not a token-shard version: offered nowhere, refused by the platform if posted anyway.
    dataset = dataset_create(
        project=team.project, actor=team.engineer, name="Raw", slug="raw", kind="text"
    )
    raw = make_ready_version(dataset, team.engineer, {"a.txt": b"hello"})
    client.force_login(team.engineer)
    assert "raw v1" not in client.get(_url(team, "pretrain")).content.decode()
    assert "raw v1" in client.get(_url(team, "data_pipeline")).content.decode()
    refused = client.post(_url(team, "pretrain"), {"dataset_version_id": raw.pk})
    assert "dataset_version_id" in refused.context["form"].errors


def test_a_policy_refusal_is_the_banner_above_the_form(team, client, make_upload):
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import Job
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    policy_update(
        project=team.project,
        actor=team.compliance,
        changes={"compute": {"enabled": True, "allowed_queues": ["gpu"]}},
        reason="inspect jobs run on the cpu queue: refused",
        base_version=current_number(team.project),
    )
    upload = make_upload(team.project, team.engineer, b"a\nb\n")
    client.force_login(team.engineer)
    page = client.post(_url(team, "inspect"), {"upload_id": upload.pk})
    html = page.content.decode()
    assert page.status_code == 200 and "Rule 7: Compute" in html
    assert 'href="/projects/alpha/compliance/policy/#rule-compute"' in html
    assert not Job.objects.exists()
    assert AuditEvent.objects.filter(project_id=team.project.pk, action="policy.denied").exists()


def test_a_spent_budget_is_said_on_the_page(team, client, monkeypatch):
    from controlplane.jobs import views
    from controlplane.jobs.models import Job
    from controlplane.jobs.services import JobError

    def spent(**kwargs):
        raise JobError("the project's budget for this month is spent")

    monkeypatch.setattr(views, "job_create", spent)
    client.force_login(team.engineer)
    response = client.post(_url(team, "diffusion"), {"preset": "tiny"}, follow=True)
    assert "budget for this month is spent" in response.content.decode()
    assert not Job.objects.exists()


def test_only_engineers_and_owners_start_jobs_here(team, client):
    from controlplane.jobs.models import Job

    for user in (team.engineer, team.owner):
        client.force_login(user)
        assert client.get(_url(team)).status_code == 200
        assert "New job" in client.get(f"/projects/{team.project.pk}/jobs/").content.decode()
        assert "new job" in client.get(f"/projects/{team.project.pk}/").content.decode()
    client.force_login(team.viewer)
    assert "New job" not in client.get(f"/projects/{team.project.pk}/jobs/").content.decode()
    assert "new job" not in client.get(f"/projects/{team.project.pk}/").content.decode()
    assert client.get(_url(team)).status_code == 403
    assert client.get(_url(team, "diffusion")).status_code == 403
    assert client.post(_url(team, "diffusion"), {"preset": "tiny"}).status_code == 403
    client.force_login(team.outsider)
    assert client.get(_url(team)).status_code == 404
    assert client.post(_url(team, "diffusion"), {"preset": "tiny"}).status_code == 404
    assert not Job.objects.exists()


@pytest.mark.parametrize("kind", ["pretrain", "lora", "ppo", "evaluate", "vae"])
def test_number_fields_carry_the_schemas_range_and_default(team, kind):
    from controlplane.jobs.forms import NewJobForm, _leaves
    from controlplane.jobs.params import param_schema

    form = NewJobForm(kind=kind, project=team.project)
    for dotted, leaf in _leaves(param_schema(kind)):
        if leaf.get("type") not in ("integer", "number") or "enum" in leaf:
            continue
        field = form.fields[dotted]
        assert field.min_value == leaf.get("minimum", leaf.get("exclusiveMinimum")), dotted
        assert field.max_value == leaf.get("maximum", leaf.get("exclusiveMaximum")), dotted
        assert not field.required  # blank: the default applies, as in the API
        if "default" in leaf:
            default = leaf["default"]
            shown = f"{default:g}" if isinstance(default, float) else str(default)
            assert field.widget.attrs["placeholder"] == shown, dotted
