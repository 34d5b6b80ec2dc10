"""The audit page's filtered events as CSV or JSONL, streamed.

Not the chain export (export.py), which is the whole chain for the offline verifier: this
is what a person filtered on the page (an actor's actions last month, one job's history),
for a spreadsheet or a script. Each row keeps its seq and hashes, so it can be matched
against a chain export. The export is itself an event (`audit.events_exported`, with the
format and the filters), appended before the first row; the rows stop at that event, so
a export made while others append still ends where it was asked.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from enum import StrEnum

from django.http import StreamingHttpResponse
from django.utils import timezone

from controlplane.audit.filters import AuditFilterForm
from controlplane.audit.selectors import usernames
from controlplane.audit.services import audit_append

_BATCH = 1000
COLUMNS = (
    "seq",
    "created_at",
    "actor_id",
    "actor",
    "action",
    "artifact_type",
    "artifact_id",
    "payload",
    "prev_hash",
    "hash",
)


class ExportFormat(StrEnum):
    CSV = "csv"
    JSONL = "jsonl"


CONTENT_TYPES = {
    ExportFormat.CSV: "text/csv; charset=utf-8",
    ExportFormat.JSONL: "application/x-ndjson; charset=utf-8",
}


def _rows(form: AuditFilterForm, last_seq: int) -> Iterator[dict]:
    """The filtered events, newest first like the page, in batches (keyset on seq)."""
    events = form.events().filter(seq__lte=last_seq)
    before = last_seq + 1
    while True:
        batch = list(events.filter(seq__lt=before)[:_BATCH])
        if not batch:
            return
        names = usernames({event.actor_id for event in batch if event.actor_id})
        for event in batch:
            yield {
                "seq": event.seq,
                "created_at": event.created_at.isoformat(),
                "actor_id": event.actor_id,
                "actor": names.get(event.actor_id, "") if event.actor_id else "system",
                "action": event.action,
                "artifact_type": event.artifact_type,
                "artifact_id": event.artifact_id,
                "payload": event.payload,
                "prev_hash": event.prev_hash,
                "hash": event.hash,
            }
        before = batch[-1].seq


def _csv_lines(rows: Iterator[dict]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=COLUMNS, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writeheader()
    yield flush()
    for row in rows:
        payload = json.dumps(row["payload"], sort_keys=True, ensure_ascii=False)
        writer.writerow({**row, "payload": payload})
        yield flush()


def _jsonl_lines(rows: Iterator[dict]) -> Iterator[str]:
    for row in rows:
        yield json.dumps(row, sort_keys=True, ensure_ascii=False) + "\n"


def audit_events_export(
    *, project, actor, form: AuditFilterForm, export_format: ExportFormat
) -> Iterator[str]:
    """Record the export (format + filters), then the filtered events up to that record."""
    recorded = audit_append(
        project=project,
        actor=actor,
        action="audit.events_exported",
        artifact=("project", project.pk),
        payload={"format": str(export_format), "filters": form.applied()},
    )
    rows = _rows(form, recorded.seq)
    return _csv_lines(rows) if export_format is ExportFormat.CSV else _jsonl_lines(rows)


def events_export_response(
    *, project, actor, form: AuditFilterForm, export_format: ExportFormat
) -> StreamingHttpResponse:
    lines = audit_events_export(
        project=project, actor=actor, form=form, export_format=export_format
    )
    response = StreamingHttpResponse(lines, content_type=CONTENT_TYPES[export_format])
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    name = f"audit-events-{project.slug}-{stamp}.{export_format}"
    response["Content-Disposition"] = f'attachment; filename="{name}"'
    response["Cache-Control"] = "no-store"
    return response
