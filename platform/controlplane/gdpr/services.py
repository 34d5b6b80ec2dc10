"""Filing, reviewing and extending data-subject requests; the job's state changes.

    request_file(project=, actor=, kind="erasure", identifiers=[{"type": "email", "value": ...}],
                 legal_basis="Art. 17(1)(b): consent withdrawn")      # pending_review
    request_approve(request=, actor=, reason=)                         # approved (4 eyes)
    request_extend(request=, actor=, months=1, reason=)                # deadline + 1 month

Invariants:
- The subject is in audit payloads only as keyed hashes (identifiers.keyed_hash), never in
  clear: free text a member writes (legal basis, review and extension reasons) is refused
  when it names one of the subject's identifiers, and the job's failure reason is redacted.
- Four eyes: the reviewer is an owner or compliance officer by membership (a platform
  admin is no second pair of eyes unless a member in that role) and not the filer. An
  organisation-scoped request is filed by an admin of the project's organisation (or
  staff) and decided by another admin of it, by membership (gdpr/organisation.py).
- A decision is a conditional UPDATE on `state = pending_review`: of two reviewers at once,
  one wins and the other gets a 409.
- `on_approved` hooks run after the approval commits (the erasure/access job subscribes:
  `on_approved.append(start_job)`), never for a decision that rolled back.

The job moves an approved request to in_progress (`request_mark_in_progress`, idempotent
for a resumed run), records `progress` as it goes, and ends it with `request_complete`
(its certificate) or `request_fail`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from typing import Any

from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.gdpr import identifiers as ids
from controlplane.gdpr.deadlines import MAX_EXTENSION_MONTHS, deadline_for
from controlplane.gdpr.errors import Conflict, InvalidRequest, NotAllowed
from controlplane.gdpr.models import (
    OPEN_STATES,
    RequestKind,
    RequestScope,
    RequestState,
    SubjectIdentifier,
    SubjectRequest,
)
from controlplane.orgs.models import OrgRole
from controlplane.orgs.selectors import is_org_admin, org_role_of
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import role_of

logger = logging.getLogger(__name__)

MAX_TEXT = 2000
MIN_QUOTED = 4
# Clocks differ a little between a browser and the server: "received now" is not future.
CLOCK_SKEW = timedelta(minutes=5)

# Called with the approved SubjectRequest after its approval commits. Empty until the
# erasure/access job subscribes; a failing hook is logged and does not undo the approval.
on_approved: list[Callable[[SubjectRequest], None]] = []


def may_file(user, project) -> bool:
    role = role_of(user, project)
    return role_allows(role, Action.RUN) or role_allows(role, Action.REVIEW)


def may_review(user, project) -> bool:
    """Owner or compliance officer by membership (what also sees identifiers in clear)."""
    return role_allows(role_of(user, project), Action.REVIEW)


def may_take_export(user, request: SubjectRequest) -> bool:
    """Who downloads an access request's export ("downloadable once by the reviewer"):
    the reviewer who approved it, while they still hold the reviewing role."""
    return (
        request.reviewed_by_id is not None
        and request.reviewed_by_id == user.pk
        and may_review_request(user, request)
    )


def export_reviewer_only(request: SubjectRequest) -> str:
    """Why another reviewer may not download the export."""
    who = request.reviewed_by.username if request.reviewed_by else "the reviewer"
    return (
        f"only {who}, who approved this request, downloads its export (once): the "
        "subject's records go to one person, on the record"
    )


def may_review_request(user, request: SubjectRequest) -> bool:
    """Who decides `request`, extends its deadline and takes its export: for the project
    scope an owner or compliance officer of its project; for the organisation scope an
    admin of the project's organisation by membership (staff is no second pair of eyes
    there either)."""
    if request.scope == RequestScope.ORGANISATION:
        return org_role_of(user, request.project.organisation) == OrgRole.ADMIN
    return may_review(user, request.project)


def may_see_identifiers(user, request: SubjectRequest) -> bool:
    """Whether `user` sees the request's identifiers in clear (else masked)."""
    return may_review(user, request.project) or may_review_request(user, request)


def _refusal(request: SubjectRequest, verb: str) -> str:
    if request.scope == RequestScope.ORGANISATION:
        return (
            f"to {verb} a request for every project of the organisation you need the admin "
            f"role in organisation {request.project.organisation.name} (a membership role: "
            "being a platform admin is not enough)"
        )
    return (
        f"to {verb} a data-subject request you need the owner or compliance role in this "
        "project (a membership role: being a platform admin is not enough)"
    )


def _text(value: Any, field: str, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidRequest(f"{what} is required", fields={field: [f"give {what}"]})
    if len(value) > MAX_TEXT:
        raise InvalidRequest(
            f"{what} is too long", fields={field: [f"at most {MAX_TEXT} characters"]}
        )
    return value.strip()


def _free_of_subject(text: str, field: str, values: list[str]) -> str:
    """Refuse free text that names the subject: it would reach the audit trail in clear.
    Values under MIN_QUOTED characters (a customer id "42") would match by chance."""
    folded = text.casefold()
    if any(len(value) >= MIN_QUOTED and value.casefold() in folded for value in values):
        raise InvalidRequest(
            "the text names the subject's identifier; the audit trail keeps the subject only "
            "as a keyed hash, so describe the request without it",
            fields={field: ["must not contain the subject's identifiers"]},
        )
    return text


def _received(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    if isinstance(value, date) and not isinstance(value, datetime):
        value = datetime.combine(value, time.min)
    if not isinstance(value, datetime):
        raise InvalidRequest(
            "received_at must be a date and time", fields={"received_at": ["a datetime"]}
        )
    if timezone.is_naive(value):
        value = timezone.make_aware(value)
    if value > now + CLOCK_SKEW:
        raise InvalidRequest(
            "a request cannot be received in the future",
            fields={"received_at": ["in the future"]},
        )
    return min(value, now)


def _subjects(request: SubjectRequest) -> list[str]:
    return [row.subject_hash for row in request.identifiers.all()]


def _clear_values(request: SubjectRequest) -> list[str]:
    return [ids.unseal(request.project_id, row.value_token) for row in request.identifiers.all()]


def request_file(
    *,
    project,
    actor,
    kind: Any,
    identifiers: Any,
    legal_basis: Any,
    received_at: Any = None,
    scope: Any = RequestScope.PROJECT,
) -> SubjectRequest:
    """File a request (owners, engineers, compliance officers): it waits for review. The
    organisation scope (every project of the project's organisation) is filed by an admin
    of the organisation, or staff."""
    if scope not in RequestScope.values:
        raise InvalidRequest(
            "scope must be project or organisation",
            fields={"scope": ["project or organisation"]},
        )
    if scope == RequestScope.ORGANISATION:
        if not is_org_admin(actor, project.organisation):
            raise NotAllowed(
                "a request for every project of the organisation is filed by an admin of "
                f"organisation {project.organisation.name}; your role there is "
                f"{org_role_of(actor, project.organisation) or 'none'}"
            )
    elif not may_file(actor, project):
        raise NotAllowed(
            "filing a data-subject request needs the owner, engineer or compliance role "
            "in this project"
        )
    if kind not in RequestKind.values:
        raise InvalidRequest(
            "kind must be erasure (Art. 17) or access (Art. 15)",
            fields={"kind": ["erasure or access"]},
        )
    found = ids.checked(identifiers)
    basis = _free_of_subject(
        _text(legal_basis, "legal_basis", "the legal basis"),
        "legal_basis",
        [i.value for i in found],
    )
    now = timezone.now()
    received = _received(received_at, now)
    hashes = [ids.keyed_hash(project, identifier.value) for identifier in found]
    with transaction.atomic():
        request = SubjectRequest.objects.create(
            project=project,
            kind=kind,
            scope=scope,
            legal_basis=basis,
            filed_by=actor,
            received_at=received,
            deadline_at=deadline_for(received),
        )
        store_identifiers(request, project, found, hashes)
        audit_append(
            project=project,
            actor=actor,
            action="subject_request.filed",
            artifact=request,
            payload={
                "request": request.pk,
                "kind": kind,
                "scope": scope,
                "subjects": hashes,
                "identifier_types": [identifier.type for identifier in found],
                "legal_basis": basis,
                "received_at": received.isoformat(),
                "deadline_at": request.deadline_at.isoformat(),
            },
        )
    return request


def _decide(request: SubjectRequest, actor, reason: Any, *, approve: bool) -> SubjectRequest:
    verb = "approve" if approve else "reject"
    if not may_review_request(actor, request):
        raise NotAllowed(_refusal(request, verb))
    if request.filed_by_id == actor.pk:
        second = (
            "admin of the organisation"
            if request.scope == RequestScope.ORGANISATION
            else "owner or compliance officer"
        )
        raise NotAllowed(f"you filed this request; a second {second} must {verb} it")
    reason = _free_of_subject(_text(reason, "reason", "a reason"), "reason", _clear_values(request))
    state = RequestState.APPROVED if approve else RequestState.REJECTED
    now = timezone.now()
    with transaction.atomic():
        claimed = SubjectRequest.objects.filter(
            pk=request.pk, state=RequestState.PENDING_REVIEW
        ).update(state=state, reviewed_by=actor, reviewed_at=now, review_reason=reason)
        if claimed != 1:
            current = SubjectRequest.objects.get(pk=request.pk).state
            raise Conflict(f"this request is already {current.replace('_', ' ')}")
        request.refresh_from_db()
        audit_append(
            project=request.project,
            actor=actor,
            action=f"subject_request.{state}",
            artifact=request,
            payload={
                "request": request.pk,
                "kind": request.kind,
                "subjects": _subjects(request),
                "filed_by": request.filed_by_id,
                "reason": reason,
            },
        )
        if approve:
            transaction.on_commit(lambda: run_on_approved(request))
    return request


def run_on_approved(request: SubjectRequest) -> None:
    """The hooks of an approved request (also of each child an organisation request's
    fan-out creates approved)."""
    for hook in list(on_approved):
        try:
            hook(request)
        except Exception:  # noqa: BLE001 - the approval stands; the hook's owner retries
            logger.exception("on_approved hook %r failed for subject request %s", hook, request.pk)


def request_approve(*, request: SubjectRequest, actor, reason: Any) -> SubjectRequest:
    return _decide(request, actor, reason, approve=True)


def request_reject(*, request: SubjectRequest, actor, reason: Any) -> SubjectRequest:
    return _decide(request, actor, reason, approve=False)


def request_extend(*, request: SubjectRequest, actor, months: Any, reason: Any) -> SubjectRequest:
    """Push the deadline back (owners and compliance officers), at most two months in all
    beyond the first (Art. 12(3)), with the reason the subject must be told. An
    organisation request's children follow it: theirs is extended with it, never alone."""
    if not may_review_request(actor, request):
        raise NotAllowed(_refusal(request, "extend"))
    if request.parent_id:
        raise Conflict(
            f"this request was fanned out from organisation request #{request.parent_id} "
            f"(project {request.parent.project.name}) and follows its deadline: extend that one"
        )
    if isinstance(months, bool) or not isinstance(months, int) or months < 1:
        raise InvalidRequest(
            "extend by a whole number of months (1 or 2)", fields={"months": ["1 or 2"]}
        )
    reason = _free_of_subject(
        _text(reason, "reason", "the reason for the extension"), "reason", _clear_values(request)
    )
    with transaction.atomic():
        locked = SubjectRequest.objects.select_for_update().get(pk=request.pk)
        if locked.state not in OPEN_STATES:
            raise Conflict(f"this request is already {locked.state.replace('_', ' ')}")
        total = locked.extension_months + months
        if total > MAX_EXTENSION_MONTHS:
            raise InvalidRequest(
                f"the deadline can be extended by at most {MAX_EXTENSION_MONTHS} months in "
                f"total (three months from receipt); {locked.extension_months} already used",
                fields={"months": [f"at most {MAX_EXTENSION_MONTHS - locked.extension_months}"]},
            )
        before = locked.deadline_at
        locked.extension_months = total
        locked.deadline_at = deadline_for(locked.received_at, total)
        locked.extension_reason = reason
        locked.extended_by = actor
        locked.extended_at = timezone.now()
        locked.save(
            update_fields=[
                "extension_months",
                "deadline_at",
                "extension_reason",
                "extended_by",
                "extended_at",
            ]
        )
        audit_append(
            project=request.project,
            actor=actor,
            action="subject_request.extended",
            artifact=locked,
            payload={
                "request": locked.pk,
                "subjects": _subjects(locked),
                "months": months,
                "extension_months": total,
                "deadline_before": before.isoformat(),
                "deadline_at": locked.deadline_at.isoformat(),
                "reason": reason,
            },
        )
        _extend_children(locked, actor, months)
    return locked


def _extend_children(parent: SubjectRequest, actor, months: int) -> None:
    """The open children take the parent's new deadline, each audited in its own project."""
    fields = ["extension_months", "deadline_at", "extension_reason", "extended_by", "extended_at"]
    children = (
        SubjectRequest.objects.select_for_update()
        .filter(parent=parent, state__in=OPEN_STATES)
        .select_related("project")
        .order_by("pk")
    )
    for child in children:
        child_before = child.deadline_at
        for field in fields:
            setattr(child, field, getattr(parent, field))
        child.save(update_fields=fields)
        audit_append(
            project=child.project,
            actor=actor,
            action="subject_request.extended",
            artifact=child,
            payload={
                "request": child.pk,
                "parent": parent.pk,
                "subjects": _subjects(child),
                "months": months,
                "extension_months": child.extension_months,
                "deadline_before": child_before.isoformat(),
                "deadline_at": child.deadline_at.isoformat(),
                "reason": parent.extension_reason,
            },
        )


def _parent_soon(request: SubjectRequest) -> None:
    """A child ended: its organisation request may end too (the beat covers a lost send)."""
    if request.parent_id:
        from controlplane.gdpr.erasure import advance_soon

        parent_id = request.parent_id
        transaction.on_commit(lambda: advance_soon(parent_id), robust=True)


# -- the job's hand-off ------------------------------------------------------------------


def request_mark_in_progress(*, request: SubjectRequest) -> SubjectRequest:
    """The job starts on an approved request; a resumed run finds it in progress already."""
    with transaction.atomic():
        claimed = SubjectRequest.objects.filter(pk=request.pk, state=RequestState.APPROVED).update(
            state=RequestState.IN_PROGRESS, started_at=timezone.now()
        )
        request.refresh_from_db()
        if claimed == 1:
            audit_append(
                project=request.project,
                actor=None,
                action="subject_request.in_progress",
                artifact=request,
                payload={"request": request.pk, "subjects": _subjects(request)},
            )
        elif request.state != RequestState.IN_PROGRESS:
            raise Conflict(f"a {request.state.replace('_', ' ')} request cannot be started")
    return request


def request_record_progress(*, request: SubjectRequest, progress: dict) -> SubjectRequest:
    """The job's running account (steps done, findings so far); no state changes, so no
    audit event: the job audits what it deletes itself."""
    if not isinstance(progress, dict):
        raise InvalidRequest("progress is a JSON object", fields={"progress": ["an object"]})
    updated = SubjectRequest.objects.filter(pk=request.pk, state=RequestState.IN_PROGRESS).update(
        progress=progress
    )
    if updated != 1:
        raise Conflict("progress is recorded only while the request is in progress")
    request.refresh_from_db()
    return request


def request_complete(*, request: SubjectRequest, certificate: dict) -> SubjectRequest:
    """The job finished (and its residue scan was clean): the certificate is the record."""
    if not isinstance(certificate, dict) or not certificate:
        raise InvalidRequest("a completed request needs its certificate")
    body = json.dumps(certificate, sort_keys=True, default=str).encode()
    with transaction.atomic():
        claimed = SubjectRequest.objects.filter(
            pk=request.pk, state=RequestState.IN_PROGRESS
        ).update(state=RequestState.COMPLETED, certificate=certificate, finished_at=timezone.now())
        request.refresh_from_db()
        if claimed != 1:
            raise Conflict(f"a {request.state.replace('_', ' ')} request cannot be completed")
        audit_append(
            project=request.project,
            actor=None,
            action="subject_request.completed",
            artifact=request,
            payload={
                "request": request.pk,
                "subjects": _subjects(request),
                "certificate_sha256": hashlib.sha256(body).hexdigest(),
            },
        )
        _parent_soon(request)
    return request


def _redacted(text: str, values: list[str]) -> str:
    for value in (v for v in values if len(v) >= MIN_QUOTED):
        start = text.casefold().find(value.casefold())
        while start >= 0:
            text = text[:start] + "[subject]" + text[start + len(value) :]
            start = text.casefold().find(value.casefold(), start + len("[subject]"))
    return text


def request_fail(*, request: SubjectRequest, reason: str) -> SubjectRequest:
    """The job gave up (or its scan found residue): the request reads failed, with why.
    A reason that quotes an identifier is redacted: the audit trail never holds one."""
    text = _redacted(str(reason).strip()[:MAX_TEXT] or "no reason given", _clear_values(request))
    with transaction.atomic():
        claimed = SubjectRequest.objects.filter(
            pk=request.pk, state__in=[RequestState.APPROVED, RequestState.IN_PROGRESS]
        ).update(state=RequestState.FAILED, failure_reason=text, finished_at=timezone.now())
        request.refresh_from_db()
        if claimed != 1:
            raise Conflict(f"a {request.state.replace('_', ' ')} request cannot fail")
        audit_append(
            project=request.project,
            actor=None,
            action="subject_request.failed",
            artifact=request,
            payload={"request": request.pk, "subjects": _subjects(request), "reason": text},
        )
        _parent_soon(request)
    return request


def store_identifiers(request: SubjectRequest, project, identifiers, hashes: list[str]) -> None:
    """A request's identifiers, in order: sealed with the project's key (the clear value
    only for the job that needs it) beside the keyed hash its indexes hold."""
    SubjectIdentifier.objects.bulk_create(
        SubjectIdentifier(
            request=request,
            position=position,
            type=identifier.type,
            value_token=ids.seal(project.pk, identifier.value),
            subject_hash=digest,
        )
        for position, (identifier, digest) in enumerate(zip(identifiers, hashes, strict=True))
    )
