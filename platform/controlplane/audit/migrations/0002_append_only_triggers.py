"""The database itself refuses UPDATE and DELETE on audit events, on PostgreSQL and SQLite.

A trigger rather than a permission: it holds for every connection, the application's own
included, so a bug or a compromised web process cannot rewrite history quietly. (A
database superuser can still drop the trigger; `audit_verify` catches what they change.)
"""

from django.db import migrations

TABLE = "audit_auditevent"

POSTGRES_UP = f"""
CREATE OR REPLACE FUNCTION audit_event_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'audit events are append-only: % refused', TG_OP;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION audit_event_append_only();
"""
POSTGRES_DOWN = f"""
DROP TRIGGER IF EXISTS audit_event_no_update ON {TABLE};
DROP TRIGGER IF EXISTS audit_event_no_delete ON {TABLE};
DROP FUNCTION IF EXISTS audit_event_append_only();
"""
SQLITE_UP = [
    f"CREATE TRIGGER audit_event_no_update BEFORE UPDATE ON {TABLE} "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: UPDATE refused'); END;",
    f"CREATE TRIGGER audit_event_no_delete BEFORE DELETE ON {TABLE} "
    "BEGIN SELECT RAISE(ABORT, 'audit events are append-only: DELETE refused'); END;",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_event_no_update;",
    "DROP TRIGGER IF EXISTS audit_event_no_delete;",
]


def _run(statements_by_vendor):
    def apply(apps, schema_editor):
        statements = statements_by_vendor.get(schema_editor.connection.vendor)
        if statements is None:
            raise RuntimeError(
                f"no append-only trigger for database {schema_editor.connection.vendor}"
            )
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement, params=None)  # no params: "%" is literal

    return apply


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [
        migrations.RunPython(
            _run({"postgresql": POSTGRES_UP, "sqlite": SQLITE_UP}),
            _run({"postgresql": POSTGRES_DOWN, "sqlite": SQLITE_DOWN}),
        )
    ]
