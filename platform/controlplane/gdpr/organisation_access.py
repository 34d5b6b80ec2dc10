"""An organisation-wide access request's export: the children's exports, combined.

    child's access_advance        its own export, as for any access request (then asks
                                  for the parent: access._build_export)
    access_parent_advance         every child's export built: one zip, a folder per
                                  project slug (the child's zip as it is) and a
                                  manifest; the children's objects are then deleted
    parent_export_take            the one download (an admin of the organisation):
                                  every child completes, then the parent

A child's export belongs to its parent: it is never downloaded on its own
(access.export_take answers 409), and it expires with the parent's
(access.exports_expire fails the open children with the parent).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import zipfile

from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.gdpr import services
from controlplane.gdpr.errors import GdprError, NotAllowed
from controlplane.gdpr.models import RequestState, SubjectRequest
from controlplane.gdpr.organisation import (
    _subjects,
    failure_reasons,
    note_waiting,
    parent_certificate,
    record_step,
)

logger = logging.getLogger(__name__)


def access_parent_advance(parent, children, failed) -> str:
    """An organisation access request: failed with the first failed child (the other
    children too), else its export combined once every child has built its own."""
    if failed:
        # The combined export would miss a project: nothing of it is handed out.
        reason = failure_reasons(failed)
        children_fail_open(parent, f"organisation request #{parent.pk} failed: {reason}")
        services.request_fail(request=parent, reason=reason)
        return "failed"
    ready = [
        child
        for child in children
        if child.state == RequestState.IN_PROGRESS and (child.progress or {}).get("export")
    ]
    if len(ready) < len(children):
        return note_waiting(
            parent, f"waiting for {len(children) - len(ready)} of {len(children)} projects"
        )
    if "export" not in parent.progress:
        _combine_exports(parent, children)
    return "waiting for the download"


def children_fail_open(parent: SubjectRequest, reason: str) -> list[int]:
    """Fail the parent's open children (an access request that cannot be answered whole),
    deleting the exports they built."""
    from controlplane.storage import object_store

    store = object_store()
    failed = []
    for child in parent.children.filter(
        state__in=[RequestState.APPROVED, RequestState.IN_PROGRESS]
    ).order_by("pk"):
        export = (child.progress or {}).get("export")
        if export:
            store.delete_all_versions(export["key"])
        services.request_fail(request=child, reason=reason)
        failed.append(child.pk)
    return failed


def _combine_exports(parent: SubjectRequest, children: list[SubjectRequest]) -> None:
    """One zip, a folder per project (the child's export as it is), and a manifest."""
    from controlplane.gdpr.access import export_key, ttl_hours
    from controlplane.storage import object_store

    store = object_store()
    buffer = io.BytesIO()
    projects, sources = [], []
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as combined:
        for child in children:
            export = child.progress["export"]
            data = store.get_bytes(export["key"])
            if hashlib.sha256(data).hexdigest() != export["sha256"]:
                raise GdprError(f"the export of request #{child.pk} does not match its digest")
            folder = child.project.slug
            with zipfile.ZipFile(io.BytesIO(data)) as part:
                for info in part.infolist():
                    combined.writestr(f"{folder}/{info.filename}", part.read(info))
            projects.append(
                {
                    "project": child.project_id,
                    "name": child.project.name,
                    "folder": folder,
                    "request": child.pk,
                    "sha256": export["sha256"],
                }
            )
            sources += [
                {
                    "source": f"{child.project.name}: {source['source']}",
                    "file": f"{folder}/{source['file']}",
                    "records": source["records"],
                }
                for source in export.get("sources", [])
            ]
        manifest = {
            "request": parent.pk,
            "organisation": parent.project.organisation.slug,
            "projects": projects,
        }
        combined.writestr("manifest.json", json.dumps(manifest, indent=2))
    data = buffer.getvalue()
    key = export_key(parent)
    store.put_bytes(key, data, content_type="application/zip")
    expires = timezone.now() + dt.timedelta(hours=ttl_hours())
    export = {
        "key": key,
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
        "sources": sources,
        "projects": projects,
        "expires_at": expires.isoformat(),
    }
    with transaction.atomic():
        for child in children:
            child.refresh_from_db()
            combined_into = {**child.progress["export"], "combined_into": parent.pk}
            progress = {**child.progress, "export": combined_into}
            services.request_record_progress(request=child, progress=progress)
        parent.refresh_from_db()
        parent = services.request_record_progress(
            request=parent, progress={**parent.progress, "export": export}
        )
        parent = record_step(
            parent, "exported", size=len(data), expires=f"{expires:%Y-%m-%d %H:%M}"
        )
        audit_append(
            project=parent.project,
            actor=None,
            action="subject_request.export_ready",
            artifact=parent,
            payload={
                "request": parent.pk,
                "subjects": _subjects(parent),
                "key": key,
                "sha256": export["sha256"],
                "size": export["size"],
                "records": sum(source["records"] for source in sources),
                "children": [p["request"] for p in projects],
                "expires_at": export["expires_at"],
            },
        )
    # The children's copies are in the combined zip now: only it keeps the subject's data.
    _delete_child_exports(children)


def _delete_child_exports(children) -> None:
    from controlplane.storage import object_store

    store = object_store()
    for child in children:
        export = (child.progress or {}).get("export")
        if export:
            try:
                store.delete_all_versions(export["key"])
            except Exception:  # noqa: BLE001 - the parent's download or failure retries
                logger.exception("export of child request %s: delete failed", child.pk)


def parent_export_take(*, request: SubjectRequest, actor) -> tuple[str, bytes]:
    """The combined export for the admin of the organisation who approved it, once: audited, every child
    completed (its certificate), then the parent; the object deleted right after."""
    from controlplane.gdpr.access import (
        EXPORT_GONE,
        ExportGone,
        ExportNotReady,
        delete_downloaded_export,
        read_export,
    )
    from controlplane.gdpr.access import _certificate as child_certificate

    if not services.may_review_request(actor, request):
        raise NotAllowed(
            "only an admin of the organisation downloads an organisation request's export"
        )
    if not services.may_take_export(actor, request):
        raise NotAllowed(services.export_reviewer_only(request))
    with transaction.atomic():
        locked = (
            SubjectRequest.objects.select_for_update(of=("self",))
            .select_related("project__organisation", "reviewed_by")
            .get(pk=request.pk)
        )
        export = (locked.progress or {}).get("export")
        if (export or {}).get("downloaded_at") or (export or {}).get("expired_at"):
            raise ExportGone(EXPORT_GONE)
        if locked.state != RequestState.IN_PROGRESS or not export:
            raise ExportNotReady("the export is not ready yet")
        data = read_export(export)
        now = timezone.now().isoformat()
        taken = {"downloaded_at": now, "downloaded_by": actor.username}
        children = list(locked.children.select_for_update(of=("self",)).select_related("project"))
        for child in children:
            progress = {**child.progress, "export": {**child.progress["export"], **taken}}
            child = services.request_record_progress(request=child, progress=progress)
            child = record_step(child, "downloaded", by=actor.username, within_request=locked.pk)
            services.request_complete(request=child, certificate=child_certificate(child))
        locked = services.request_record_progress(
            request=locked, progress={**locked.progress, "export": {**export, **taken}}
        )
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
                "children": [child.pk for child in children],
            },
        )
        locked = record_step(locked, "downloaded", by=actor.username)
        services.request_complete(request=locked, certificate=parent_certificate(locked))
    delete_downloaded_export(export, request.pk)
    _delete_child_exports(children)
    return f"subject-request-{request.pk}-export.zip", data
