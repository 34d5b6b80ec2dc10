"""Serving in the admin: deployments, replicas and nodes are shown, never edited."""

from __future__ import annotations

import pytest

from tests.platform.serving.deployment_fixtures import (  # noqa: F401 - fixtures
    FakeNode,
    deploy_fixture,
    served_version_fixture,
)

pytestmark = pytest.mark.django_db


@pytest.mark.parametrize("model", ["deployment", "replica", "servenode"])
def test_staff_see_serving_rows_read_only(team, client, deploy, model):
    from controlplane.serving.models import Deployment, Replica, ServeNode

    team.admin.is_superuser = True
    team.admin.save()
    deploy("chat")
    FakeNode("n1").sync()
    row = {"deployment": Deployment, "replica": Replica, "servenode": ServeNode}[model]
    row = row.objects.first()
    client.force_login(team.admin)

    listing = client.get(f"/admin/serving/{model}/")
    detail = client.get(f"/admin/serving/{model}/{row.pk}/change/")
    add = client.get(f"/admin/serving/{model}/add/")

    assert listing.status_code == 200
    assert detail.status_code == 200 and 'name="_save"' not in detail.content.decode()
    assert add.status_code == 403
