"""Serving usage per deployment and hour, from the counters serve nodes report (so it
is counted with archiving off too); a replica that restarted starts again from zero."""

from __future__ import annotations

from decimal import Decimal

import pytest

from controlplane.finops.models import ServingUsage
from controlplane.finops.serving_usage import counters_delta
from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    FakeNode,
    deploy_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db


def test_counters_become_deltas_and_a_restart_starts_from_zero():
    before = {"requests": 10, "tokens_in": 100, "tokens_out": 50}
    after = {"requests": 12, "tokens_in": 130, "tokens_out": 90, "up": True}
    assert counters_delta(before, after, restarted=False) == {
        "requests": 2,
        "tokens_in": 30,
        "tokens_out": 40,
    }
    fresh = {"requests": 1, "tokens_in": 5, "tokens_out": 3}
    assert counters_delta(before, fresh, restarted=False) == fresh  # counters went down
    assert counters_delta(after, after, restarted=True) == {
        "requests": 12,
        "tokens_in": 130,
        "tokens_out": 90,
    }
    assert counters_delta({}, {"requests": "x", "tokens_in": -4}, restarted=False) == {
        "requests": 0,
        "tokens_in": 0,
        "tokens_out": 0,
    }


def test_node_reports_add_up_per_deployment_and_hour_at_the_rate_in_force(team, deploy, rate_card):
    deployment = deploy(replicas=1, archive_requests=False)
    node = FakeNode("n1")
    node.sync()
    node.ready()
    (status,) = node.running.values()
    status.health = {"requests": 3, "tokens_in": 400_000, "tokens_out": 100_000}
    node.sync()
    status.health = {"requests": 5, "tokens_in": 900_000, "tokens_out": 100_000}
    node.sync()
    node.sync()  # nothing new served: nothing added
    status.restarts = 1  # the replica process restarted: its counters start at zero
    status.health = {"requests": 1, "tokens_in": 10, "tokens_out": 0}
    node.sync()

    (usage,) = ServingUsage.objects.filter(deployment=deployment)
    assert (usage.requests, usage.tokens_in, usage.tokens_out) == (6, 900_010, 100_000)
    assert usage.project_id == team.project.pk and usage.rate_card_id == rate_card.pk
    assert usage.hour.minute == 0 and usage.hour.second == 0
    # 1.00 a million tokens: 1,000,010 tokens.
    assert usage.cost == Decimal("1.000010")
