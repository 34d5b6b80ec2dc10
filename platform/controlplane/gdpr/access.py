"""Carrying out an approved access request (GDPR Art. 15): search, export, one download.

    services.on_approved -> access_start(request)     in progress + a find-only `erasure` job
    worker (workers/jobs/erasure.py, mode "find")     the subject's records, one JSONL part
                                                      per dataset version, nothing rewritten
    job succeeded -> access_job_succeeded(job, res)   the findings on the request
    access_advance(request)                           the export: one zip in the object store
    export_take(request, actor)                       the one download, then the object goes
    exports_expire()                                  (beat) an export not taken in time goes

The export (`projects/<id>/gdpr/requests/<rid>/export.zip`) holds one JSONL per source:
`datasets/<slug>-v<n>.jsonl` ({"file", "line", "record"} per record of the subject) and
`inference_archive.jsonl` (the inference archive's records found through its subject
index, read with read_record), plus `manifest.json` (sources and counts). It is never in
the database. Only the reviewer who approved the request downloads it (another owner or
compliance officer gets 403 saying who may). The download is audited (`subject_request.exported`),
the object is deleted right after it was read and the request completes with a
certificate-like summary; a second download is 410 Gone. An export not downloaded within
GDPR_EXPORT_TTL_HOURS is deleted by the beat (`subject_request.export_expired`) and the
request fails, saying so.

As for an erasure, the identifiers reach the worker only in the dispatch message
(JobSpec.subject_secrets, erasure.erasure_secrets); params, events, progress and the
audit trail hold keyed hashes, counts, keys and digests only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import re
import zipfile
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.gdpr import identifiers as ids
from controlplane.gdpr import selectors, services
from controlplane.gdpr.erasure import (
    _advisory_lock,
    _job_request,
    _record,
    _subjects,
    advance_all,
    advance_soon,
    certificate_evidence,
    certificate_head,
    erasure_candidates,
    search_wording,
)
from controlplane.gdpr.errors import GdprError, NotAllowed
from controlplane.gdpr.models import RequestKind, RequestState, SubjectRequest

logger = logging.getLogger(__name__)

DEFAULT_TTL_HOURS = 72


class ExportGone(GdprError):
    status = 410


class ExportNotReady(GdprError):
    status = 409


def export_key(request: SubjectRequest) -> str:
    return f"projects/{request.project_id}/gdpr/requests/{request.pk}/export.zip"


def ttl_hours() -> int:
    return int(getattr(settings, "GDPR_EXPORT_TTL_HOURS", DEFAULT_TTL_HOURS))


# -- start --------------------------------------------------------------------------------


def access_start(request: SubjectRequest) -> SubjectRequest:
    """The `on_approved` hook of an access request: the find-only job. Idempotent."""
    from controlplane.jobs.services.lifecycle import _job_insert

    if request.kind != RequestKind.ACCESS or request.is_parent:
        return request  # an organisation request's children search (organisation.py)
    request = SubjectRequest.objects.select_related("project", "reviewed_by").get(pk=request.pk)
    if any(
        not ids.readable(request.project_id, row.value_token) for row in request.identifiers.all()
    ):
        services.request_mark_in_progress(request=request)
        return services.request_fail(
            request=request,
            reason="an identifier was sealed with a retired SECRET_KEY (add it to "
            "SECRET_KEY_FALLBACKS): the subject cannot be searched for",
        )
    with transaction.atomic():
        locked = SubjectRequest.objects.select_for_update().get(pk=request.pk)
        if locked.progress.get("job_id"):
            return locked
        request = services.request_mark_in_progress(request=request)
        versions = erasure_candidates(request.project)
        job_request = _job_request(request, versions)
        job_request.params["mode"] = "find"  # the worker searches and rewrites nothing
        job = _job_insert(request.project, "erasure", job_request, request.reviewed_by, "")
        progress = {
            "job_id": job.pk,
            "searched": [{"id": v.pk, "label": f"{v.dataset.slug} v{v.number}"} for v in versions],
            "done": [],
            "steps": [],
        }
        request = services.request_record_progress(request=request, progress=progress)
        request = _record(request, "started", job_id=job.pk, versions=len(versions))
    return request


# -- the job's success --------------------------------------------------------------------


def access_job_succeeded(job, result: dict) -> list[dict[str, Any]]:
    """The findings on the request (counts and the parts' keys); the export follows."""
    from controlplane.datasets.models import DatasetVersion

    request = SubjectRequest.objects.select_related("project").get(pk=job.params["request_id"])
    if request.state != RequestState.IN_PROGRESS or "found" in request.progress.get("done", []):
        return []
    labels = {
        v.pk: f"{v.dataset.slug} v{v.number}"
        for v in DatasetVersion.objects.filter(
            pk__in=[o["id"] for o in result.get("versions", [])]
        ).select_related("dataset")
    }
    found = [
        {
            "id": o["id"],
            "label": labels.get(o["id"], f"version {o['id']}"),
            "found": o["found"],
            "part": o.get("part"),
            **({"not_searched": o["not_searched"]} if o.get("not_searched") else {}),
        }
        for o in result.get("versions", [])
    ]
    progress = dict(request.progress)
    progress["found"] = found
    progress["findings"] = [
        {
            "source": entry["label"],
            "records": entry["found"]["records"],
            "detail": search_wording(entry["found"])
            + "".join(f"; {f['name']}: {f['records']}" for f in entry["found"].get("files", []))
            + (
                f"; not searched through: {entry['not_searched']}"
                if "not_searched" in entry
                else ""
            ),
        }
        for entry in found
    ]
    request = services.request_record_progress(request=request, progress=progress)
    _record(request, "found", records=sum(e["found"]["records"] for e in found))
    transaction.on_commit(lambda: advance_soon(request.pk), robust=True)
    return [
        {
            "action": "subject_request.found",
            "artifact": request,
            "payload": {
                "request": request.pk,
                "subjects": _subjects(request),
                "job_id": job.pk,
                "versions": [{"id": e["id"], "records": e["found"]["records"]} for e in found],
            },
        }
    ]


# -- the export ---------------------------------------------------------------------------


def access_advance(request: SubjectRequest) -> str:
    """Build the export once the job has succeeded; returns where the request stands."""
    from controlplane.jobs.models import Job, JobState

    with _advisory_lock(request.pk) as got:
        if not got:
            return "busy"
        request = SubjectRequest.objects.select_related("project", "reviewed_by").get(pk=request.pk)
        if request.kind != RequestKind.ACCESS or request.state != RequestState.IN_PROGRESS:
            return request.state
        if request.is_parent:
            return "organisation request: its children search"
        job = Job.objects.filter(pk=request.progress.get("job_id")).first()
        if job is None:
            services.request_fail(request=request, reason="the access request's job is missing")
            return "failed"
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            _delete_parts(job)
            services.request_fail(
                request=request, reason=f"search job {job.pk} {job.state}: {job.error}"
            )
            return "failed"
        if job.state != JobState.SUCCEEDED or "found" not in request.progress.get("done", []):
            return f"waiting for job {job.pk}"
        if "exported" not in request.progress.get("done", []):
            _build_export(request)
        return "waiting for the download"


def _delete_parts(job) -> None:
    """What a failed search's attempts uploaded (records of the subject) goes too: the
    find-only job stores nothing else under its prefix."""
    from controlplane.storage import object_store

    store = object_store()
    prefix = f"projects/{job.project_id}/jobs/{job.pk}/"
    for key in sorted({v.key for v in store.list_versions(prefix)}):
        store.delete_all_versions(key)


def accesses_advance_all() -> dict[int, str]:
    """The beat's pass over access requests: an approval whose hook failed is started,
    one in progress goes as far as it can (its export built once the job succeeded)."""
    return advance_all(RequestKind.ACCESS, start=access_start, advance=access_advance)


def _slug(label: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", label.lower()).strip("-") or "source"


def _archive_rows(request: SubjectRequest) -> list[dict]:
    """The inference archive's records of the subject, through its index (every key
    generation's hash), each read back with one ranged GET."""
    from controlplane.serving.archive import RecordUnavailable, read_record
    from controlplane.serving.models import InferenceRecord
    from controlplane.subject_keys import subject_hashes

    hashes = {
        digest
        for identifier in selectors.identifiers_clear(request)
        for digest in subject_hashes(request.project, identifier.value)
    }
    rows = []
    entries = (
        InferenceRecord.objects.filter(deployment__project=request.project, subject_hash__in=hashes)
        .select_related("archive_object", "deployment")
        .order_by("created_at", "pk")
    )
    for entry in entries:
        row = {
            "deployment": entry.deployment.name,
            "request_id": entry.request_id,
            "at": entry.created_at.isoformat(),
        }
        try:
            row["record"] = read_record(entry)
        except RecordUnavailable as error:
            if not error.gone:
                raise  # the store is down: the next pass builds the export
            continue  # purged by retention meanwhile: nothing is held any more
        rows.append(row)
    return rows


def _build_export(request: SubjectRequest) -> None:
    from controlplane.storage import object_store

    store = object_store()
    found = request.progress.get("found", [])
    archive = _archive_rows(request)
    buffer = io.BytesIO()
    sources = []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive_zip:
        for entry in found:
            if not entry.get("part"):
                continue
            name = f"datasets/{_slug(entry['label'])}.jsonl"
            data = store.get_bytes(entry["part"]["key"])
            if hashlib.sha256(data).hexdigest() != entry["part"]["sha256"]:
                raise GdprError(f"the search's part for {entry['label']} does not match its digest")
            archive_zip.writestr(name, data)
            sources.append(
                {"source": entry["label"], "file": name, "records": entry["found"]["records"]}
            )
        lines = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in archive)
        archive_zip.writestr("inference_archive.jsonl", lines)
        sources.append(
            {
                "source": "inference archive",
                "file": "inference_archive.jsonl",
                "records": len(archive),
            }
        )
        manifest = {"request": request.pk, "project": request.project_id, "sources": sources}
        archive_zip.writestr("manifest.json", json.dumps(manifest, indent=2))
    data = buffer.getvalue()
    key = export_key(request)
    store.put_bytes(key, data, content_type="application/zip")
    # The search's parts are personal data too: only the export keeps them.
    for entry in found:
        if entry.get("part"):
            store.delete_all_versions(entry["part"]["key"])
    expires = timezone.now() + dt.timedelta(hours=ttl_hours())
    export = {
        "key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "sources": sources,
        "expires_at": expires.isoformat(),
    }
    with transaction.atomic():
        request.refresh_from_db()
        progress = {**request.progress, "export": export}
        progress["findings"] = [
            *progress.get("findings", []),
            {"source": "inference archive", "records": len(archive), "detail": "subject index"},
        ]
        request = services.request_record_progress(request=request, progress=progress)
        request = _record(request, "exported", size=len(data), expires=f"{expires:%Y-%m-%d %H:%M}")
        audit_append(
            project=request.project,
            actor=None,
            action="subject_request.export_ready",
            artifact=request,
            payload={
                "request": request.pk,
                "subjects": _subjects(request),
                "key": key,
                "sha256": export["sha256"],
                "size": export["size"],
                "records": sum(s["records"] for s in sources),
                "expires_at": export["expires_at"],
            },
        )
    if request.parent_id:
        # The organisation request combines its children's exports once all are built.
        parent_id = request.parent_id
        transaction.on_commit(lambda: advance_soon(parent_id), robust=True)


# -- the one download ---------------------------------------------------------------------


EXPORT_GONE = (
    "this export was downloaded once (or expired) and has been deleted; "
    "file a new access request for another copy"
)


def read_export(export: dict) -> bytes:
    """The stored export's bytes, checked against the digest recorded when it was built."""
    from controlplane.storage import object_store

    data = object_store().get_bytes(export["key"])
    if hashlib.sha256(data).hexdigest() != export["sha256"]:
        raise GdprError("the stored export does not match its digest")
    return data


def export_take(*, request: SubjectRequest, actor) -> tuple[str, bytes]:
    """The export's bytes for the reviewer who approved the request, once: audited, the
    object deleted right after it was read, the request completed. Raises NotAllowed for
    anyone else (another owner or compliance officer too), ExportGone on a second try."""

    if request.is_parent:
        from controlplane.gdpr.organisation_access import parent_export_take

        return parent_export_take(request=request, actor=actor)
    if not services.may_review(actor, request.project):
        raise NotAllowed("only the owner or a compliance officer downloads the export")
    if request.parent_id:
        raise ExportNotReady(
            f"this project's export belongs to organisation request #{request.parent_id}: "
            "an admin of the organisation downloads the combined export there"
        )
    if not services.may_take_export(actor, request):
        raise NotAllowed(services.export_reviewer_only(request))
    with transaction.atomic():
        locked = (
            SubjectRequest.objects.select_for_update(of=("self",))
            .select_related("project", "reviewed_by")
            .get(pk=request.pk)
        )
        export = (locked.progress or {}).get("export")
        if locked.kind != RequestKind.ACCESS:
            raise ExportNotReady("only an access request has an export")
        taken = (locked.certificate or {}).get("export", {}).get("downloaded_at") or (
            export or {}
        ).get("expired_at")
        if taken or (locked.state != RequestState.IN_PROGRESS and export):
            raise ExportGone(EXPORT_GONE)
        if locked.state != RequestState.IN_PROGRESS or not export:
            raise ExportNotReady("the export is not ready yet")
        data = read_export(export)
        now = timezone.now()
        export = {**export, "downloaded_at": now.isoformat(), "downloaded_by": actor.username}
        progress = {**locked.progress, "export": export}
        locked = services.request_record_progress(request=locked, progress=progress)
        audit_append(
            project=locked.project,
            actor=actor,
            action="subject_request.exported",
            artifact=locked,
            payload={
                "request": locked.pk,
                "subjects": _subjects(locked),
                "sha256": export["sha256"],
                "size": export["size"],
            },
        )
        locked = _record(locked, "downloaded", by=actor.username)
        services.request_complete(request=locked, certificate=_certificate(locked))
    # Committed: the download is on the record; now the object goes, every version of it.
    delete_downloaded_export(export, request.pk)
    return f"subject-request-{request.pk}-export.zip", data


def delete_downloaded_export(export: dict, request_pk: int) -> None:
    """Every version of a downloaded export's object, after the download is committed;
    a failure is logged, not raised: the beat's expiry pass deletes what is left."""
    from controlplane.storage import object_store

    try:
        object_store().delete_all_versions(export["key"])
    except Exception:  # noqa: BLE001 - the download itself succeeded
        logger.exception("export of request %s: delete after download failed", request_pk)


def exports_expire(now: dt.datetime | None = None) -> list[int]:
    """The beat's pass: exports not downloaded in time are deleted (audited) and their
    requests fail; objects of downloaded exports whose delete failed are deleted too."""
    from controlplane.storage import object_store

    now = now or timezone.now()
    store = object_store()
    expired = []
    rows = SubjectRequest.objects.filter(
        kind=RequestKind.ACCESS, progress__has_key="export"
    ).select_related("project")
    # A child's export belongs to its organisation request, which expires as a whole.
    for request in rows.filter(state=RequestState.IN_PROGRESS, parent__isnull=True):
        export = request.progress["export"]
        if dt.datetime.fromisoformat(export["expires_at"]) > now:
            continue
        object_store().delete_all_versions(export["key"])
        with transaction.atomic():
            progress = {**request.progress, "export": {**export, "expired_at": now.isoformat()}}
            request = services.request_record_progress(request=request, progress=progress)
            audit_append(
                project=request.project,
                actor=None,
                action="subject_request.export_expired",
                artifact=request,
                payload={
                    "request": request.pk,
                    "subjects": _subjects(request),
                    "key": export["key"],
                    "sha256": export["sha256"],
                },
            )
            services.request_fail(
                request=request,
                reason=f"the export was not downloaded within {ttl_hours()} hours and was "
                "deleted; file a new access request",
            )
            if request.is_parent:
                from controlplane.gdpr.organisation_access import children_fail_open

                children_fail_open(
                    request, f"the export of organisation request #{request.pk} expired"
                )
        expired.append(request.pk)
    for request in rows.filter(state=RequestState.COMPLETED):
        if store.exists(request.progress["export"]["key"]):
            store.delete_all_versions(request.progress["export"]["key"])
    return expired


def _certificate(request: SubjectRequest) -> dict:
    progress = request.progress
    export = progress.get("export", {})
    return {
        **certificate_head(request),
        "search_job": progress.get("job_id"),
        "searched": [*progress.get("searched", []), {"label": "inference archive"}],
        "found": [
            {"version": e["id"], "label": e["label"], **e["found"]}
            for e in progress.get("found", [])
        ],
        "export": {
            k: export.get(k)
            for k in ("key", "sha256", "size", "sources", "expires_at", "downloaded_at")
        }
        | {"downloaded_by": export.get("downloaded_by"), "deleted": True},
        **certificate_evidence(request, Q(payload__request=request.pk)),
    }
