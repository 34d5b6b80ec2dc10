from __future__ import annotations

from collections.abc import Iterable

from django.db.models import QuerySet

from controlplane.audit.models import AuditEvent


def audit_events_for(
    project,
    *,
    artifact_type: str | None = None,
    artifact_id: str | None = None,
    action: str | None = None,
) -> QuerySet[AuditEvent]:
    events = AuditEvent.objects.filter(project_id=project.pk)
    if artifact_type:
        events = events.filter(artifact_type=artifact_type)
    if artifact_id:
        events = events.filter(artifact_id=str(artifact_id))
    if action:
        events = events.filter(action=action)
    return events.order_by("-seq")


def actor_names(events: Iterable[AuditEvent]) -> dict[int, str]:
    """{user id: username} of the events' actors, in one query (system events have none)."""
    return usernames({event.actor_id for event in events if event.actor_id})


def usernames(user_ids: set[int]) -> dict[int, str]:
    """{user id: username}, in one query; a deleted user is simply missing."""
    from django.contrib.auth.models import User

    return dict(User.objects.filter(pk__in=user_ids).values_list("pk", "username"))
