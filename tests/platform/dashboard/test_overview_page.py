"""The overview page and its CSV exports: per organisation, full for org admins and
compliance officers, lean for engineers; another organisation's figures never show."""

from __future__ import annotations

import csv
import datetime as dt
import io
from decimal import Decimal

import pytest
from django.utils import timezone

from controlplane.finops.models import Budget, StorageSnapshot

pytestmark = pytest.mark.django_db


def month_start() -> dt.datetime:
    return timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def spent(org_world, make_usage):
    w = org_world
    make_usage(w.vision, kind="train", cost="12.34")
    make_usage(w.speech, kind="evaluate", cost="5.66")
    make_usage(w.rival, kind="train", cost="777.77")
    Budget.objects.create(project=w.vision, month=month_start().date(), amount=Decimal("100"))
    today = timezone.now().date()
    StorageSnapshot.objects.create(project=w.vision, day=today, kind="raw", bytes=3 * 10**9)
    StorageSnapshot.objects.create(project=w.rival, day=today, kind="raw", bytes=9 * 10**9)
    return w


def page_of(client, user) -> str:
    client.force_login(user)
    response = client.get("/")
    assert response.status_code == 200
    return response.content.decode()


def csv_of(client, table: str) -> list[dict]:
    response = client.get(f"/overview/export/{table}.csv")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/csv")
    return list(csv.DictReader(io.StringIO(response.content.decode())))


def test_an_org_admin_sees_every_project_and_every_section(spent, client):
    page = page_of(client, spent.cfo)  # in no project, admin of the organisation

    assert "Acme" in page and "Vision" in page and "Speech" in page
    assert "18.00" in page  # 12.34 + 5.66
    assert "12.3%" in page  # of Vision's 100 budget
    assert "Storage by project and kind" in page and "3.0 GB" in page
    assert "open data-subject requests" in page
    assert "Rival" not in page and "777.77" not in page
    # Figures only: the projects' pages are their members'.
    assert f'href="/projects/{spent.vision.pk}/"' not in page
    assert f'href="/projects/{spent.vision.pk}/"' in page_of(client, spent.boss)


def test_an_engineer_gets_the_lean_overview_of_their_projects(spent, client):
    page = page_of(client, spent.dev)

    assert "Vision" in page and "12.34" in page
    assert "Speech" not in page and "5.66" not in page and "18.00" not in page
    assert "Storage by project and kind" not in page and "open data-subject requests" not in page
    assert "Models in production" in page and "Queued job" in page
    assert client.get("/overview/export/storage.csv").status_code == 404
    assert client.get("/overview/export/compliance-queues.csv").status_code == 404


def test_a_compliance_officer_gets_the_full_overview_of_their_projects(spent, client):
    page = page_of(client, spent.auditor)

    assert "Storage by project and kind" in page and "Vision" in page and "Speech" not in page


def test_other_organisations_figures_never_appear(spent, client):
    page = page_of(client, spent.stranger)

    assert "Globex" in page and "777.77" in page and "9.0 GB" in page
    assert "Vision" not in page and "12.34" not in page
    assert [row["project"] for row in csv_of(client, "spend")] == ["rival"]


def test_the_session_org_is_used_only_when_the_user_is_a_member(spent, client):
    client.force_login(spent.stranger)
    session = client.session
    session["current_org"] = "acme"  # not theirs: falls back to their own
    session.save()

    page = client.get("/").content.decode()

    assert "Globex" in page and "Vision" not in page


def test_csv_exports_match_the_tables(spent, client, make_usage):
    w = spent
    from controlplane.jobs.models import Job

    Job.objects.create(
        project=w.vision, kind="train", state="queued", held_for="quota", created_by=w.boss
    )
    page = page_of(client, w.boss)

    spend = csv_of(client, "spend")
    kinds = csv_of(client, "spend-by-kind")
    storage = csv_of(client, "storage")
    queued = csv_of(client, "queued-jobs")

    # In the page's order: the larger share of budget first.
    assert [(r["project"], r["total"], r["budget"], r["budget_percent"]) for r in spend] == [
        ("vision", "12.34", "100.00", "12.3"),
        ("speech", "5.66", "", ""),
    ]
    assert [(r["source"], r["kind"], r["cost"]) for r in kinds] == [
        ("jobs", "evaluate", "5.66"),
        ("jobs", "train", "12.34"),
        ("storage", "raw", "0.00"),  # the snapshot was written without a rate card
    ]
    vision = next(r for r in storage if r["project"] == "vision")
    assert vision["raw"] == "3000000000" and vision["total"] == "3000000000"
    assert [(r["project"], r["reason"]) for r in queued] == [("vision", "quota")]
    for row in spend:
        assert f">{row['total']}<" in page.replace("<strong>", "").replace("</strong>", "")
    assert "quota" in page


def test_the_hours_and_compliance_tables_export_what_they_show(spent, client, make_usage):
    from controlplane.policies.models import Violation

    make_usage(spent.speech, kind="train", cost="1", gpu_seconds=9000, gpu_util_mean=40.0)
    Violation.objects.create(
        project=spent.vision,
        rule="licences",
        subject_type="dataset_version",
        subject_id=1,
        subject_label="=HYPERLINK(1)",
        reason="licence 'x' is not an SPDX licence expression",
        policy_version="platform v0",
        last_seen_at=timezone.now(),
    )
    page = page_of(client, spent.boss)
    usage = csv_of(client, "usage")
    compliance = csv_of(client, "compliance")

    # The most GPU hours first, as on the page.
    assert [(r["project"], r["attempts"], r["gpu_hours"], r["gpu_util_mean"]) for r in usage] == [
        ("speech", "2", "2.5", "40.0"),
        ("vision", "1", "0.0", ""),
    ]
    usage_section = page.split('id="usage"')[1].split("</section>")[0]
    assert usage_section.index(">speech<") < usage_section.index(">vision<")
    assert f'href="/projects/{spent.speech.pk}/budget/#usage">2.5</a>' in usage_section
    assert 'href="/overview/export/usage.csv?month=' in usage_section
    rows = {r["project"]: r for r in compliance}
    assert set(rows) == {"vision", "speech"}
    assert rows["vision"]["open_violations"] == "1" and rows["speech"]["open_violations"] == "0"
    assert 'href="/overview/export/compliance.csv"' in page
    assert client.get("/overview/export/usage.csv?month=2026-13").status_code == 400
    # Another organisation's rows never, in either export.
    client.force_login(spent.stranger)
    assert [r["project"] for r in csv_of(client, "usage")] == ["rival"]
    assert [r["project"] for r in csv_of(client, "compliance")] == ["rival"]


def test_spend_rows_and_hours_link_to_the_budget_page_which_shows_the_hours(
    spent, client, make_usage
):
    make_usage(spent.vision, kind="train", cost="0", gpu_seconds=3600, cpu_seconds=7200)
    page = page_of(client, spent.cfo)  # an org admin in no project reaches budget pages too
    budget_url = f"/projects/{spent.vision.pk}/budget/"

    spend_section = page.split('id="spend"')[1].split("</section>")[0]
    assert f'href="{budget_url}"' in spend_section
    assert f'href="{budget_url}#usage">1.0</a>' in page  # vision's GPU hours
    budget = client.get(budget_url).content.decode()
    row = budget.split('id="usage"')[1].split("</tr>")[0]
    assert "2 job attempts" in row and "<strong>1.0</strong> GPU hours" in row
    assert "<strong>2.0</strong> CPU hours" in row


def test_compliance_tiles_link_to_the_page_listing_what_they_count(spent, client, make_user):
    from controlplane.gdpr.models import SubjectRequest
    from controlplane.registry.models import PromotionRequest
    from tests.platform.dashboard.conftest import deployment_of

    now = timezone.now()
    for project in (spent.vision, spent.speech):
        SubjectRequest.objects.create(
            project=project,
            kind="erasure",
            legal_basis="Art. 17(1)(b)",
            filed_by=spent.boss,
            received_at=now,
            deadline_at=now + dt.timedelta(days=30),
        )
    version = deployment_of(spent.vision).target_version
    PromotionRequest.objects.create(
        model=version.model, alias="production", version=version, requested_by=spent.dev
    )
    page = page_of(client, spent.boss)  # owner of both projects
    tiles = page.split('id="compliance-figures"')[1].split("<table")[0]
    queues = page.split('id="compliance-queues"')[1].split("</table>")[0]

    vision, speech = spent.vision.pk, spent.speech.pk
    # Two projects hold requests: the tile goes to the per-project table, which links each.
    assert 'href="#compliance-queues">2</a>' in tiles
    assert f'href="/projects/{vision}/subject-requests/">1</a>' in queues
    assert f'href="/projects/{speech}/subject-requests/">1</a>' in queues
    # One project holds the promotion awaiting approval: straight to its review page.
    assert f'href="/projects/{vision}/reviews/">1</a>' in tiles
    assert f'href="/projects/{vision}/subject-requests/review/">' in queues
    queue_rows = csv_of(client, "compliance-queues")
    assert [(r["project"], r["subject_requests"], r["pending_promotions"]) for r in queue_rows] == [
        ("speech", "1", "0"),
        ("vision", "1", "1"),
    ]
    # An org admin in no project sees the figures, without links to pages that 404 them.
    page = page_of(client, spent.cfo)
    queues = page.split('id="compliance-queues"')[1].split("</table>")[0]
    assert "/subject-requests/" not in queues and "/reviews/" not in queues


def test_a_csv_cell_never_starts_a_formula():
    from controlplane.dashboard.overview_tables import TABLES, table_csv

    text = table_csv(TABLES["spend-by-kind"], [{"source": "jobs", "kind": "=cmd()", "cost": "-1"}])
    assert "'=cmd()" in text and ",-1" in text


def test_a_bad_month_is_a_400_and_an_unknown_table_a_404(org_world, client):
    client.force_login(org_world.boss)
    assert client.get("/?month=2026-13").status_code == 400
    assert client.get("/overview/export/secrets.csv").status_code == 404


def test_a_user_in_no_organisation_is_told_what_will_appear(make_user, client):
    client.force_login(make_user("loner"))
    page = client.get("/").content.decode()
    assert "not in any organisation yet" in page


def test_empty_sections_say_what_will_appear(org_world, client):
    page = page_of(client, org_world.boss)
    assert "No idle GPUs" in page and "No queued jobs" in page
    assert "No model in production" in page and "No open data-subject requests" in page
    assert "No storage snapshots yet" in page


def test_a_long_list_shows_the_projects_over_budget_first(spent, client, monkeypatch):
    from controlplane.dashboard import selectors

    monkeypatch.setattr(selectors, "LIST_LIMIT", 1)
    # Speech spends less than Vision but has gone through its budget.
    Budget.objects.create(project=spent.speech, month=month_start().date(), amount=Decimal("5"))

    page = page_of(client, spent.cfo)
    spend_table = page.split('id="spend"')[1].split("</table>")[0]

    assert "Speech" in spend_table and "Vision" not in spend_table
    assert "The 1 of 2 projects to look at first" in page
    assert len(csv_of(client, "spend")) == 2


def test_models_and_requests_render_with_links(org_world, client):
    from tests.platform.dashboard.conftest import deployment_of

    deployment = deployment_of(org_world.vision)
    page = page_of(client, org_world.boss)
    rows = csv_of(client, "models")

    assert f"/projects/{org_world.vision.pk}/models/m/v1/" in page
    assert f"/projects/{org_world.vision.pk}/deployments/chat/" in page
    assert "never" in page  # not evaluated
    assert [(r["model"], r["deployments"], r["evaluation_age_days"]) for r in rows] == [
        ("m", deployment.name, "")
    ]


def test_a_new_storage_snapshot_shows_at_once_despite_the_cache(spent, client):
    assert "5.0 GB" not in page_of(client, spent.cfo)
    StorageSnapshot.objects.create(
        project=spent.speech, day=timezone.now().date(), kind="models", bytes=5 * 10**9
    )
    assert "5.0 GB" in page_of(client, spent.cfo)
