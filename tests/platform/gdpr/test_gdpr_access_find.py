"""The erasure job's find-only mode (the search an access request runs): the subject's
records come back as one JSONL part per version, and nothing is rewritten."""

from __future__ import annotations

import json

import pytest

from tests.platform.gdpr.test_gdpr_erasure import ANN, support  # noqa: F401 - the fixture

pytestmark = pytest.mark.django_db


def test_find_mode_returns_the_subjects_records_and_rewrites_nothing(
    team,
    support,
    file_request,
    run_on_worker,
    sent_jobs,  # noqa: F811
):
    from controlplane.gdpr.erasure import _job_request
    from controlplane.jobs.services.lifecycle import _job_insert
    from controlplane.storage import object_store

    request = file_request(kind="access", identifiers=[{"type": "email", "value": ANN}])
    job_request = _job_request(request, [support])
    job_request.params["mode"] = "find"
    job = _job_insert(team.project, "erasure", job_request, team.compliance, "")
    assert ANN not in json.dumps(job.params)

    job = run_on_worker(job)
    assert job.state == "succeeded", job.error
    assert not job.produced_versions.exists()
    (outcome,) = job.result["versions"]
    assert outcome["found"]["records"] == 4
    part = object_store().get_bytes(outcome["part"]["key"]).decode()
    rows = [json.loads(line) for line in part.splitlines()]
    assert [r["line"] for r in rows] == [1, 4, 7, 10]
    assert {r["file"] for r in rows} == {"log.jsonl"}
    assert all(r["record"]["customer"] == ANN for r in rows)
    support.refresh_from_db()
    assert support.state == "ready"
    assert ANN not in json.dumps([job.params, job.result])
