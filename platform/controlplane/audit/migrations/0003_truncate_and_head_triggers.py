"""The chain heads are protected like the events, TRUNCATE is refused, and no session can
switch the triggers off by setting `session_replication_role = replica`.

- TRUNCATE skips row triggers, so a statement-level trigger refuses it on both tables
  (PostgreSQL; SQLite has no TRUNCATE: its `DELETE FROM t` fires the row triggers).
- An UPDATE of `audit_auditchain` must advance the head by exactly one event whose row
  exists with that hash and links to the old head: the only update `audit_append` makes.
  Rewriting `length/head_hash` after deleting the tail (issue 11) is refused. A chain row
  starts empty and is never deleted.
- The event table's reference is built from TG_TABLE_SCHEMA rather than the search path:
  a temporary table named `audit_auditevent` (pg_temp is searched first) cannot stand in.
- `ENABLE ALWAYS`: the triggers fire in replica mode too (`check_audit_triggers` and
  `audit_verify` report any that is missing, disabled or back to plain ENABLE).
"""

import django.db.models.deletion
from django.db import migrations, models

GENESIS_HASH = "0" * 64

POSTGRES_UP = f"""
CREATE OR REPLACE FUNCTION audit_refuse_truncate() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit trail is append-only: TRUNCATE of % refused', TG_TABLE_NAME;
END;
$$ LANGUAGE plpgsql;

CREATE OR REPLACE FUNCTION audit_chain_guard() RETURNS trigger AS $$
DECLARE
    appended boolean;
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'audit chain heads are permanent: DELETE of chain % refused', OLD.scope;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.length <> 0 OR NEW.head_hash <> '{GENESIS_HASH}' THEN
            RAISE EXCEPTION 'audit chain % must start empty: INSERT at length % refused',
                NEW.scope, NEW.length;
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.id <> OLD.id OR NEW.scope <> OLD.scope
            OR NEW.project_id IS DISTINCT FROM OLD.project_id THEN
        RAISE EXCEPTION 'audit chain %: its identity cannot change', OLD.scope;
    END IF;
    IF NEW.length <> OLD.length + 1 THEN
        RAISE EXCEPTION 'audit chain %: the head only advances by one event (% -> % refused)',
            OLD.scope, OLD.length, NEW.length;
    END IF;
    EXECUTE format(
        'SELECT EXISTS (SELECT 1 FROM %I.audit_auditevent WHERE chain_id = $1 AND seq = $2'
        ' AND hash = $3 AND prev_hash = $4)', TG_TABLE_SCHEMA)
        INTO appended USING NEW.id, NEW.length, NEW.head_hash, OLD.head_hash;
    IF NOT appended THEN
        RAISE EXCEPTION 'audit chain %: no event #% with hash % follows the head',
            OLD.scope, NEW.length, NEW.head_hash;
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER audit_event_no_truncate BEFORE TRUNCATE ON audit_auditevent
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate();
CREATE TRIGGER audit_chain_no_truncate BEFORE TRUNCATE ON audit_auditchain
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_truncate();
CREATE TRIGGER audit_chain_advance_only BEFORE UPDATE ON audit_auditchain
    FOR EACH ROW EXECUTE FUNCTION audit_chain_guard();
CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_auditchain
    FOR EACH ROW EXECUTE FUNCTION audit_chain_guard();
CREATE TRIGGER audit_chain_starts_empty BEFORE INSERT ON audit_auditchain
    FOR EACH ROW EXECUTE FUNCTION audit_chain_guard();

ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_no_update;
ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_no_delete;
ALTER TABLE audit_auditevent ENABLE ALWAYS TRIGGER audit_event_no_truncate;
ALTER TABLE audit_auditchain ENABLE ALWAYS TRIGGER audit_chain_no_truncate;
ALTER TABLE audit_auditchain ENABLE ALWAYS TRIGGER audit_chain_advance_only;
ALTER TABLE audit_auditchain ENABLE ALWAYS TRIGGER audit_chain_no_delete;
ALTER TABLE audit_auditchain ENABLE ALWAYS TRIGGER audit_chain_starts_empty;
"""
# 0002's triggers stay ENABLE ALWAYS (harmless, and they may be the ones being repaired:
# `migrate audit 0001 && migrate audit` re-creates every guard, see audit/checks.py).
POSTGRES_DOWN = """
DROP TRIGGER IF EXISTS audit_event_no_truncate ON audit_auditevent;
DROP TRIGGER IF EXISTS audit_chain_no_truncate ON audit_auditchain;
DROP TRIGGER IF EXISTS audit_chain_advance_only ON audit_auditchain;
DROP TRIGGER IF EXISTS audit_chain_no_delete ON audit_auditchain;
DROP TRIGGER IF EXISTS audit_chain_starts_empty ON audit_auditchain;
DROP FUNCTION IF EXISTS audit_refuse_truncate();
DROP FUNCTION IF EXISTS audit_chain_guard();
"""
SQLITE_UP = [
    "CREATE TRIGGER audit_chain_advance_only BEFORE UPDATE ON audit_auditchain "
    "WHEN NEW.id IS NOT OLD.id OR NEW.scope IS NOT OLD.scope "
    "OR NEW.project_id IS NOT OLD.project_id OR NEW.length IS NOT OLD.length + 1 "
    "OR NOT EXISTS (SELECT 1 FROM audit_auditevent WHERE chain_id = NEW.id "
    "AND seq = NEW.length AND hash = NEW.head_hash AND prev_hash = OLD.head_hash) "
    "BEGIN SELECT RAISE(ABORT, 'audit chain heads only advance by one appended event: "
    "UPDATE refused'); END;",
    "CREATE TRIGGER audit_chain_no_delete BEFORE DELETE ON audit_auditchain "
    "BEGIN SELECT RAISE(ABORT, 'audit chain heads are permanent: DELETE refused'); END;",
    "CREATE TRIGGER audit_chain_starts_empty BEFORE INSERT ON audit_auditchain "
    f"WHEN NEW.length != 0 OR NEW.head_hash != '{GENESIS_HASH}' "
    "BEGIN SELECT RAISE(ABORT, 'an audit chain must start empty: INSERT refused'); END;",
]
SQLITE_DOWN = [
    "DROP TRIGGER IF EXISTS audit_chain_advance_only;",
    "DROP TRIGGER IF EXISTS audit_chain_no_delete;",
    "DROP TRIGGER IF EXISTS audit_chain_starts_empty;",
]


def _run(statements_by_vendor):
    def apply(apps, schema_editor):
        statements = statements_by_vendor.get(schema_editor.connection.vendor)
        if statements is None:
            raise RuntimeError(f"no audit triggers for database {schema_editor.connection.vendor}")
        for statement in [statements] if isinstance(statements, str) else statements:
            schema_editor.execute(statement, params=None)  # no params: "%" is literal

    return apply


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_triggers")]

    operations = [
        migrations.CreateModel(
            name="AuditAnchor",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("length", models.PositiveBigIntegerField()),
                ("head_hash", models.CharField(max_length=64)),
                ("object_key", models.CharField(max_length=300, unique=True)),
                ("anchored_at", models.DateTimeField()),
                (
                    "chain",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="anchors",
                        to="audit.auditchain",
                    ),
                ),
            ],
            options={
                "ordering": ["chain_id", "length"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("chain", "length"), name="one_anchor_per_length"
                    )
                ],
            },
        ),
        migrations.RunPython(
            _run({"postgresql": POSTGRES_UP, "sqlite": SQLITE_UP}),
            _run({"postgresql": POSTGRES_DOWN, "sqlite": SQLITE_DOWN}),
        ),
    ]
