"""The database protects the chain heads like the events, and refuses TRUNCATE (issue 11)."""

import threading

import pytest
from django.db import DatabaseError, connection, connections, transaction

pytestmark = pytest.mark.django_db


def _chain(project):
    from controlplane.audit.models import AuditChain

    return AuditChain.objects.get(project_id=project.pk)


def _refused(sql: str, params=None, match: str = "") -> None:
    with connection.cursor() as cursor:
        # Fire the deferred FK checks of this test's transaction: TRUNCATE and ALTER TABLE
        # refuse to run with trigger events pending.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    with pytest.raises(DatabaseError, match=match), transaction.atomic(), connection.cursor() as c:
        c.execute(sql, params)


def test_truncate_of_the_event_table_is_refused(team):
    _refused("TRUNCATE audit_auditevent", match="TRUNCATE of audit_auditevent refused")
    _refused("TRUNCATE audit_auditevent CASCADE", match="append-only")


def test_truncate_of_the_chain_table_is_refused_even_cascading(team):
    _refused("TRUNCATE audit_auditchain CASCADE", match="TRUNCATE of audit_auditchain refused")
    assert _chain(team.project).events.count() == _chain(team.project).length > 0


def test_rewriting_the_head_after_deleting_the_tail_is_refused(team):
    """The reported fault: delete the last events, then point the head at the new last one."""
    chain = _chain(team.project)
    length = chain.length
    keep = chain.events.get(seq=length - 2)
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # else ALTER TABLE refuses
        cursor.execute("ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_delete")
        cursor.execute(
            "DELETE FROM audit_auditevent WHERE chain_id = %s AND seq > %s", [chain.pk, keep.seq]
        )
    _refused(
        "UPDATE audit_auditchain SET length = %s, head_hash = %s WHERE id = %s",
        [keep.seq, keep.hash, chain.pk],
        match="only advances by one event",
    )


def test_the_head_advances_only_onto_an_existing_linked_event(team):
    chain = _chain(team.project)
    update = "UPDATE audit_auditchain SET length = %s, head_hash = %s WHERE id = %s"
    _refused(update, [chain.length + 1, "f" * 64, chain.pk], match="no event #")
    _refused(update, [chain.length + 2, chain.head_hash, chain.pk], match="only advances")
    _refused(update, [chain.length, chain.head_hash, chain.pk], match="only advances")
    _refused(
        "UPDATE audit_auditchain SET scope = 'platform-2' WHERE id = %s",
        [chain.pk],
        match="identity",
    )


def test_chain_rows_are_never_deleted_and_start_empty(team):
    chain = _chain(team.project)
    _refused("DELETE FROM audit_auditchain WHERE id = %s", [chain.pk], match="permanent")
    _refused(
        "INSERT INTO audit_auditchain (scope, length, head_hash) VALUES ('forged', 5, %s)",
        ["a" * 64],
        match="must start empty",
    )


def test_a_temporary_table_cannot_stand_in_for_the_events(team):
    """pg_temp comes first in the search path: the head trigger must not look there."""
    chain = _chain(team.project)
    forged = "e" * 64
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE audit_auditevent (LIKE public.audit_auditevent)")
        cursor.execute(
            "INSERT INTO audit_auditevent (id, chain_id, seq, hash, prev_hash, action,"
            " artifact_type, artifact_id, payload, created_at)"
            " VALUES (0, %s, %s, %s, %s, 'x', 'x', 'x', '{}', now())",
            [chain.pk, chain.length + 1, forged, chain.head_hash],
        )
    _refused(
        "UPDATE audit_auditchain SET length = length + 1, head_hash = %s WHERE id = %s",
        [forged, chain.pk],
        match="no event #",
    )


def test_the_guards_fire_in_replica_mode_too(team):
    chain = _chain(team.project)
    with connection.cursor() as cursor:
        cursor.execute("SET session_replication_role = replica")
    try:
        _refused("TRUNCATE audit_auditevent CASCADE", match="append-only")
        _refused("DELETE FROM audit_auditchain WHERE id = %s", [chain.pk], match="permanent")
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SET session_replication_role = origin")


@pytest.mark.django_db(transaction=True)
def test_concurrent_appends_all_pass_the_head_guard(make_user):
    """The real append path under the guard: writers in parallel, one chain, no gaps."""
    from controlplane.audit.services import audit_append, audit_verify
    from controlplane.projects.services import project_create

    owner = make_user("owner")
    project = project_create(name="Busy", slug="busy", actor=owner)
    start = _chain(project).length
    writers, per_writer = 4, 10
    errors: list[BaseException] = []
    barrier = threading.Barrier(writers)

    def write(index: int) -> None:
        try:
            barrier.wait()
            for step in range(per_writer):
                audit_append(
                    project=project,
                    actor=owner,
                    action="test.append",
                    artifact=("writer", index),
                    payload={"step": step},
                )
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=write, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert _chain(project).length == start + writers * per_writer
    (result,) = audit_verify(project)
    assert result.ok, result.describe()


@pytest.mark.django_db(transaction=True)
def test_verifying_while_events_are_appended_never_reports_a_broken_chain(make_user):
    """The head row and the events are read from one snapshot: an append in between must
    not look like a head that disagrees with its events (the dashboard badge under load)."""
    from controlplane.audit.services import audit_append, audit_verify
    from controlplane.projects.services import project_create

    owner = make_user("owner")
    project = project_create(name="Busy", slug="busy", actor=owner)
    stop = threading.Event()

    def keep_appending() -> None:
        try:
            while not stop.is_set():
                audit_append(project=project, actor=owner, action="test.append", artifact=("x", 1))
        finally:
            connections.close_all()

    writer = threading.Thread(target=keep_appending)
    writer.start()
    try:
        results = [audit_verify(project)[0] for _ in range(40)]
    finally:
        stop.set()
        writer.join(timeout=30)
    assert [result.describe() for result in results if not result.ok] == []
    assert results[-1].events_checked > results[0].events_checked  # it did run concurrently
