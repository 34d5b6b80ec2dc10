"""The audit page: filters by actor, action, artifact and date, pagination that keeps
them, and the filtered events exported as CSV or JSONL (role-checked, audited)."""

import csv
import datetime as dt
import io
import json

import pytest
from django.test import Client
from django.utils import timezone

pytestmark = pytest.mark.django_db


def _page(team, user, **params) -> str:
    client = Client()
    client.force_login(user)
    response = client.get(f"/projects/{team.project.pk}/audit/", params)
    assert response.status_code == 200
    return response.content.decode()


def _export(team, user, export_format: str, **params):
    client = Client()
    client.force_login(user)
    return client.get(f"/projects/{team.project.pk}/audit/events.{export_format}", params)


def _rows(response) -> list[dict]:
    text = b"".join(response.streaming_content).decode()
    return list(csv.DictReader(io.StringIO(text)))


def test_filter_form_has_labels_and_lists_actors_and_actions(team):
    page = _page(team, team.viewer)
    for label in ("Actor", "Action", "Artifact type", "Artifact id", "From", "To"):
        assert f"{label} <" in page, label
    assert '<option value="member.added">member.added</option>' in page
    assert f'<option value="{team.owner.pk}">owner</option>' in page


def _count(team, **lookups) -> int:
    from controlplane.audit.models import AuditEvent

    return AuditEvent.objects.filter(project_id=team.project.pk, **lookups).count()


def test_filters_by_actor_and_action(team):
    added = _count(team, actor_id=team.owner.pk, action="member.added")
    assert added >= 3  # engineer, viewer, compliance (and the owner, by project_create)
    page = _page(team, team.viewer, actor=team.owner.pk, action="member.added")
    assert page.count("<td>member.added</td>") == added
    assert "<td>project.created</td>" not in page
    assert f"{added} events match the filters" in page
    assert "<td>member.added</td>" not in _page(team, team.viewer, actor=team.viewer.pk)


def test_filters_by_date_range(team):
    today = timezone.localdate()
    assert "member.added" in _page(team, team.viewer, since=today, until=today)
    yesterday = today - dt.timedelta(days=1)
    page = _page(team, team.viewer, until=yesterday)
    assert "No events match these filters" in page


def test_bad_filters_are_form_errors_not_500s(team):
    page = _page(team, team.viewer, since="2026-13-40")
    assert "Enter a valid date" in page
    page = _page(team, team.viewer, since="2026-05-02", until="2026-05-01")
    assert "before it starts" in page
    page = _page(team, team.viewer, actor="somebody")
    assert "Select a valid choice" in page
    assert "No events match" in _page(team, team.viewer, actor="999999")  # no such actor


def test_pagination_keeps_the_filters(team):
    from controlplane.audit.services import audit_append

    for n in range(60):
        audit_append(
            project=team.project, actor=team.engineer, action="test.poked", artifact=("job", n)
        )
    page = _page(team, team.viewer, action="test.poked")
    assert "page 1 of 2" in page
    assert "?page=2&amp;action=test.poked" in page
    second = _page(team, team.viewer, action="test.poked", page=2)
    assert second.count("<td>test.poked</td>") == 10 and "<td>member.added</td>" not in second


def test_csv_export_holds_the_filtered_events_and_is_audited(team):
    from controlplane.audit.models import AuditEvent

    response = _export(team, team.compliance, "csv", action="member.added")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = _rows(response)
    assert [row["action"] for row in rows] == ["member.added"] * _count(team, action="member.added")
    assert {row["actor"] for row in rows} == {"owner"}
    assert json.loads(rows[0]["payload"])  # the payload as JSON text
    recorded = AuditEvent.objects.get(action="audit.events_exported")
    assert recorded.actor_id == team.compliance.pk
    assert recorded.payload == {"format": "csv", "filters": {"action": "member.added"}}


def test_jsonl_export_without_filters_holds_every_event_up_to_itself(team):
    from controlplane.audit.models import AuditEvent

    response = _export(team, team.owner, "jsonl")
    assert response["Content-Type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in b"".join(response.streaming_content).splitlines()]
    seqs = [line["seq"] for line in lines]
    assert seqs == sorted(
        AuditEvent.objects.filter(project_id=team.project.pk).values_list("seq", flat=True),
        reverse=True,
    )
    assert lines[0]["action"] == "audit.events_exported"


def test_exports_are_for_owners_and_compliance_only(team):
    assert _export(team, team.viewer, "csv").status_code == 403
    assert _export(team, team.engineer, "jsonl").status_code == 403
    assert _export(team, team.outsider, "csv").status_code == 404
    assert _export(team, team.owner, "xml").status_code == 404
    assert "events.csv" not in _page(team, team.viewer)
    page = _page(team, team.compliance, action="member.added")
    assert "events.csv?action=member.added" in page and "events.jsonl?action=member.added" in page


def test_export_with_a_bad_filter_is_refused_with_the_form_error(team):
    response = _export(team, team.owner, "csv", since="yesterday")
    assert response.status_code == 400
    assert "Enter a valid date" in response.content.decode()


def test_export_belongs_to_its_project(team):
    """The other project's events never leak into this project's export."""
    rows = _rows(_export(team, team.owner, "csv"))
    assert {row["artifact_id"] for row in rows if row["artifact_type"] == "project"} == {
        str(team.project.pk)
    }


def test_details_read_as_key_value_text_not_a_python_dict(team):
    page = _page(team, team.viewer, action="member.added")
    assert "role: viewer · user_id: " in page
    assert "{&#x27;role&#x27;" not in page
