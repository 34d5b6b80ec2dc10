"""compose.yaml's database roles, for real: the app role appends audit events but cannot
TRUNCATE, drop or disable a trigger, or rewrite a chain head (issue 11).

A throwaway database and two throwaway roles on the test PostgreSQL, set up by the very SQL
file compose runs (compose/postgres-init/roles/controlplane-roles.sql), migrated as the
owner; a Django process logged in as the app role then tries what an attacker would.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

ROOT = Path(__file__).resolve().parents[3]
ROLES_SQL = ROOT / "compose" / "postgres-init" / "roles" / "controlplane-roles.sql"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed"),
    pytest.mark.skipif(
        settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql",
        reason="database roles are PostgreSQL's",
    ),
]

PROBE = """
import json
from django.contrib.auth.models import User
from django.core.management import call_command
from django.db import DatabaseError, connection, transaction
from controlplane.audit.models import AuditChain
from controlplane.audit.services import audit_verify
from controlplane.audit.triggers import audit_trigger_problems
from controlplane.projects.services import project_create

owner = User.objects.create_user("owner", "owner@example.org", "pw-for-tests-1")
project = project_create(name="Roles", slug="roles", actor=owner)
chain = AuditChain.objects.get(project=project)
first = chain.events.get(seq=1)
outcome = {"appended": chain.length}

def attempt(name, sql, params=None):
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
        outcome[name] = "ACCEPTED"
    except DatabaseError as error:
        outcome[name] = str(error).splitlines()[0]

attempt("truncate_events", "TRUNCATE audit_auditevent")
attempt("truncate_chains", "TRUNCATE audit_auditchain CASCADE")
attempt("drop_trigger", "DROP TRIGGER audit_event_no_delete ON audit_auditevent")
attempt("disable_trigger", "ALTER TABLE audit_auditevent DISABLE TRIGGER audit_event_no_delete")
attempt("disable_all", "ALTER TABLE audit_auditchain DISABLE TRIGGER ALL")
attempt("replica_mode", "SET session_replication_role = replica")
attempt("delete_events", "DELETE FROM audit_auditevent")
attempt("rewrite_head", "UPDATE audit_auditchain SET length = 1, head_hash = %s WHERE id = %s",
        [first.hash, chain.pk])
attempt("create_table", "CREATE TABLE shadow (id int)")
call_command("check", "--database", "default")
outcome["verified"] = [result.ok for result in audit_verify(all_chains=True)]
outcome["trigger_problems"] = audit_trigger_problems()
print("PROBE " + json.dumps(outcome))
"""


def _admin_connection() -> psycopg.Connection:
    db = settings.DATABASES["default"]
    return psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname="postgres",
        autocommit=True,
    )  # fmt: skip


def _manage(tmp_path: Path, database_url: str, *args: str) -> subprocess.CompletedProcess:
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": database_url,
        "CONTROLPLANE_DATA_DIR": str(tmp_path),
        "CELERY_BROKER_URL": "memory://",
    }
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def throwaway_database():
    """(database, owner role, app role), set up by compose's SQL; dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    database, owner, app = f"cp_roles_{suffix}", f"cp_owner_{suffix}", f"cp_app_{suffix}"
    db = settings.DATABASES["default"]
    with _admin_connection() as admin:
        admin.execute(f'CREATE DATABASE "{database}"')
    try:
        result = subprocess.run(
            ["psql", "-h", db["HOST"], "-p", str(db["PORT"] or 5432), "-U", db["USER"]]
            + ["-d", database, "-v", f"database={database}", "-v", f"owner={owner}"]
            + ["-v", f"app={app}", "-v", "owner_password=owner-pw", "-v", "app_password=app-pw"]
            + ["-q", "-f", str(ROLES_SQL)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        yield database, owner, app
    finally:
        with _admin_connection() as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
            for role in (app, owner):
                admin.execute(f'DROP ROLE IF EXISTS "{role}"')


def test_the_app_role_appends_but_cannot_truncate_drop_disable_or_rewrite(
    throwaway_database, tmp_path
):
    database, owner, app = throwaway_database
    db = settings.DATABASES["default"]
    server = f"{db['HOST']}:{db['PORT'] or 5432}"

    migrated = _manage(tmp_path, f"postgres://{owner}:owner-pw@{server}/{database}", "migrate")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    probe = _manage(tmp_path, f"postgres://{app}:app-pw@{server}/{database}", "shell", "-c", PROBE)
    assert probe.returncode == 0, probe.stdout + probe.stderr
    outcome = json.loads(probe.stdout.split("PROBE ", 1)[1])

    assert outcome["appended"] >= 1  # project_create audited through the real append path
    assert "permission denied for table audit_auditevent" in outcome["truncate_events"]
    assert "permission denied for table audit_auditchain" in outcome["truncate_chains"]
    for ddl in ("drop_trigger", "disable_trigger", "disable_all"):
        assert "must be owner of" in outcome[ddl], ddl
    assert "permission denied" in outcome["replica_mode"]
    assert "append-only" in outcome["delete_events"]
    assert "only advances by one event" in outcome["rewrite_head"]
    assert "permission denied for schema public" in outcome["create_table"]
    assert outcome["verified"] and all(outcome["verified"])
    assert outcome["trigger_problems"] == []

    # The app's rights are rows only: nothing on any table but SELECT/INSERT/UPDATE/DELETE.
    with psycopg.connect(
        host=db["HOST"], port=db["PORT"] or 5432, user=db["USER"], dbname=database
    ) as conn:
        rights = conn.execute(
            "SELECT DISTINCT privilege_type FROM information_schema.role_table_grants"
            " WHERE grantee = %s",
            [app],
        ).fetchall()
        owners = conn.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'"
        ).fetchall()
    assert {right for (right,) in rights} == {"SELECT", "INSERT", "UPDATE", "DELETE"}
    assert owners == [(owner,)]
