"""Writing the organisation's rate card, a project's budget and quota, the webhook.

Every change is audited: organisation-level ones (rate card, webhook) on the platform
chain with the organisation as artifact, project-level ones on the project's chain."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal, InvalidOperation
from typing import Any

from django.contrib.auth.models import User
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.finops import selectors
from controlplane.finops.errors import InvalidInput, NotAllowed, StaleVersion
from controlplane.finops.models import MONEY, Budget, OrgWebhook, ProjectQuota, RateCard
from controlplane.finops.rates import RateCardError, validate_rates
from controlplane.finops.webhooks import InternalAddress, check_destination
from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import is_org_admin
from controlplane.projects.models import Project

MAX_REASON = 300
MAX_AMOUNT = Decimal(10) ** (MONEY["max_digits"] - MONEY["decimal_places"]) - 1
MAX_QUOTA = 10_000


# -- the rate card -------------------------------------------------------------------------


def rates_diff(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """{"cpu_hour": {"before": "0.05", "after": "0.06"}, "gpu_hour.H100": {...}}: the
    flattened rates that changed (before None: the first version)."""
    flat_before = _flatten(before or {})
    flat_after = _flatten(after)
    return {
        key: {"before": flat_before.get(key), "after": flat_after.get(key)}
        for key in sorted(set(flat_before) | set(flat_after))
        if flat_before.get(key) != flat_after.get(key)
    }


def _flatten(rates: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat = {}
    for key, value in rates.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def rate_card_create(
    *,
    org: Organisation,
    actor: User,
    rates: Any,
    currency: Any = "EUR",
    reason: Any = "",
    base_version: Any = None,
) -> RateCard:
    """A new version of the organisation's rates, in force from now.

    `base_version` is the version the editor saw (0 before the first): if another admin
    saved a version since, StaleVersion (409) and nothing is written. The organisation's
    row is locked while the number is chosen, so versions stay unique under concurrency."""
    if not is_org_admin(actor, org):
        raise NotAllowed("only the organisation's admins change its rate card")
    try:
        clean, currency = validate_rates(rates, currency)
    except RateCardError as error:
        raise InvalidInput(str(error), fields={error.field: [error.message]}) from None
    if not isinstance(reason, str) or len(reason) > MAX_REASON:
        raise InvalidInput("reason: at most 300 characters", fields={"reason": ["too long"]})
    if base_version is not None and (
        isinstance(base_version, bool) or not isinstance(base_version, int) or base_version < 0
    ):
        raise InvalidInput(
            "base_version: the version you edited (0 for the first)",
            fields={"base_version": ["a whole number >= 0"]},
        )
    with transaction.atomic():
        Organisation.objects.select_for_update().filter(pk=org.pk).get()
        current = selectors.current_rate_card(org)
        current_version = current.version if current else 0
        if base_version is not None and base_version != current_version:
            raise StaleVersion(
                f"the rate card changed while you edited it: it is at v{current_version} now, "
                f"you edited v{base_version}; reload it and apply your change again"
            )
        diff = rates_diff(current.rates if current else None, clean)
        if current is not None and not diff and current.currency == currency:
            raise InvalidInput("the rates are the same as now", fields={"rates": ["no change"]})
        card = RateCard.objects.create(
            organisation=org,
            version=current_version + 1,
            currency=currency,
            rates=clean,
            effective_from=timezone.now(),
            reason=reason.strip(),
            created_by=actor,
        )
        audit_append(
            project=None,
            actor=actor,
            action="finops.rate_card_changed",
            artifact=org,
            payload={
                "version": card.version,
                "currency": currency,
                "reason": card.reason,
                "diff": diff,
            },
        )
    return card


# -- budgets -------------------------------------------------------------------------------


def _amount(value: Any) -> Decimal:
    if value is None or value == "" or isinstance(value, bool):
        raise InvalidInput("amount is required", fields={"amount": ["required"]})
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise InvalidInput(
            f"amount: {value!r} is not a number", fields={"amount": ["a number, e.g. 500"]}
        ) from None
    if not amount.is_finite() or amount < 0:
        raise InvalidInput("amount cannot be negative", fields={"amount": [">= 0"]})
    if amount > MAX_AMOUNT:
        raise InvalidInput("amount is too large", fields={"amount": [f"<= {MAX_AMOUNT}"]})
    return amount.quantize(Decimal("0.01"))


def budget_set(
    *,
    project: Project,
    actor: User,
    month: dt.date,
    amount: Any,
    hard_stop: bool = False,
    recurring: bool = True,
) -> Budget:
    """Set the project's budget for `month` (its first day). A budget below what is
    already spent is accepted: its alerts fire at once (after commit)."""
    if not selectors.can_set_budget(actor, project):
        raise NotAllowed("budgets are set by the project's owners and the organisation's admins")
    value = _amount(amount)
    first = selectors.month_start(month)
    with transaction.atomic():
        budget, created = Budget.objects.select_for_update().get_or_create(
            project=project,
            month=first,
            defaults={
                "amount": value,
                "hard_stop": hard_stop,
                "recurring": recurring,
                "updated_by": actor,
            },
        )
        before = None
        if not created:
            before = {"amount": str(budget.amount), "hard_stop": budget.hard_stop}
            budget.amount, budget.hard_stop, budget.recurring = value, hard_stop, recurring
            budget.updated_by = actor
            budget.save()
        audit_append(
            project=project,
            actor=actor,
            action="finops.budget_set",
            artifact=budget,
            payload={
                "month": first.isoformat(),
                "amount": str(value),
                "hard_stop": hard_stop,
                "recurring": recurring,
                "before": before,
            },
        )
        from controlplane.finops.alerts import budget_check

        # At once, not debounced: a budget set below the spend alerts before the answer
        # (three SUMs; the webhook itself is sent by the control worker).
        transaction.on_commit(lambda: budget_check(project.pk), robust=True)
    return budget


# -- quotas --------------------------------------------------------------------------------


def _limit(value: Any, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise InvalidInput(f"{field}: a whole number", fields={field: ["a whole number >= 0"]})
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(
            f"{field}: {value!r} is not a whole number", fields={field: ["a whole number >= 0"]}
        ) from None
    if number < 0 or number > MAX_QUOTA:
        raise InvalidInput(f"{field}: 0 to {MAX_QUOTA}", fields={field: [f"0 to {MAX_QUOTA}"]})
    return number


def quota_set(
    *, project: Project, actor: User, max_concurrent_gpu_jobs: Any, max_gpus: Any
) -> ProjectQuota:
    """Set the project's GPU quota (None: no limit; 0: no GPU jobs). A raised quota
    releases held jobs at once (after commit)."""
    if not selectors.can_set_quota(actor, project):
        raise NotAllowed("quotas are set by the organisation's admins")
    jobs = _limit(max_concurrent_gpu_jobs, "max_concurrent_gpu_jobs")
    gpus = _limit(max_gpus, "max_gpus")
    with transaction.atomic():
        quota, _ = ProjectQuota.objects.select_for_update().get_or_create(project=project)
        before = {
            "max_concurrent_gpu_jobs": quota.max_concurrent_gpu_jobs,
            "max_gpus": quota.max_gpus,
        }
        quota.max_concurrent_gpu_jobs, quota.max_gpus, quota.updated_by = jobs, gpus, actor
        quota.save()
        audit_append(
            project=project,
            actor=actor,
            action="finops.quota_set",
            artifact=quota,
            payload={"max_concurrent_gpu_jobs": jobs, "max_gpus": gpus, "before": before},
        )
        from controlplane.finops.quotas import quota_release_soon

        quota_release_soon(project.pk)
    return quota


# -- the webhook ---------------------------------------------------------------------------


def webhook_set(
    *, org: Organisation, actor: User, url: Any, secret: Any = None, enabled: bool = True
) -> OrgWebhook:
    """Set where notifications go. `secret` None keeps the current one ("" removes it)."""
    if not is_org_admin(actor, org):
        raise NotAllowed("only the organisation's admins set its webhook")
    if not isinstance(url, str) or not url.strip():
        raise InvalidInput("url is required", fields={"url": ["required"]})
    url = url.strip()
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise InvalidInput(
            f"url: {url!r} is not an http(s) URL", fields={"url": ["an http:// or https:// URL"]}
        ) from None
    if len(url) > 500:
        raise InvalidInput("url: at most 500 characters", fields={"url": ["too long"]})
    try:
        # A literal internal address is refused now; a name is checked at each send (its
        # addresses may change).
        check_destination(url, resolve=False)
    except InternalAddress as error:
        raise InvalidInput(f"url: {error}", fields={"url": [str(error)]}) from None
    if secret is not None and (not isinstance(secret, str) or len(secret) > 128):
        raise InvalidInput("secret: at most 128 characters", fields={"secret": ["too long"]})
    with transaction.atomic():
        hook, created = OrgWebhook.objects.select_for_update().get_or_create(
            organisation=org, defaults={"url": url, "secret": secret or "", "enabled": enabled}
        )
        if not created:
            hook.url, hook.enabled = url, bool(enabled)
            if secret is not None:
                hook.secret = secret
            hook.save()
        audit_append(
            project=None,
            actor=actor,
            action="finops.webhook_set",
            artifact=org,
            # Never the secret itself: the audit trail is readable by more people.
            payload={"url": url, "enabled": hook.enabled, "secret_set": bool(hook.secret)},
        )
    return hook
