"""The chain badge of every project page: cached, extended by the new events only, and a
full verification at least every FULL_EVERY_SECONDS."""

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _empty_cache():
    cache.clear()
    yield
    cache.clear()


def _badge(team, user=None) -> tuple[int, str, list[str]]:
    client = Client()
    client.force_login(user or team.viewer)
    with CaptureQueriesContext(connection) as queries:
        response = client.get(f"/projects/{team.project.pk}/audit/badge/")
    return response.status_code, response.content.decode(), [q["sql"] for q in queries]


def _tamper(event_pk: int) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update")
        cursor.execute(
            "UPDATE audit_auditevent SET payload = %s WHERE id = %s", ['{"forged": 1}', event_pk]
        )
        cursor.execute("ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update")


def _event_reads(sqls: list[str]) -> list[str]:
    return [sql for sql in sqls if 'FROM "audit_auditevent"' in sql]


def test_project_pages_load_the_badge(team):
    client = Client()
    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/jobs/").content.decode()
    assert f'hx-get="/projects/{team.project.pk}/audit/badge/"' in page


def test_second_view_reads_no_event(team):
    from controlplane.audit.models import AuditChain

    length = AuditChain.objects.get(project=team.project).length
    status, first, sqls = _badge(team)
    assert status == 200 and f"chain verified ({length} events)" in first
    assert _event_reads(sqls)  # the first view verified the chain
    _status, second, sqls = _badge(team)
    assert second == first
    assert _event_reads(sqls) == []


def test_new_events_are_verified_alone(team):
    from controlplane.audit.services import audit_append

    _badge(team)
    audit_append(project=team.project, actor=team.owner, action="test.one", artifact=("job", 1))
    before = team.project.audit_chain.length if hasattr(team.project, "audit_chain") else None
    _status, page, sqls = _badge(team)
    reads = _event_reads(sqls)
    assert len(reads) == 1 and '"seq" >' in reads[0]
    assert "chain verified" in page
    assert before is None or f"({before} events)" in page


def test_a_forged_new_event_breaks_the_badge(team):
    from controlplane.audit.services import audit_append

    _badge(team)
    forged = audit_append(project=team.project, actor=team.owner, action="t", artifact=("job", 2))
    _tamper(forged.pk)
    _status, page, _sqls = _badge(team)
    assert f"chain broken at #{forged.seq}" in page


def test_an_old_forgery_is_found_by_the_next_full_check(team, monkeypatch):
    from controlplane.audit import status as chain_status
    from controlplane.audit.models import AuditEvent

    _badge(team)
    victim = AuditEvent.objects.filter(project_id=team.project.pk).order_by("seq")[1]
    _tamper(victim.pk)
    assert "chain verified" in _badge(team)[1]  # cached: not re-read on every page view
    now = chain_status.time.time()
    monkeypatch.setattr(
        chain_status.time, "time", lambda: now + chain_status.FULL_EVERY_SECONDS + 1
    )
    assert f"chain broken at #{victim.seq}" in _badge(team)[1]


def test_verify_now_checks_the_whole_chain_and_refreshes_the_badge(team):
    from controlplane.audit.models import AuditEvent

    _badge(team)
    victim = AuditEvent.objects.filter(project_id=team.project.pk).order_by("seq")[0]
    _tamper(victim.pk)
    client = Client()
    client.force_login(team.viewer)
    audit_page = f"/projects/{team.project.pk}/audit/"
    assert "chain verified" in client.get(audit_page).content.decode()  # the cached result
    # A full check costs seconds: owners and compliance officers ask for it, not viewers.
    assert "Verify the whole chain now" not in client.get(audit_page).content.decode()
    assert client.post(f"{audit_page}verify/").status_code == 403
    client.force_login(team.compliance)
    response = client.post(f"{audit_page}verify/", follow=True)
    page = response.content.decode()
    assert f"chain broken at #{victim.seq}" in page and "Verified in full" in page
    assert f"chain broken at #{victim.seq}" in _badge(team)[1]  # and the cache knows
    assert client.get(f"{audit_page}verify/").status_code == 405


def test_outsider_gets_no_badge(team):
    assert _badge(team, team.outsider)[0] == 404
