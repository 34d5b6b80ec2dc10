"""Rule 2 (data preparation before training) at job creation, with waivers."""

import pytest

pytestmark = pytest.mark.django_db

PREPARED = {"enabled": True, "max_toxic_share": 0.02, "max_pii_per_1k": 1}


def test_training_on_a_redacted_clean_version_is_allowed_and_on_the_jobs_timeline(
    team, set_policy, make_dataset, uploaded, derived, pretrain, decisions
):
    tokens = derived(uploaded(make_dataset()))
    set_policy(data_preparation=PREPARED)

    job = pretrain(tokens)

    (event,) = decisions("policy.allowed", job)
    assert event.payload["gate"] == "job.create"
    assert event.payload["policy"] == "project v1"
    assert event.payload["policy_version_id"] is not None
    assert event.payload["rules"] == ["data_preparation"]
    # The allowance is in the job's own transaction, after the job was created.
    (created,) = decisions("job.created", job)
    assert created.seq < event.seq


def test_training_on_a_version_no_pipeline_redacted_is_refused_and_nothing_is_made(
    team, set_policy, make_dataset, uploaded, derived, pretrain, decisions
):
    from controlplane.jobs.models import Job
    from controlplane.policies.errors import PolicyDenied

    tokens = derived(uploaded(make_dataset()), pii=False)
    set_policy(data_preparation=PREPARED)
    jobs_before = Job.objects.count()

    with pytest.raises(PolicyDenied) as refused:
        pretrain(tokens)

    (denial,) = refused.value.decision.denials
    assert denial.rule == "data_preparation"
    assert "no data-pipeline run with PII redaction" in denial.reason
    assert "pii stage" in denial.fix
    assert Job.objects.count() == jobs_before
    (event,) = decisions("policy.denied", tokens)
    assert event.payload["gate"] == "job.create" and event.payload["policy"] == "project v1"


def test_too_much_toxicity_left_after_cleaning_is_refused(
    team, set_policy, make_dataset, uploaded, derived, pretrain
):
    from controlplane.policies.errors import PolicyDenied

    tokens = derived(
        uploaded(make_dataset()), residual={"toxic_share": 0.05, "pii_per_1k_records": 3}
    )
    set_policy(data_preparation=PREPARED)

    with pytest.raises(PolicyDenied) as refused:
        pretrain(tokens)

    reasons = [d.reason for d in refused.value.decision.denials]
    assert any("5.00% of the cleaned records" in r for r in reasons)
    assert any("3 PII per 1,000 cleaned records remain" in r for r in reasons)


def test_a_version_whose_report_lacks_the_figures_is_refused_with_a_reason(
    team, set_policy, make_dataset, uploaded, derived, pretrain
):
    from controlplane.policies.errors import PolicyDenied

    tokens = derived(uploaded(make_dataset()), report=False)
    set_policy(data_preparation=PREPARED)

    with pytest.raises(PolicyDenied, match="has no pipeline report with after-cleaning figures"):
        pretrain(tokens)


def test_post_training_on_an_upload_without_a_pipeline_report_is_a_409_not_a_500(
    team, api, set_policy, make_dataset, uploaded, base_job, settings
):
    """Only the thresholds are asked (no redaction required): the upload has no report to
    read them from, which is a reason to refuse, not an error."""
    settings.TRAINING_QUEUE = "cpu"
    version = uploaded(make_dataset())
    set_policy(data_preparation={**PREPARED, "require_pii_redaction": False})

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "sft", "params": {"base_job_id": base_job.pk, "dataset_version_id": version.pk}},
        format="json",
    )

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    (denial,) = error["denials"]
    assert denial["rule"] == "data_preparation"
    assert denial["title"] == "Data preparation before training"
    assert denial["reason"] == (
        "plays v1 has no pipeline report with after-cleaning figures, so its toxicity and "
        "residual PII cannot be checked"
    )
    assert "run the data pipeline" in denial["fix"]
    assert denial["subject"] == {"type": "dataset_version", "id": version.pk, "label": "plays v1"}


def test_a_refusal_sent_with_an_idempotency_key_is_still_audited(
    team, api, set_policy, make_dataset, uploaded, derived, decisions, settings
):
    """The key wraps the view in a transaction; the 409 must not roll the audit back."""
    settings.TRAINING_QUEUE = "cpu"
    tokens = derived(uploaded(make_dataset()), pii=False)
    set_policy(data_preparation=PREPARED)

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/",
        {"kind": "pretrain", "params": {"dataset_version_id": tokens.pk}},
        format="json",
        HTTP_IDEMPOTENCY_KEY="policy-refusal-1",
    )

    assert response.status_code == 409, response.content
    assert len(decisions("policy.denied", tokens)) == 1


def test_a_job_that_does_not_train_is_not_asked_about_preparation(
    team, set_policy, make_dataset, uploaded
):
    from controlplane.jobs.services import job_create

    raw = uploaded(make_dataset())
    set_policy(data_preparation=PREPARED)

    job = job_create(
        project=team.project,
        kind="data_pipeline",
        params={"dataset_version_id": raw.pk},
        actor=team.engineer,
    )
    assert job.kind == "data_pipeline"


def test_an_active_waiver_lets_the_job_pass_and_an_expired_one_does_not(
    team, set_policy, make_dataset, uploaded, derived, pretrain, waive, decisions
):
    from controlplane.policies.errors import PolicyDenied

    tokens = derived(uploaded(make_dataset()), pii=False)
    set_policy(data_preparation=PREPARED)

    expired = waive("data_preparation", "dataset_version", tokens.pk, days=-1)
    with pytest.raises(PolicyDenied):
        pretrain(tokens)

    active = waive("data_preparation", "dataset_version", tokens.pk, days=7)
    job = pretrain(tokens)

    (event,) = decisions("policy.allowed", job)
    (waived,) = event.payload["waived"]
    assert waived["rule"] == "data_preparation" and waived["waiver"] == active.pk
    assert waived["waiver"] != expired.pk


def test_the_job_form_shows_the_refusal_as_a_banner(
    team, client, set_policy, make_dataset, uploaded, derived, settings
):
    settings.TRAINING_QUEUE = "cpu"
    dataset = make_dataset()
    tokens = derived(uploaded(dataset), pii=False)
    set_policy(data_preparation=PREPARED)
    client.force_login(team.engineer)

    page = client.post(
        f"/projects/{team.project.pk}/datasets/{dataset.pk}/v{tokens.number}/",
        {
            "action": "train",
            "preset": "tiny",
            "max_iters": 12,
            "batch_size": 4,
            "lr": 1e-3,
            "min_lr": 1e-4,
            "warmup_iters": 2,
            "eval_interval": 6,
            "checkpoint_interval": 6,
            "device": "cpu",
        },
    )

    assert page.status_code == 200  # the form again, not the new job's page
    html = page.content.decode()
    assert "Refused by the project v1 policy" in html
    assert "Rule 2: Data preparation before training" in html
    assert "no data-pipeline run with PII redaction" in html
    assert "How to fix:" in html
