"""Fixtures of the finops tests: an organisation admin, another organisation, rates."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

RATES = {
    "cpu_hour": "0.10",
    "gpu_hour": {"default": "2.00"},
    "storage_gb_month": {
        "raw": "30",
        "derived": "30",
        "checkpoints": "30",
        "models": "30",
        "archive": "30",
    },
    "tokens_million": "1.00",
}


@pytest.fixture(autouse=True)
def loopback_webhooks(settings):
    """The tests' receivers listen on loopback, which a deployment refuses by default."""
    import ipaddress

    settings.WEBHOOK_ALLOWED_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"),)


@pytest.fixture
def org_admin(team, make_user):
    """An admin of the team's organisation who is not a member of its project."""
    from controlplane.orgs.models import OrgMembership, OrgRole

    user = make_user("orgadmin")
    OrgMembership.objects.create(
        organisation=team.project.organisation, user=user, role=OrgRole.ADMIN
    )
    return user


@pytest.fixture
def other_org(make_user):
    """Another organisation, its admin and a project of its own."""
    from controlplane.orgs.services import org_create
    from controlplane.projects.services import project_create

    class Other:
        pass

    other = Other()
    other.admin = make_user("acme-admin")
    other.org = org_create(name="Acme", slug="acme", actor=other.admin)
    other.project = project_create(
        name="Gamma", slug="gamma", actor=other.admin, organisation=other.org
    )
    return other


@pytest.fixture
def rate_card(team, org_admin):
    """Rates in force for the team's organisation since the start of the month."""
    from controlplane.finops.services import rate_card_create

    card = rate_card_create(org=team.project.organisation, actor=org_admin, rates=RATES)
    card.effective_from = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
    card.save(update_fields=["effective_from"])
    return card


@pytest.fixture
def spend(team):
    """`spend(amount)`: a CPU job attempt of the team's project that cost `amount` now."""
    from django.utils import timezone

    from controlplane.finops.models import JobAttemptUsage
    from controlplane.jobs.models import Job

    def add(amount: str, *, project=None, started_at=None):
        project = project or team.project
        job = Job.objects.create(
            project=project, kind="inspect", state="succeeded", created_by=team.owner
        )
        now = started_at or timezone.now()
        return JobAttemptUsage.objects.create(
            job=job,
            attempt=1,
            project=project,
            kind="inspect",
            queue="cpu",
            started_at=now,
            updated_at=now,
            cost=Decimal(amount),
        )

    return add


@pytest.fixture
def owner_budget(team):
    """`owner_budget(amount, hard_stop=False, month=None)`: the owner sets this month's budget."""
    from django.utils import timezone

    from controlplane.finops.services import budget_set

    def set_budget(amount: str, *, hard_stop: bool = False, month=None):
        return budget_set(
            project=team.project,
            actor=team.owner,
            month=month or timezone.now().date(),
            amount=amount,
            hard_stop=hard_stop,
        )

    return set_budget


@pytest.fixture
def hook(team, org_admin):
    """The team organisation's webhook, at a URL nothing listens on (deliveries stay rows)."""
    from controlplane.finops.services import webhook_set

    return webhook_set(
        org=team.project.organisation, actor=org_admin, url="http://127.0.0.1:9/hook", secret="s3"
    )
