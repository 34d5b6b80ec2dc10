"""Organisation-wide data-subject requests: one request, carried out in every project.

    request_file(scope="organisation")      by an admin of the project's organisation
    request_approve                         by another admin of it (services.py)
    services.on_approved -> fan_out(parent) one approved child per project of the
                                            organisation, then each child's hooks
                                            (erasure_start / access_start), as if
                                            approved in its project
    parent_advance(parent)                  (after a child ends, and on the beat) in
                                            progress while a child is open; then
                                            completed with the children's summary, or
                                            failed with their reasons
    organisation_access.py                  an access request's export: the children's
                                            combined, one zip, a folder per project,
                                            and its one download

The parent runs no job: the per-project machinery (erasure.py, access.py) runs each child
unchanged. A child copies the parent's kind, legal basis, received_at, deadline (extensions
included: extending the parent extends its open children, services.request_extend) and
review, and holds the identifiers sealed and keyed-hashed with its own project's keys
(subject keys are per project). It is audited in its own project's chain
(`subject_request.fanned_out`, with the parent's id, the subject as keyed hashes only).

Invariants:
- Fan-out happens once, for the projects of the organisation at that moment, in one
  transaction with the parent locked and moved to in_progress; `(parent, project)` is
  unique, so a repeated pass (the beat after a crash, a hook run twice) adds no child.
- An access request's children build their exports, which belong to the parent: they are
  combined into the parent's zip, deleted, and never downloaded on their own; the parent's
  download completes every child, then the parent.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from django.db import transaction
from django.db.models import Q

from controlplane.audit.services import audit_append
from controlplane.gdpr import identifiers as ids
from controlplane.gdpr import selectors, services
from controlplane.gdpr.models import (
    RequestKind,
    RequestScope,
    RequestState,
    SubjectRequest,
)

logger = logging.getLogger(__name__)

FANNED_OUT = "subject_request.fanned_out"  # the child's event, in the child's project


def _subjects(request: SubjectRequest) -> list[str]:
    return [row.subject_hash for row in request.identifiers.all()]


def record_step(request: SubjectRequest, name: str, **details: Any) -> SubjectRequest:
    from controlplane.gdpr.erasure import _record

    return _record(request, name, **details)


# -- fan-out ------------------------------------------------------------------------------


def fan_out(request: SubjectRequest) -> SubjectRequest:
    """The `on_approved` hook of an organisation request (others pass through): a child
    per project of the organisation, then each child's own hooks. Idempotent."""
    if not request.is_parent:
        return request
    parent = SubjectRequest.objects.select_related("project__organisation", "reviewed_by").get(
        pk=request.pk
    )
    if parent.state != RequestState.APPROVED:
        return parent  # fanned out already, or not approved
    if any(
        not ids.readable(parent.project_id, row.value_token) for row in parent.identifiers.all()
    ):
        # Children searching for the placeholder would certify "found nowhere".
        services.request_mark_in_progress(request=parent)
        return services.request_fail(
            request=parent,
            reason="an identifier was sealed with a retired SECRET_KEY (add it to "
            "SECRET_KEY_FALLBACKS): the subject cannot be searched for",
        )
    clear = selectors.identifiers_clear(parent)
    with transaction.atomic():
        locked = SubjectRequest.objects.select_for_update().get(pk=parent.pk)
        if locked.state != RequestState.APPROVED:
            return locked  # another pass got there first
        children = [_child_for(parent, project, clear) for project in _projects_of(parent)]
        parent = services.request_mark_in_progress(request=parent)
        progress = {"children": [child.pk for child in children], "done": [], "steps": []}
        parent = services.request_record_progress(request=parent, progress=progress)
        parent = record_step(parent, "fanned_out", projects=len(children))
        audit_append(
            project=parent.project,
            actor=parent.reviewed_by,
            action="subject_request.children_created",
            artifact=parent,
            payload={
                "request": parent.pk,
                "subjects": _subjects(parent),
                "organisation": parent.project.organisation_id,
                "children": [{"request": c.pk, "project": c.project_id} for c in children],
            },
        )
    for child in children:
        child.refresh_from_db()
        if child.state == RequestState.APPROVED:
            services.run_on_approved(child)
    return parent


def _projects_of(parent: SubjectRequest):
    from controlplane.projects.models import Project

    return Project.objects.filter(organisation_id=parent.project.organisation_id).order_by("pk")


def _child_for(parent: SubjectRequest, project, clear: list[ids.Identifier]) -> SubjectRequest:
    """The parent's child in `project`, made (approved, audited there) when missing."""
    existing = SubjectRequest.objects.filter(parent=parent, project=project).first()
    if existing is not None:
        return existing
    child = SubjectRequest.objects.create(
        project=project,
        parent=parent,
        kind=parent.kind,
        scope=RequestScope.PROJECT,
        legal_basis=parent.legal_basis,
        state=RequestState.APPROVED,
        filed_by=parent.filed_by,
        received_at=parent.received_at,
        deadline_at=parent.deadline_at,
        extension_months=parent.extension_months,
        extension_reason=parent.extension_reason,
        extended_by=parent.extended_by,
        extended_at=parent.extended_at,
        reviewed_by=parent.reviewed_by,
        reviewed_at=parent.reviewed_at,
        review_reason=parent.review_reason,
    )
    # Subject keys are per project: the child's hashes are those its project's indexes
    # (datasets, inference archive) hold.
    hashes = [ids.keyed_hash(project, identifier.value) for identifier in clear]
    services.store_identifiers(child, project, clear, hashes)
    audit_append(
        project=project,
        actor=parent.reviewed_by,
        action=FANNED_OUT,
        artifact=child,
        payload={
            "request": child.pk,
            "parent": parent.pk,
            "parent_project": parent.project_id,
            "kind": child.kind,
            "subjects": hashes,
            "identifier_types": [identifier.type for identifier in clear],
            "deadline_at": child.deadline_at.isoformat(),
        },
    )
    return child


# -- the parent follows its children -------------------------------------------------------


def parent_advance(parent: SubjectRequest) -> str:
    """Where the organisation request stands now: in progress while a child is open (an
    access request's export is combined once every child has built its own); completed
    when every child completed, failed with their reasons when one failed."""
    from controlplane.gdpr.erasure import _advisory_lock

    with _advisory_lock(parent.pk) as got:
        if not got:
            return "busy"
        parent = SubjectRequest.objects.select_related("project__organisation", "reviewed_by").get(
            pk=parent.pk
        )
        if not parent.is_parent or parent.state != RequestState.IN_PROGRESS:
            return parent.state
        children = list(parent.children.select_related("project").order_by("project_id", "pk"))
        failed = [child for child in children if child.state == RequestState.FAILED]
        if parent.kind == RequestKind.ACCESS:
            from controlplane.gdpr.organisation_access import access_parent_advance

            return access_parent_advance(parent, children, failed)
        still_open = [child for child in children if child.is_open]
        if still_open:
            return note_waiting(
                parent, f"waiting for {len(still_open)} of {len(children)} projects"
            )
        if failed:
            services.request_fail(request=parent, reason=failure_reasons(failed))
            return "failed"
        services.request_complete(request=parent, certificate=parent_certificate(parent))
        return "completed"


def note_waiting(parent: SubjectRequest, outcome: str) -> str:
    if parent.progress.get("waiting") != outcome:
        progress = {**parent.progress, "waiting": outcome}
        services.request_record_progress(request=parent, progress=progress)
    return outcome


def failure_reasons(failed: list[SubjectRequest]) -> str:
    return "; ".join(
        f"project {child.project.name} (request #{child.pk}): {child.failure_reason}"
        for child in failed
    )


# -- the certificate ----------------------------------------------------------------------


def _child_summary(child: SubjectRequest) -> dict[str, Any]:
    """One project's line of the parent's certificate, from the child's certificate."""
    certificate = child.certificate or {}
    body = json.dumps(certificate, sort_keys=True, default=str).encode()
    summary: dict[str, Any] = {
        "project": child.project_id,
        "project_name": child.project.name,
        "request": child.pk,
        "state": child.state,
        "found": sum(row.get("records", 0) for row in certificate.get("found", [])),
        "certificate_sha256": hashlib.sha256(body).hexdigest(),
        "chain_head": certificate.get("chain_head"),
    }
    if child.kind == RequestKind.ERASURE:
        scan = certificate.get("residue_scan", {})
        summary |= {
            "rewritten": len(certificate.get("rewritten", [])),
            "deleted": len(certificate.get("deleted", [])),
            "models_flagged": len(certificate.get("models_flagged", [])),
            "archive_records_removed": certificate.get("archive", {}).get("records_removed", 0),
            "residue_scan": {
                key: scan.get(key) for key in ("clean", "object_versions_read", "hit_count")
            },
        }
    else:
        sources = certificate.get("export", {}).get("sources") or []
        summary["exported"] = sum(source.get("records", 0) for source in sources)
    return summary


def parent_certificate(parent: SubjectRequest) -> dict[str, Any]:
    """The parent's record: its request and review, per project the child's summary, the
    combined export (access), the parent's own audit events and its chain head."""
    from controlplane.gdpr.erasure import certificate_evidence, certificate_head

    head = certificate_head(parent)
    head["request"]["scope"] = RequestScope.ORGANISATION.value
    organisation = parent.project.organisation
    children = parent.children.select_related("project").order_by("project_id", "pk")
    certificate = {
        **head,
        "organisation": {"id": organisation.pk, "slug": organisation.slug},
        "projects": [_child_summary(child) for child in children],
    }
    export = (parent.progress or {}).get("export")
    if parent.kind == RequestKind.ACCESS and export:
        certificate["export"] = {
            k: export.get(k)
            for k in ("key", "sha256", "size", "sources", "expires_at", "downloaded_at")
        } | {"downloaded_by": export.get("downloaded_by"), "deleted": True}
    return certificate | certificate_evidence(parent, Q(payload__request=parent.pk))


# -- the beat -----------------------------------------------------------------------------


def parents_advance_all() -> dict[int, str]:
    """The beat's pass over organisation requests: an approved one whose fan-out failed is
    fanned out, one in progress follows its children."""
    outcome: dict[int, str] = {}
    rows = SubjectRequest.objects.filter(scope=RequestScope.ORGANISATION)
    for parent in rows.filter(state=RequestState.APPROVED).order_by("pk"):
        try:
            fan_out(parent)
        except Exception as error:  # noqa: BLE001 - reported, retried on the next pass
            logger.exception("organisation request %s could not fan out", parent.pk)
            outcome[parent.pk] = f"not fanned out: {type(error).__name__}"
    for parent in rows.filter(state=RequestState.IN_PROGRESS).order_by("pk"):
        try:
            outcome[parent.pk] = parent_advance(parent)
        except Exception as error:  # noqa: BLE001 - one request's error spares the rest
            logger.exception("organisation request %s: this pass stopped", parent.pk)
            outcome[parent.pk] = f"retrying: {type(error).__name__}"
    return outcome
