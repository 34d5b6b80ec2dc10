"""Signed chain heads in the object store catch what the database's owner can do (issue 11)."""

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

pytestmark = pytest.mark.django_db


def _chain(project):
    from controlplane.audit.models import AuditChain

    return AuditChain.objects.get(project_id=project.pk)


def _anchor_keys(project) -> list[str]:
    from controlplane.storage import object_store

    prefix = f"system/audit-anchors/project-{project.pk}/"
    return [info.key for info in object_store().list(prefix)]


def _as_superuser(*statements, params=None):
    """What someone holding the database would do: switch a guard off, change rows, back on."""
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # else ALTER TABLE refuses
        for statement in statements:
            cursor.execute(statement, params if "%s" in statement else None)


def _append(project, actor, count: int = 1):
    from controlplane.audit.services import audit_append

    for step in range(count):
        audit_append(
            project=project, actor=actor, action="test.step", artifact=("step", step), payload={}
        )


def test_audit_anchor_writes_one_signed_head_per_length(team, capsys):
    from controlplane.audit.anchors import anchor_keys, key_id
    from controlplane.audit.services import audit_verify
    from controlplane.storage import object_store

    call_command("audit_anchor")
    chain = _chain(team.project)
    (key,) = _anchor_keys(team.project)
    assert key.startswith(f"system/audit-anchors/project-{team.project.pk}/{chain.length:012d}-")
    document = json.loads(object_store().get_bytes(key))
    assert document["scope"] == chain.scope and document["chain_id"] == chain.pk
    assert (document["length"], document["head_hash"]) == (chain.length, chain.head_hash)
    assert document["key_id"] == key_id(anchor_keys()[0]) and len(document["signature"]) == 64
    assert f"{chain.scope}: anchored #{chain.length}" in capsys.readouterr().out

    call_command("audit_anchor", "--project", "alpha")
    assert "already anchored" in capsys.readouterr().out
    assert len(_anchor_keys(team.project)) == 1
    _append(team.project, team.owner)
    call_command("audit_anchor", "--project", "alpha")
    assert len(_anchor_keys(team.project)) == 2
    (result,) = audit_verify(team.project)
    assert result.ok and result.anchors_checked == 2 and result.latest_anchor == chain.length + 1
    assert "2 anchors hold" in result.describe()


def test_deleting_the_tail_and_rewriting_the_head_is_detected(team, capsys):
    """The reported fault: with the triggers off, drop the last events and move the head back.

    Before anchors, the shorter chain recomputed cleanly and audit_verify said "verified".
    """
    from controlplane.audit.services import audit_verify

    call_command("audit_anchor")
    chain = _chain(team.project)
    anchored = chain.length
    keep = chain.events.get(seq=anchored - 2)
    _as_superuser(
        "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_delete",
        "ALTER TABLE audit_auditchain DISABLE TRIGGER audit_chain_advance_only",
        f"DELETE FROM audit_auditevent WHERE chain_id = {chain.pk} AND seq > {keep.seq}",
        f"UPDATE audit_auditchain SET length = {keep.seq}, head_hash = '{keep.hash}'"
        f" WHERE id = {chain.pk}",
        "ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_no_delete",
        "ALTER TABLE audit_auditchain ENABLE ALWAYS TRIGGER audit_chain_advance_only",
    )
    (result,) = audit_verify(team.project)
    assert not result.ok and result.first_bad_seq == keep.seq + 1
    assert "TRUNCATED" in result.reason and f"#{anchored}" in result.reason
    with pytest.raises(CommandError):
        call_command("audit_verify")
    out = capsys.readouterr().out
    assert f"project {team.project.pk}: chain BROKEN at event #{keep.seq + 1}: TRUNCATED" in out


def test_a_consistently_rewritten_history_is_detected(team):
    """Rewrite the last event and recompute its hash and the head: only the anchor knows."""
    from controlplane.audit.chain import canonical_event, event_hash
    from controlplane.audit.services import audit_verify

    _append(team.project, team.owner, 2)
    call_command("audit_anchor")
    first_anchor = _chain(team.project).length
    _append(team.project, team.owner, 2)
    call_command("audit_anchor")
    chain = _chain(team.project)
    victim = chain.events.get(seq=chain.length)
    forged_payload = {"role": "owner"}
    canonical = canonical_event(
        project_id=victim.project_id,
        seq=victim.seq,
        actor_id=victim.actor_id,
        action=victim.action,
        artifact_type=victim.artifact_type,
        artifact_id=victim.artifact_id,
        payload=forged_payload,
        created_at=victim.created_at,
    )
    forged_hash = event_hash(victim.prev_hash, canonical)
    _as_superuser(
        "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_update",
        "ALTER TABLE audit_auditchain DISABLE TRIGGER audit_chain_advance_only",
        "UPDATE audit_auditevent SET payload = %s, hash = %s WHERE id = %s",
        "ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_no_update",
        params=[json.dumps(forged_payload), forged_hash, victim.pk],
    )
    _as_superuser(
        "UPDATE audit_auditchain SET head_hash = %s WHERE id = %s",
        "ALTER TABLE audit_auditchain ENABLE ALWAYS TRIGGER audit_chain_advance_only",
        params=[forged_hash, chain.pk],
    )
    (result,) = audit_verify(team.project)
    assert not result.ok and "REWRITTEN" in result.reason
    assert result.first_bad_seq == first_anchor + 1  # after the last anchor that still holds


def test_truncating_both_tables_is_detected_from_the_anchors(team):
    from controlplane.audit.services import audit_verify

    call_command("audit_anchor")
    _as_superuser(
        "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_truncate",
        "ALTER TABLE audit_auditchain DISABLE TRIGGER audit_chain_no_truncate",
        "TRUNCATE audit_auditevent, audit_auditchain CASCADE",
    )
    results = audit_verify(all_chains=True)
    broken = {result.project_id: result for result in results if not result.ok}
    # None: the platform chain (the owners joined the default organisation on it).
    assert set(broken) == {team.project.pk, team.other_project.pk, None}
    assert "missing from the database" in broken[team.project.pk].reason
    assert (
        audit_verify(team.project)[0]
        .describe()
        .startswith(f"project {team.project.pk}: chain BROKEN")
    )


def test_a_forged_anchor_is_refused(team):
    from django.utils import timezone

    from controlplane.audit.anchors import Anchor, anchor_object_key
    from controlplane.audit.services import audit_verify
    from controlplane.storage import object_store

    chain = _chain(team.project)
    forged = Anchor(
        scope=chain.scope,
        chain_id=chain.pk,
        project_id=chain.project_id,
        length=chain.length,
        head_hash=chain.head_hash,
        anchored_at=timezone.now().isoformat(),
        key_id="000000000000",
    )
    document = {**forged.__dict__, "signature": forged.signature(b"a key the attacker made up")}
    object_store().put_bytes(
        anchor_object_key(chain.scope, chain.length, timezone.now()), json.dumps(document).encode()
    )
    (result,) = audit_verify(team.project)
    assert not result.ok and "bad signature" in result.reason


def test_the_key_is_derived_from_secret_key_unless_set_and_rotates(team, settings):
    from controlplane.audit.anchors import stored_anchors
    from controlplane.audit.services import audit_verify

    settings.AUDIT_ANCHOR_KEY = ""
    call_command("audit_anchor")
    assert audit_verify(team.project)[0].ok
    settings.SECRET_KEY = "another-secret-key"
    assert "bad signature" in audit_verify(team.project)[0].reason

    settings.AUDIT_ANCHOR_KEY = "old-anchor-key"
    _append(team.project, team.owner)
    call_command("audit_anchor")
    settings.AUDIT_ANCHOR_KEY = "new-anchor-key,old-anchor-key"
    _append(team.project, team.owner)
    call_command("audit_anchor")
    (readings,) = stored_anchors(_chain(team.project).scope).values()
    bad = [reading for reading in readings if reading.anchor is None]
    # The old and the new key both verify; only the one derived from SECRET_KEY fails.
    assert len(readings) == 3 and len(bad) == 1 and "bad signature" in bad[0].problem


def test_unreadable_anchors_are_reported_not_verified(team, monkeypatch):
    from controlplane.audit import services
    from workers.storage.errors import StorageError

    def unreachable(*args, **kwargs):
        raise StorageError("connection refused")

    monkeypatch.setattr(services, "stored_anchors", unreachable)
    (result,) = services.audit_verify(team.project)
    assert not result.ok and "could not be read" in result.describe()


def test_every_n_events_asks_the_control_worker_for_an_anchor(
    team, settings, sent_jobs, django_capture_on_commit_callbacks
):
    from controlplane.audit.tasks import ANCHOR_CHAIN_TASK, anchor_audit_chain

    settings.AUDIT_ANCHOR_EVERY_EVENTS = 3
    chain = _chain(team.project)
    to_next = 3 - chain.length % 3
    with django_capture_on_commit_callbacks(execute=True):
        _append(team.project, team.owner, to_next - 1)
    assert not [job for job in sent_jobs if job[0] == ANCHOR_CHAIN_TASK]
    with django_capture_on_commit_callbacks(execute=True):
        _append(team.project, team.owner, 1)
    requested = [job for job in sent_jobs if job[0] == ANCHOR_CHAIN_TASK]
    assert requested == [(ANCHOR_CHAIN_TASK, [chain.pk], "control")]
    assert anchor_audit_chain(chain.pk) is True and len(_anchor_keys(team.project)) == 1


def test_a_broker_outage_never_fails_the_append(team, settings, monkeypatch, caplog):
    from controlplane.audit.services import _request_anchor
    from controlplane.celery_app import app

    def down(*args, **kwargs):
        raise ConnectionError("broker down")

    monkeypatch.setattr(app, "send_task", down)
    _request_anchor(_chain(team.project).pk)
    assert "not requested" in caplog.text


def test_the_beat_anchors_every_chain_that_grew(team):
    from django.conf import settings

    from controlplane.audit.tasks import ANCHOR_CHAINS_TASK, anchor_audit_chains
    from controlplane.celery_app import app

    entry = settings.CELERY_BEAT_SCHEDULE["anchor-audit-chains"]
    assert entry["task"] == ANCHOR_CHAINS_TASK and entry["options"]["queue"] == "control"
    app.loader.import_default_modules()
    assert ANCHOR_CHAINS_TASK in app.tasks
    # alpha, beta and the platform chain (their owners joined the default organisation)
    assert anchor_audit_chains() == 3
    assert anchor_audit_chains() == 0
    _append(team.project, team.owner)
    assert anchor_audit_chains() == 1


def test_deploy_check_warns_when_the_anchor_key_is_derived(settings):
    from controlplane.audit.checks import check_audit_anchor_key

    settings.AUDIT_ANCHOR_KEY = ""
    assert [warning.id for warning in check_audit_anchor_key()] == ["audit.W001"]
    settings.AUDIT_ANCHOR_KEY = "k" * 40
    assert check_audit_anchor_key() == []


@pytest.fixture
def s3_store():
    """The S3 backend on a private moto server (tests/s3server.py), one bucket."""
    from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY, start_s3_server
    from workers.storage.s3 import S3ObjectStore

    endpoint, stop = start_s3_server()
    try:
        store = S3ObjectStore(
            endpoint, "anchors", access_key=ACCESS_KEY, secret_key=SECRET_KEY, region=REGION
        )
        store.ensure_bucket()
        yield store
    finally:
        stop()


def test_anchors_on_an_s3_store_catch_a_truncation_and_are_never_overwritten(team, s3_store):
    from controlplane.audit.anchors import audit_anchor_chains
    from controlplane.audit.services import audit_verify
    from workers.storage.errors import ObjectExistsError

    anchors = audit_anchor_chains(store=s3_store)  # the platform chain's, alpha's, beta's
    (anchor,) = [a for a in anchors if a.chain.project_id == team.project.pk]
    assert audit_verify(team.project, store=s3_store)[0].anchors_checked == 1
    with pytest.raises(ObjectExistsError):
        s3_store.put_bytes(anchor.object_key, b"{}")
    chain = _chain(team.project)
    keep = chain.events.get(seq=chain.length - 1)
    _as_superuser(
        "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_delete",
        "ALTER TABLE audit_auditchain DISABLE TRIGGER audit_chain_advance_only",
        f"DELETE FROM audit_auditevent WHERE chain_id = {chain.pk} AND seq > {keep.seq}",
        f"UPDATE audit_auditchain SET length = {keep.seq}, head_hash = '{keep.hash}'"
        f" WHERE id = {chain.pk}",
    )
    (result,) = audit_verify(team.project, store=s3_store)
    assert not result.ok and result.first_bad_seq == chain.length and "TRUNCATED" in result.reason


def test_a_stray_folder_under_the_anchor_prefix_is_reported_not_a_crash(team):
    from controlplane.audit.services import audit_verify
    from controlplane.storage import object_store

    object_store().put_bytes("system/audit-anchors/project-abc/1.json", b"{}")
    stray = [result for result in audit_verify(all_chains=True) if not result.ok]
    assert len(stray) == 1 and "chain project:abc is missing" in stray[0].reason
