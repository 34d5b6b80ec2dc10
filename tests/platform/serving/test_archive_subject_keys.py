"""After a subject-key rotation, the archive's older rows keep the old key's hash; a search
by subject still finds them, and the export's audit event holds the current key's hash."""

from __future__ import annotations

import pytest

from tests.platform.serving.archive_helpers import archive, make_deployment, record

pytestmark = pytest.mark.django_db


def test_a_subject_search_finds_rows_from_before_and_after_a_rotation(team):
    from controlplane.serving.archive import hash_subject, search
    from controlplane.serving.models import InferenceRecord
    from controlplane.subject_keys import project_subject_keys, subject_key_rotate

    deployment = make_deployment(team.project, team.engineer)
    before = [record(0, subject="ann@example.com"), record(1, subject="bob@example.com")]
    archive(deployment, before)
    old_hash = hash_subject(deployment.project, "ann@example.com")

    subject_key_rotate(project=team.project, actor=team.owner)
    deployment.refresh_from_db()
    deployment.project.refresh_from_db()
    # Its replicas are replaced: a running one would go on hashing with the old key.
    assert deployment.config_generation == 2
    after = [record(2, subject="Ann@Example.com"), record(3)]
    archive(deployment, after)  # a replica started after the rotation has the new key
    new_hash = hash_subject(deployment.project, "ann@example.com")

    assert new_hash != old_hash
    stored = dict(InferenceRecord.objects.values_list("request_id", "subject_hash"))
    assert stored[before[0]["id"]] == old_hash and stored[after[0]["id"]] == new_hash
    found = {row.request_id for row in search(deployment, subject="ann@example.com")}
    assert found == {before[0]["id"], after[0]["id"]}
    assert {r.request_id for r in search(deployment, subject="bob@example.com")} == {
        before[1]["id"]
    }
    assert len(project_subject_keys(deployment.project)) == 2


def test_an_export_after_a_rotation_audits_the_current_hash(team, api):
    from controlplane.audit.models import AuditEvent
    from controlplane.subject_keys import subject_hash, subject_key_rotate

    deployment = make_deployment(team.project, team.engineer)
    archive(deployment, [record(0, subject="ann@example.com")])
    project = subject_key_rotate(project=team.project, actor=team.compliance)
    url = (
        f"/api/v1/projects/{team.project.pk}/deployments/{deployment.name}"
        "/requests/export/?subject=ann@example.com"
    )
    response = api(team.viewer).get(url)
    assert response.status_code == 200, response.content
    assert len(b"".join(response.streaming_content).splitlines()) == 1
    event = AuditEvent.objects.get(action="serving_archive.exported")
    assert event.payload["filters"]["subject_hash"] == subject_hash(project, "ann@example.com")
