"""The audit page's filters (actor, action, artifact, date range) as a form, and the
events they select. The page, its CSV/JSONL export and its pagination links all read
the same GET parameters through this form, so an export holds what the page shows."""

from __future__ import annotations

import datetime as dt

from django import forms
from django.db.models import QuerySet
from django.http import QueryDict
from django.utils import timezone

from controlplane.audit.models import AuditEvent
from controlplane.audit.selectors import audit_events_for, usernames

SYSTEM_ACTOR = "system"  # events no user caused (workers, the beat, the reaper)
FILTER_FIELDS = ("actor", "action", "artifact_type", "artifact_id", "since", "until")


class ActorField(forms.ChoiceField):
    """A select of the project's actors that also takes any user id (a link to "what did
    user 7 do" is a valid question even when the answer is nothing)."""

    def valid_value(self, value: str) -> bool:
        # ASCII and at most 18 digits: int() of it fits the BIGINT column.
        is_id = value.isascii() and value.isdigit() and len(value) <= 18
        return is_id or super().valid_value(value)


class AuditFilterForm(forms.Form):
    actor = ActorField(required=False, label="Actor")
    action = forms.ChoiceField(required=False, label="Action")
    artifact_type = forms.CharField(
        required=False, max_length=64, label="Artifact type", strip=True
    )
    artifact_id = forms.CharField(required=False, max_length=64, label="Artifact id", strip=True)
    since = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    until = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, data: QueryDict, *, project) -> None:
        super().__init__(data)
        self.project = project
        # Distinct values over the project's events (order_by() drops the default ordering,
        # which DISTINCT would otherwise include).
        events = AuditEvent.objects.filter(project_id=project.pk).order_by()
        actor_ids = sorted(
            events.values_list("actor_id", flat=True).distinct(), key=lambda a: a or 0
        )
        names = usernames({actor for actor in actor_ids if actor})
        self.fields["actor"].choices = [("", "anyone")] + [
            (str(actor), names.get(actor, f"user {actor}")) if actor else (SYSTEM_ACTOR, "system")
            for actor in actor_ids
        ]
        actions = sorted(events.values_list("action", flat=True).distinct())
        self.fields["action"].choices = [("", "any")] + [(action, action) for action in actions]

    def clean(self) -> dict:
        cleaned = super().clean()
        since, until = cleaned.get("since"), cleaned.get("until")
        if since and until and since > until:
            self.add_error("until", f"the range ends ({until}) before it starts ({since})")
        return cleaned

    def events(self) -> QuerySet[AuditEvent]:
        """The project's events that match the valid filters, newest first (a filter
        with an error is left out, and shown next to its field)."""
        valid = self.cleaned_data if self.is_valid() else _valid_part(self)
        events = audit_events_for(
            self.project,
            artifact_type=valid.get("artifact_type") or None,
            artifact_id=valid.get("artifact_id") or None,
            action=valid.get("action") or None,
        )
        actor = valid.get("actor")
        if actor == SYSTEM_ACTOR:
            events = events.filter(actor_id__isnull=True)
        elif actor:
            events = events.filter(actor_id=int(actor))
        if valid.get("since"):
            events = events.filter(created_at__gte=_start_of(valid["since"]))
        if valid.get("until"):
            events = events.filter(created_at__lt=_start_of(valid["until"] + dt.timedelta(days=1)))
        return events

    def applied(self) -> dict[str, str]:
        """The filters in force, as text (for the export's audit event and the page)."""
        valid = self.cleaned_data if self.is_valid() else _valid_part(self)
        return {name: str(valid[name]) for name in FILTER_FIELDS if valid.get(name)}

    def query_string(self) -> str:
        """The filters as GET parameters, for links that keep them (pages, exports)."""
        kept = QueryDict(mutable=True)
        for name in FILTER_FIELDS:
            value = self.data.get(name)
            if value:
                kept[name] = value
        return kept.urlencode()


def _valid_part(form: AuditFilterForm) -> dict:
    return {
        name: value
        for name, value in getattr(form, "cleaned_data", {}).items()
        if name not in form.errors
    }


def _start_of(day: dt.date) -> dt.datetime:
    """Midnight of `day` in the deployment's time zone (the dates people type)."""
    return timezone.make_aware(dt.datetime.combine(day, dt.time.min))
