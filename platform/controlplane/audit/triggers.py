"""Which database triggers protect the audit trail, and whether they are all still there.

Someone with the database's owner or superuser rights can `DROP TRIGGER` or
`ALTER TABLE ... DISABLE TRIGGER` and then rewrite history; the anchors catch the rewrite,
and this module makes the missing guard itself visible: to `audit_verify` and to
`manage.py check --database default` (which `migrate` also runs).

A trigger is expected only once the migration that creates it is applied, so a database
being migrated is not reported broken halfway. Migrations are matched by the part of
their name after the number, which survives renumbering.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import connections
from django.db.migrations.recorder import MigrationRecorder

EVENTS = "audit_auditevent"
CHAINS = "audit_auditchain"


@dataclass(frozen=True)
class Guard:
    table: str
    trigger: str
    refuses: str
    migration: str  # the name of the audit migration that creates it, without its number
    vendors: tuple[str, ...] = ("postgresql", "sqlite")


GUARDS = (
    Guard(EVENTS, "audit_event_no_update", "UPDATE of events", "append_only_triggers"),
    Guard(EVENTS, "audit_event_no_delete", "DELETE of events", "append_only_triggers"),
    Guard(
        EVENTS,
        "audit_event_no_truncate",
        "TRUNCATE of events",
        "truncate_and_head_triggers",
        ("postgresql",),
    ),
    Guard(
        CHAINS,
        "audit_chain_no_truncate",
        "TRUNCATE of chain heads",
        "truncate_and_head_triggers",
        ("postgresql",),
    ),
    Guard(
        CHAINS,
        "audit_chain_advance_only",
        "rewrites of chain heads",
        "truncate_and_head_triggers",
    ),
    Guard(CHAINS, "audit_chain_no_delete", "DELETE of chain heads", "truncate_and_head_triggers"),
    Guard(
        CHAINS,
        "audit_chain_starts_empty",
        "chains created mid-way",
        "truncate_and_head_triggers",
    ),
)

ALWAYS_FROM = "truncate_and_head_triggers"

# pg_trigger.tgenabled: O = origin and local sessions, D = disabled, R = replica only,
# A = always. The migrations set A, so `session_replication_role = replica` skips nothing.
_PG_STATES = {"D": "DISABLED", "R": "enabled for replica sessions only", "O": "not ENABLE ALWAYS"}


def _applied_migration_suffixes(alias: str) -> set[str]:
    recorder = MigrationRecorder(connections[alias])
    if not recorder.has_table():
        return set()
    applied = recorder.applied_migrations()
    return {name.split("_", 1)[-1] for app, name in applied if app == "audit"}


def _installed_triggers(alias: str) -> dict[tuple[str, str], str]:
    """{(table, trigger): tgenabled} of the audit tables ('A' on SQLite: no disabling there)."""
    connection = connections[alias]
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(
                "SELECT c.relname, t.tgname, t.tgenabled FROM pg_trigger t"
                " JOIN pg_class c ON c.oid = t.tgrelid"
                " WHERE NOT t.tgisinternal AND c.oid IN (to_regclass(%s), to_regclass(%s))",
                [EVENTS, CHAINS],
            )
            return {(table, name): state for table, name, state in cursor.fetchall()}
        cursor.execute(
            "SELECT tbl_name, name FROM sqlite_master WHERE type = 'trigger'"
            " AND tbl_name IN (%s, %s)",
            [EVENTS, CHAINS],
        )
        return {(table, name): "A" for table, name in cursor.fetchall()}


def audit_trigger_problems(alias: str = "default") -> list[str]:
    """One sentence per protecting trigger that is missing or not always enabled."""
    vendor = connections[alias].vendor
    applied = _applied_migration_suffixes(alias)
    installed = _installed_triggers(alias) if applied else {}
    # Migration 0002 enabled its triggers plainly; the next one makes every guard ALWAYS.
    enabled = {"A"} if ALWAYS_FROM in applied else {"A", "O"}
    problems = []
    for guard in GUARDS:
        if vendor not in guard.vendors or guard.migration not in applied:
            continue
        state = installed.get((guard.table, guard.trigger))
        if state is None:
            problems.append(
                f"trigger {guard.trigger} on {guard.table} is MISSING (it refuses {guard.refuses})"
            )
        elif state not in enabled:
            problems.append(
                f"trigger {guard.trigger} on {guard.table} is {_PG_STATES.get(state, state)} "
                f"(it refuses {guard.refuses})"
            )
    return problems
