"""The overview an IT leader opens shows each of their projects' compliance: the policy in
force, open violations by rule, waivers, holds and recent denials; never another's."""

from __future__ import annotations

import pytest
from django.utils import timezone

from controlplane.policies.models import Violation

pytestmark = pytest.mark.django_db


def test_the_overview_shows_the_members_projects_compliance_only(team, client):
    for project in (team.project, team.other_project):
        Violation.objects.create(
            project=project,
            rule="licences",
            subject_type="dataset_version",
            subject_id=project.pk * 100,
            subject_label=f"data of {project.slug}",
            reason="licence 'x' is not an SPDX licence expression",
            policy_version="platform v0",
            last_seen_at=timezone.now(),
        )
    client.force_login(team.viewer)

    page = client.get("/").content.decode()

    assert (
        '<h2>Compliance <a class="small" href="/overview/export/compliance.csv">CSV</a></h2>'
        in page
    )
    assert "Licences and sources: <strong>1</strong>" in page
    assert "/projects/alpha/compliance/" in page
    assert "/projects/beta/compliance/" not in page
