"""A dropped or disabled audit trigger fails `check --database`, `migrate` and `audit_verify`."""

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError, SystemCheckError
from django.db import connection

pytestmark = pytest.mark.django_db


def _as_owner(*statements):
    with connection.cursor() as cursor:
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # else ALTER TABLE refuses
        for statement in statements:
            cursor.execute(statement)


def test_every_trigger_is_in_place_after_migrating(team, capsys):
    from controlplane.audit.triggers import GUARDS, audit_trigger_problems

    assert audit_trigger_problems() == []
    call_command("check", "--database", "default")
    call_command("audit_verify")
    assert "every audit trigger is in place" in capsys.readouterr().out
    assert len([guard for guard in GUARDS if "postgresql" in guard.vendors]) == 7


def test_a_dropped_trigger_fails_check_migrate_and_audit_verify(team, capsys):
    """The reported fault: DROP TRIGGER went unnoticed by all three."""
    _as_owner("DROP TRIGGER audit_event_no_delete ON audit_auditevent")
    with pytest.raises(
        SystemCheckError, match="audit_event_no_delete on audit_auditevent is MISSING"
    ):
        call_command("check", "--database", "default")
    with pytest.raises(SystemCheckError, match="audit.E001"):
        # call_command skips system checks unless told; `manage.py migrate` runs them.
        call_command("migrate", "--check", skip_checks=False, verbosity=0)
    with pytest.raises(CommandError):
        call_command("audit_verify")
    out = capsys.readouterr().out
    assert "database: trigger audit_event_no_delete on audit_auditevent is MISSING" in out


def test_a_disabled_or_weakened_trigger_is_reported(team):
    from controlplane.audit.triggers import audit_trigger_problems

    _as_owner(
        "ALTER TABLE audit_auditchain DISABLE TRIGGER audit_chain_no_truncate",
        "ALTER TABLE audit_auditchain ENABLE REPLICA TRIGGER audit_chain_advance_only",
        "ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update",
    )
    problems = audit_trigger_problems()
    assert len(problems) == 3
    assert "audit_chain_no_truncate on audit_auditchain is DISABLED" in problems[1]
    assert "audit_chain_advance_only on audit_auditchain is enabled for replica" in problems[2]
    assert "audit_event_no_update on audit_auditevent is not ENABLE ALWAYS" in problems[0]


def test_a_database_mid_upgrade_is_not_reported(team, monkeypatch):
    """Before the head-guard migration runs, its triggers are not expected yet."""
    from controlplane.audit import triggers

    applied = {"initial", "append_only_triggers"}
    _as_owner(
        "DROP TRIGGER audit_chain_advance_only ON audit_auditchain",
        "ALTER TABLE audit_auditevent ENABLE TRIGGER audit_event_no_update",
    )
    monkeypatch.setattr(triggers, "_applied_migration_suffixes", lambda alias: applied)
    assert triggers.audit_trigger_problems() == []


def test_the_repair_in_the_hint_restores_every_guard(team):
    from controlplane.audit.checks import REPAIR_HINT
    from controlplane.audit.triggers import audit_trigger_problems

    _as_owner(
        "DROP TRIGGER audit_event_no_delete ON audit_auditevent",
        "ALTER TABLE audit_auditchain DISABLE TRIGGER audit_chain_advance_only",
    )
    assert len(audit_trigger_problems()) == 2
    assert (
        "migrate --skip-checks audit 0001 && manage.py migrate --skip-checks audit" in REPAIR_HINT
    )
    call_command("migrate", "audit", "0001", verbosity=0)
    call_command("migrate", "audit", verbosity=0)
    assert audit_trigger_problems() == []


@pytest.mark.slow
def test_the_embedded_sqlite_database_is_guarded_and_checked_too(tmp_path):
    """The embedded default: the head guard refuses a rewrite, and a dropped trigger fails
    `check --database default` (read from sqlite_master)."""
    import sqlite3
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {"PATH": "/usr/bin:/bin", "CONTROLPLANE_DATA_DIR": str(tmp_path)}

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    assert manage("migrate", "-v0").returncode == 0
    probe = manage(
        "shell",
        "-c",
        "from django.contrib.auth.models import User\n"
        "from django.db import DatabaseError, connection\n"
        "from controlplane.projects.services import project_create\n"
        "owner = User.objects.create_user('owner', 'o@example.org', 'pw-for-tests-1')\n"
        "project_create(name='S', slug='s', actor=owner)\n"
        "try:\n"
        "    connection.cursor().execute('UPDATE audit_auditchain SET length = 1')\n"
        "except DatabaseError as error:\n"
        "    print('REFUSED', error)\n",
    )
    assert "REFUSED audit chain heads only advance" in probe.stdout, probe.stderr
    assert manage("check", "--database", "default").returncode == 0
    with sqlite3.connect(tmp_path / "db.sqlite3") as database:
        database.execute("DROP TRIGGER audit_chain_no_delete")
    checked = manage("check", "--database", "default")
    assert checked.returncode != 0
    assert "audit_chain_no_delete on audit_auditchain is MISSING" in checked.stderr
