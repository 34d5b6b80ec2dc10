import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import DatabaseError, connection, transaction

pytestmark = pytest.mark.django_db


def _events(project):
    from controlplane.audit.models import AuditEvent

    return list(AuditEvent.objects.filter(project_id=project.pk).order_by("seq"))


def test_events_link_into_a_chain(team):
    events = _events(team.project)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    for before, after in zip(events, events[1:], strict=False):
        assert after.prev_hash == before.hash


def test_database_refuses_update_and_delete(team):
    from controlplane.audit.models import AuditEvent

    event = _events(team.project)[0]
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).update(action="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(pk=event.pk).delete()


def test_verify_names_the_first_tampered_event(team, capsys):
    from controlplane.audit.services import audit_verify

    assert all(result.ok for result in audit_verify(all_chains=True))
    victim = _events(team.project)[2]
    with connection.cursor() as cursor:
        # Fire the deferred FK checks of this test's transaction, else ALTER TABLE refuses.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        # What an attacker with database superuser rights would do.
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update")
        cursor.execute(
            "UPDATE audit_auditevent SET payload = %s WHERE id = %s",
            ['{"role": "owner"}', victim.pk],
        )
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update")
    (result,) = audit_verify(team.project)
    assert not result.ok and result.first_bad_seq == victim.seq
    with pytest.raises(CommandError):
        call_command("audit_verify", "--project", "alpha")
    assert f"BROKEN at event #{victim.seq}" in capsys.readouterr().out


def test_verify_catches_a_deleted_event(team):
    from controlplane.audit.services import audit_verify

    victim = _events(team.project)[1]
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_delete")
        cursor.execute("DELETE FROM audit_auditevent WHERE id = %s", [victim.pk])
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_delete")
    (result,) = audit_verify(team.project)
    assert not result.ok and result.first_bad_seq == victim.seq


def test_audit_verify_command_reports_every_chain(team, capsys):
    call_command("audit_verify")
    out = capsys.readouterr().out
    assert f"project {team.project.pk}:" in out and "chain verified" in out


def test_api_timeline_filters_by_artifact_and_shows_badge(team, api, make_upload, client):
    upload = make_upload(team.project, team.engineer, b"x\n")
    client_api = api(team.compliance)
    events = client_api.get(
        f"/api/v1/projects/{team.project.pk}/audit/",
        {"artifact_type": "upload", "artifact_id": upload.pk},
    ).json()["results"]
    assert [e["action"] for e in events] == ["upload.created"]
    assert client_api.get(f"/api/v1/projects/{team.project.pk}/audit/verify/").json()["ok"] is True
    client.force_login(team.compliance)
    page = client.get(
        f"/projects/{team.project.pk}/audit/?artifact_type=upload&artifact_id={upload.pk}"
    ).content.decode()
    assert "chain verified" in page and "upload.created" in page


def test_subject_identifiers_are_hashed():
    from controlplane.audit.chain import hash_subject

    digest = hash_subject("jane.doe@example.org")
    assert (
        len(digest) == 64
        and "jane" not in digest
        and digest == hash_subject("jane.doe@example.org")
    )
