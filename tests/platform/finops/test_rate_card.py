"""The rate card: versions made by org admins, read by members, bad rates named, races."""

from __future__ import annotations

import copy

import pytest

from controlplane.audit.models import AuditEvent
from controlplane.finops.models import RateCard
from tests.platform.finops.conftest import RATES
from tests.threads import in_threads

pytestmark = pytest.mark.django_db

URL = "/api/v1/orgs/{}/rate-card/"


def post(api, user, slug, **body):
    return api(user).post(URL.format(slug), {"rates": RATES, **body}, format="json")


def test_an_org_admin_creates_versions_and_the_diff_is_audited(api, team, org_admin):
    slug = team.project.organisation.slug
    first = post(api, org_admin, slug, base_version=0, reason="launch")
    assert first.status_code == 201, first.json()
    changed = copy.deepcopy(RATES)
    changed["gpu_hour"]["NVIDIA H100"] = "3.5"
    second = api(org_admin).post(
        URL.format(slug), {"rates": changed, "base_version": 1}, format="json"
    )
    assert second.status_code == 201 and second.json()["version"] == 2

    event = AuditEvent.objects.filter(action="finops.rate_card_changed").order_by("-id").first()
    assert event.payload["diff"] == {"gpu_hour.NVIDIA H100": {"before": None, "after": "3.5"}}
    read = api(team.engineer).get(URL.format(slug)).json()
    assert read["current"]["rates"]["gpu_hour"]["NVIDIA H100"] == "3.5"
    assert read["can_edit"] is False
    versions = api(team.viewer).get(URL.format(slug) + "versions/").json()["results"]
    assert [v["version"] for v in versions] == [2, 1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda r: r.update(cpu_hour="-1"), "rates.cpu_hour"),
        (lambda r: r["gpu_hour"].pop("default"), "rates.gpu_hour.default"),
        (lambda r: r["storage_gb_month"].update(raw=None), "rates.storage_gb_month.raw"),
        (lambda r: r.pop("tokens_million"), "rates.tokens_million"),
        (lambda r: r.update(cpu_hour="cheap"), "rates.cpu_hour"),
    ],
)
def test_a_negative_or_missing_rate_is_a_400_naming_the_field(api, team, org_admin, change, field):
    rates = copy.deepcopy(RATES)
    change(rates)
    answer = api(org_admin).post(
        URL.format(team.project.organisation.slug), {"rates": rates}, format="json"
    )
    assert answer.status_code == 400
    assert field in answer.json()["error"]["fields"]
    assert not RateCard.objects.exists()


def test_members_read_but_do_not_write_and_other_orgs_are_404(api, team, other_org):
    slug = team.project.organisation.slug
    assert post(api, team.owner, slug).status_code == 403  # a project owner is no org admin
    assert api(other_org.admin).get(URL.format(slug)).status_code == 404
    assert post(api, other_org.admin, slug).status_code == 404
    assert api(team.owner).get(URL.format("acme")).status_code == 404


def test_an_edit_on_a_stale_version_is_a_409(api, team, org_admin):
    slug = team.project.organisation.slug
    assert post(api, org_admin, slug, base_version=0).status_code == 201
    changed = copy.deepcopy(RATES)
    changed["cpu_hour"] = "0.2"
    stale = api(org_admin).post(
        URL.format(slug), {"rates": changed, "base_version": 0}, format="json"
    )
    assert stale.status_code == 409
    assert "v1" in stale.json()["error"]["message"]


@pytest.mark.django_db(transaction=True)
def test_two_admins_posting_at_once_get_distinct_versions(team, org_admin, make_user):
    from controlplane.finops.services import rate_card_create
    from controlplane.orgs.models import OrgMembership, OrgRole

    org = team.project.organisation
    second = make_user("admin2")
    OrgMembership.objects.create(organisation=org, user=second, role=OrgRole.ADMIN)

    def create(user, cpu):
        rates = {**copy.deepcopy(RATES), "cpu_hour": cpu}
        return rate_card_create(org=org, actor=user, rates=rates).version

    results = in_threads(lambda: create(org_admin, "0.3"), lambda: create(second, "0.4"))
    assert sorted(results) == [1, 2]


def test_the_page_shows_history_and_a_form_to_admins_only(client, team, org_admin):
    slug = team.project.organisation.slug
    client.force_login(org_admin)
    form = {
        "currency": "EUR",
        "base_version": "0",
        "cpu_hour": "0.1",
        "gpu_hour_default": "2",
        "gpu_hour_devices": "NVIDIA A100 = 2.5",
        "tokens_million": "1",
        **{f"storage_{k}": "0.02" for k in RATES["storage_gb_month"]},
    }
    answer = client.post(f"/orgs/{slug}/rate-card/", form)
    assert answer.status_code == 302
    card = RateCard.objects.get()
    assert card.rates["gpu_hour"] == {"default": "2", "NVIDIA A100": "2.5"}
    bad = client.post(f"/orgs/{slug}/rate-card/", {**form, "base_version": "1", "cpu_hour": "-2"})
    assert bad.status_code == 200 and "rates.cpu_hour" in bad.content.decode()
    client.force_login(team.engineer)
    page = client.get(f"/orgs/{slug}/rate-card/").content.decode()
    assert "v1" in page and "Save as a new version" not in page
    assert client.post(f"/orgs/{slug}/rate-card/", form).status_code == 403
