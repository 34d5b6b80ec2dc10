"""The finops pages: who sees what, another organisation's pages are 404."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_other_organisations_pages_are_404(client, team, other_org):
    client.force_login(team.owner)
    assert client.get("/orgs/acme/rate-card/").status_code == 404
    assert client.get("/orgs/acme/webhook/").status_code == 404
    assert client.get(f"/projects/{other_org.project.pk}/budget/").status_code == 404
    client.force_login(other_org.admin)
    assert client.get(f"/projects/{team.project.pk}/budget/").status_code == 404


def test_the_budget_page_sets_budgets_for_owners_and_quotas_for_org_admins(client, team, org_admin):
    url = f"/projects/{team.project.pk}/budget/"
    client.force_login(team.owner)
    page = client.get(url).content.decode()
    assert "Save budget" in page and "Save quota" not in page
    client.post(url, {"form": "budget", "amount": "250", "hard_stop": "on"})
    assert "250.00" in client.get(url).content.decode()
    assert client.post(url, {"form": "quota", "max_concurrent_gpu_jobs": "1"}).status_code == 403
    bad = client.post(url, {"form": "budget", "amount": "-3"}, follow=True).content.decode()
    assert "cannot be negative" in bad

    client.force_login(org_admin)  # not a project member: reaches it as the org's admin
    client.post(url, {"form": "quota", "max_concurrent_gpu_jobs": "2", "max_gpus": ""})
    page = client.get(url).content.decode()
    assert "0 of 2" in page and "Save quota" in page

    client.force_login(team.engineer)
    page = client.get(url).content.decode()
    assert "Save budget" not in page
    assert client.post(url, {"form": "budget", "amount": "1"}).status_code == 403
