"""The serving pages for every role: the deployments list and its deploy form, a
deployment's page (replicas fragment, usage of the last hour, latest requests, actions,
playground), and that other projects' users get 404."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tests.platform.serving.pages_factories import (
    make_dataset_version,
    make_deployment,
    make_node,
    make_records,
    make_replica,
    make_version,
)

pytestmark = pytest.mark.django_db

MEMBERS = ("owner", "engineer", "viewer", "compliance")
RUNNERS = ("owner", "engineer")


@pytest.fixture
def served(team):
    """Deployment "chat" following gpt@production (v2, ready on node-a; a v1 replica still
    draining), with two archived requests; a stopped pinned deployment "old" of v1."""
    from controlplane.registry.models import ModelAlias

    plays = make_dataset_version(team)
    v1 = make_version(team, datasets=[plays])
    v2 = make_version(team, datasets=[plays])
    ModelAlias.objects.create(
        model=v2.model,
        name="production",
        version=v2,
        moved_by=team.owner,
        moved_at=timezone.now(),
    )
    chat = make_deployment(team, v2, name="chat", alias="production", replicas=2)
    node = make_node("node-a", "http://10.0.0.5:8100")
    make_replica(chat, node, health={"running": 3, "waiting": 1})
    make_replica(chat, node, state="draining", version=v1)
    make_replica(chat, node, state="failed", error="CUDA out of memory", restarts=4)
    old = make_deployment(team, v1, name="old", state="stopped", reason="replaced by chat")
    make_records(
        chat,
        [
            {"user_id": team.engineer.pk, "request_id": "a" * 32},
            {"token_id": 7, "status": "refused", "request_id": "b" * 32},
        ],
    )
    return {"chat": chat, "old": old, "v1": v1, "v2": v2, "plays": plays}


def _get(client, user, url, **headers):
    client.force_login(user)
    return client.get(url, **headers)


@pytest.mark.parametrize("role", MEMBERS)
def test_deployments_page_lists_what_each_serves(team, client, served, role):
    p = team.project.pk
    response = _get(client, getattr(team, role), f"/projects/{p}/deployments/")
    assert response.status_code == 200
    html = response.content.decode()
    assert f'href="/projects/{p}/deployments/chat/"' in html
    assert '<span class="badge">@production</span>' in html
    assert '<span class="badge">v1</span>' in html  # "old" pins v1
    assert f'href="/projects/{p}/models/gpt/v2/">v2</a>' in html  # served by a ready replica
    assert f'href="/projects/{p}/models/gpt/v1/">v1</a>' in html  # the draining one
    assert "1 / 2" in html  # ready / desired
    assert '<code id="base-url-chat">http://10.0.0.5:8100/p/alpha/chat/v1</code>' in html
    assert 'data-copy="base-url-chat"' in html and "js/playground.js" in html
    assert '<span class="state stopped">stopped</span>' in html
    assert f'href="/projects/{p}/deployments/"' in html  # the project's nav link
    assert ('id="deploy"' in html) == (role in RUNNERS)


def test_requests_of_the_last_hour_are_counted_per_deployment(team, client, served):
    make_records(served["chat"], [{"seconds_ago": 2 * 3600}])  # too old to count
    make_records(served["old"], [{"seconds_ago": 60}])
    from controlplane.serving.page_selectors import deployments_page

    counts = {row.deployment.name: row.requests_last_hour for row in deployments_page(team.project)}
    assert counts == {"chat": 2, "old": 1}


def test_the_rows_fragment_is_what_htmx_polls(team, client, served):
    response = _get(
        client, team.viewer, f"/projects/{team.project.pk}/deployments/", HTTP_HX_REQUEST="true"
    )
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html and "<tr>" in html


def test_deploy_form_offers_aliases_and_ready_versions(team, client, served):
    html = _get(client, team.engineer, f"/projects/{team.project.pk}/deployments/").content.decode()
    assert '<option value="gpt@production">gpt @production (now v2)</option>' in html
    assert '<option value="gpt:2">gpt v2</option>' in html
    assert '<option value="gpt:1">gpt v1</option>' in html
    for field in ("pii", "pii_output", "toxicity", "toxicity_threshold", "rate_limit_per_minute"):
        assert f'name="{field}"' in html


def test_an_invalid_deploy_form_comes_back_with_its_errors(team, client, served):
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/deployments/",
        {"source": "gpt:2", "name": "Bad Name!", "replicas": 0, "device": "cpu"},
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "a deployment name is 1-63 lower-case letters" in html
    assert "Ensure this value is greater than or equal to 1" in html
    assert 'value="Bad Name!"' in html  # what was typed stays in the form


@pytest.mark.parametrize("role", MEMBERS)
def test_deployment_page_for_every_role(team, client, served, role):
    p = team.project.pk
    response = _get(client, getattr(team, role), f"/projects/{p}/deployments/chat/")
    assert response.status_code == 200
    html = response.content.decode()
    # Header: follows, target and served versions, lineage.
    assert "follows <strong>@production</strong>" in html
    assert f'<a href="/projects/{p}/models/gpt/v2/">v2</a>' in html
    job = served["v2"].source_job_id
    assert f'href="/projects/{p}/jobs/{job}/">job {job}</a> (pretrain)' in html
    plays = served["plays"]
    assert f'href="/projects/{p}/datasets/{plays.dataset_id}/v1/">plays v1</a>' in html
    # Calling it.
    assert "http://10.0.0.5:8100/p/alpha/chat/v1" in html
    assert 'api_key="&lt;a token with the inference scope&gt;"' in html
    assert 'href="/account/tokens/"' in html
    # Replicas, polled.
    assert 'id="replicas" hx-get="/projects/' in html and 'hx-trigger="every 2s"' in html
    assert "CUDA out of memory" in html and "draining" in html
    # Latest requests link to the archive's pages.
    assert f'href="/projects/{p}/deployments/chat/requests/{"a" * 32}/"' in html
    assert "engineer" in html and "token 7" in html
    # Actions and the playground only for those who may run.
    runner = role in RUNNERS
    assert ('id="actions"' in html) == runner
    assert ('id="playground-form"' in html) == runner
    assert f'action="/projects/{p}/deployments/chat/playground/"' in html or not runner
    assert ("Stop chat" in html) == runner
    assert "js/playground.js" in html


def test_a_stopped_deployment_offers_start_not_stop(team, client, served):
    html = _get(
        client, team.owner, f"/projects/{team.project.pk}/deployments/old/"
    ).content.decode()
    assert "replaced by chat" in html
    assert "Start old" in html and "Stop old" not in html


def test_guardrails_show_the_settings_and_where_they_came_from(team, client, served):
    chat = served["chat"]
    chat.guardrails = {"pii": "refuse", "toxicity": "off", "source": "pipeline job 3 of plays v1"}
    chat.save()
    html = _get(
        client, team.viewer, f"/projects/{team.project.pk}/deployments/chat/"
    ).content.decode()
    assert "input PII <strong>refuse</strong>, output PII <strong>redact</strong>" in html
    assert "toxicity <strong>off</strong> <span" in html  # no threshold when off
    assert "(from pipeline job 3 of plays v1)" in html


def test_the_replicas_fragment_shows_health(team, client, served):
    response = _get(
        client,
        team.viewer,
        f"/projects/{team.project.pk}/deployments/chat/",
        HTTP_HX_REQUEST="true",
    )
    html = response.content.decode()
    assert response.status_code == 200 and "<html" not in html
    assert html.lstrip().startswith('<section class="card" id="replicas"')
    assert '<td class="num">3</td><td class="num">1</td>' in html  # running, waiting
    assert "node-a" in html and "v1" in html and "v2" in html


def test_other_projects_users_get_404_everywhere(team, client, served):
    p = team.project.pk
    base = f"/projects/{p}/deployments/"
    client.force_login(team.outsider)
    for url in [base, base + "chat/", base + "nothing/"]:
        assert client.get(url).status_code == 404, url
    assert client.get(base + "chat/", HTTP_HX_REQUEST="true").status_code == 404
    assert client.get(base, HTTP_HX_REQUEST="true").status_code == 404
    for url in [base, base + "chat/stop/", base + "chat/start/", base + "chat/scale/"]:
        assert client.post(url, {"replicas": 1, "confirm": "on"}).status_code == 404, url
    assert client.post(base + "chat/playground/", {"prompt": "x"}).status_code == 404


def test_anonymous_users_are_sent_to_log_in(team, client, served):
    base = f"/projects/{team.project.pk}/deployments/"
    for url in [base, base + "chat/"]:
        assert client.get(url).status_code == 302
    assert client.post(base + "chat/playground/", {"prompt": "x"}).status_code == 302


@pytest.mark.parametrize("role", ("viewer", "compliance"))
def test_readers_cannot_deploy_stop_scale_or_use_the_playground(team, client, served, role):
    base = f"/projects/{team.project.pk}/deployments/"
    client.force_login(getattr(team, role))
    assert client.post(base, {"source": "gpt:2", "name": "x"}).status_code == 403
    for url in ["chat/stop/", "chat/start/", "chat/scale/", "chat/playground/"]:
        assert client.post(base + url, {"replicas": 1, "confirm": "on"}).status_code == 403, url


def test_a_name_no_deployment_can_have_is_a_404(team, client, served):
    client.force_login(team.owner)
    for name in ["Chat", "-x", "a" * 64, "chat%00"]:
        response = client.get(f"/projects/{team.project.pk}/deployments/{name}/")
        assert response.status_code == 404, name


def test_usage_is_aggregated_per_minute(team, served):
    from controlplane.serving.page_selectors import deployment_usage

    quiet = make_deployment(team, served["v2"], name="quiet")
    now = timezone.now().replace(second=30, microsecond=0)
    make_records(
        quiet,
        [
            {"seconds_ago": 1, "latency_ms": 100.0, "completion_tokens": 30},
            {"seconds_ago": 2, "latency_ms": 200.0, "completion_tokens": 30, "status": "flagged"},
            {"seconds_ago": 3, "latency_ms": 300.0, "completion_tokens": 0, "status": "refused"},
            {"seconds_ago": 4, "latency_ms": 400.0, "completion_tokens": 0, "status": "error"},
            {"seconds_ago": 125, "latency_ms": 50.0, "completion_tokens": 12},
            {"seconds_ago": 3 * 3600, "latency_ms": 9.0},  # outside the hour
        ],
        now=now,
    )
    make_records(served["chat"], [{"seconds_ago": 1}])  # another deployment's
    usage = deployment_usage(quiet, now=now)
    assert len(usage.minutes) == 60 and usage.minutes[-1] == 0 and usage.minutes[0] == -59
    assert usage.requests[-1] == 4 and usage.requests[-3] == 1 and usage.total_requests == 5
    assert usage.completion_tokens[-1] == 60 and usage.completion_tokens[-3] == 12
    assert usage.p50_ms[-1] == pytest.approx(250.0)  # interpolated, as percentile_cont does
    assert usage.p95_ms[-1] == pytest.approx(385.0)
    assert usage.p50_ms[-2] is None and usage.requests[-2] == 0
    assert (usage.total_errors, usage.total_refused, usage.total_flagged) == (1, 1, 1)
    charts = dict(usage.charts())
    assert charts["requests / s"]["requests/s"][-1] == (0, pytest.approx(4 / 60))
    assert charts["completion tokens / s"]["tokens/s"][-1] == (0, pytest.approx(1.0))


def test_the_page_shows_the_hours_totals_and_charts(team, client, served):
    make_records(served["chat"], [{"status": "error"}, {"status": "flagged"}])
    html = _get(
        client, team.viewer, f"/projects/{team.project.pk}/deployments/chat/"
    ).content.decode()
    assert '<div class="figure">4</div>requests' in html
    assert '<div class="figure">1</div>errors' in html
    assert '<div class="figure">1</div>refused' in html
    assert '<div class="figure">1</div>flagged' in html
    assert html.count('<figure class="chart"') == 4


def test_base_url_uses_the_public_address_when_set_else_a_live_node(team, client, served, settings):
    from controlplane.serving.models import ServeNode
    from controlplane.serving.selectors import base_url

    chat = served["chat"]
    assert base_url(chat) == "http://10.0.0.5:8100/p/alpha/chat/v1"
    settings.SERVING_PUBLIC_URL = "https://serve.example.org/"
    assert base_url(chat) == "https://serve.example.org/p/alpha/chat/v1"
    settings.SERVING_PUBLIC_URL = ""
    ServeNode.objects.update(last_seen=timezone.now() - timedelta(minutes=5))
    assert base_url(chat) is None
    page = f"/projects/{team.project.pk}/deployments/chat/"
    assert (
        "http://&lt;serve-node&gt;/p/alpha/chat/v1"
        in _get(client, team.viewer, page).content.decode()
    )


def test_pages_hold_no_inline_script(team, client, served):
    from tests.platform.test_security_headers import inline_code

    client.force_login(team.owner)
    base = f"/projects/{team.project.pk}/deployments/"
    for url in [base, base + "chat/", base + "old/"]:
        response = client.get(url)
        assert "Content-Security-Policy" in response
        assert inline_code(response.content.decode()) == [], url


# The buttons call the serving services (branch "platform"); these run once it is merged.


@pytest.fixture
def services():
    return pytest.importorskip("controlplane.serving.services")


def test_engineer_deploys_a_pinned_version(team, client, served, services):
    from controlplane.serving.models import Deployment

    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/deployments/",
        {
            "source": "gpt:1",
            "name": "pinned",
            "replicas": 1,
            "device": "cpu",
            "max_batch": 8,
            "max_queue": 32,
            "pii": "refuse",
            "toxicity": "",
            "rate_limit_per_minute": 60,
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    assert response["Location"] == f"/projects/{team.project.pk}/deployments/pinned/"
    deployment = Deployment.objects.get(project=team.project, name="pinned")
    assert deployment.pinned_version == served["v1"] and deployment.alias == ""
    assert deployment.max_batch == 8 and deployment.rate_limit_per_minute == 60
    assert deployment.guardrails["pii"] == "refuse"


def test_engineer_deploys_an_alias(team, client, served, services):
    from controlplane.serving.models import Deployment

    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/deployments/",
        {
            "source": "gpt@production",
            "name": "follows",
            "replicas": 2,
            "device": "cpu",
            "max_batch": 16,
            "max_queue": 64,
            "rate_limit_per_minute": 600,
        },
    )
    assert response.status_code == 302
    deployment = Deployment.objects.get(project=team.project, name="follows")
    assert deployment.alias == "production" and deployment.target_version == served["v2"]


def test_a_refused_deploy_shows_why_in_the_form(team, client, served, services):
    client.force_login(team.engineer)
    response = client.post(
        f"/projects/{team.project.pk}/deployments/",
        {
            "source": "gpt:2",
            "name": "chat",  # taken
            "replicas": 1,
            "device": "cpu",
            "max_batch": 16,
            "max_queue": 64,
            "rate_limit_per_minute": 600,
        },
    )
    assert response.status_code == 400
    html = response.content.decode()
    assert "a deployment named &#x27;chat&#x27; already exists" in html


def test_engineer_scales_stops_and_starts(team, client, served, services):
    chat = served["chat"]
    base = f"/projects/{team.project.pk}/deployments/chat/"
    client.force_login(team.engineer)
    assert client.post(base + "scale/", {"replicas": 3}).status_code == 302
    chat.refresh_from_db()
    assert chat.replicas == 3
    # Without the confirmation box nothing stops.
    client.post(base + "stop/", {"reason": "maintenance"})
    chat.refresh_from_db()
    assert chat.state == "running"
    client.post(base + "stop/", {"reason": "maintenance", "confirm": "on"})
    chat.refresh_from_db()
    assert chat.state == "stopped" and chat.reason == "maintenance"
    assert client.post(base + "start/").status_code == 302
    chat.refresh_from_db()
    assert chat.state == "running"


def test_the_page_shows_tokens_requests_and_cost_of_the_last_day_and_month(team, client, served):
    import datetime as dt
    from decimal import Decimal

    from controlplane.finops.models import RateCard, ServingUsage
    from controlplane.finops.serving_usage import hour_of

    card = RateCard.objects.create(
        organisation=team.project.organisation,
        version=1,
        currency="EUR",
        rates={},
        effective_from=dt.datetime(2000, 1, 1, tzinfo=dt.UTC),
    )
    now = hour_of(timezone.now())
    month_start = now.replace(day=1, hour=0)
    chat, old = served["chat"], served["old"]

    def hour(deployment, at, requests, cost):
        ServingUsage.objects.create(
            deployment=deployment,
            project=team.project,
            hour=at,
            requests=requests,
            tokens_in=requests * 10,
            tokens_out=requests * 100,
            rate_card=card,
            cost=Decimal(cost),
        )

    hour(chat, now, 3, "0.25")
    hour(chat, now - timedelta(hours=30), 5, "1.00")  # older than a day
    # Last month and more than a day ago, whatever the hour of the run.
    hour(chat, month_start - timedelta(hours=25), 7, "9.00")
    hour(old, now, 11, "4.00")  # another deployment
    html = _get(client, team.viewer, f"/projects/{team.project.pk}/deployments/chat/")
    html = html.content.decode()
    day_row = html.split('id="served-24h"')[1].split("</tr>")[0]
    month_row = html.split('id="served-month"')[1].split("</tr>")[0]
    assert ">3<" in day_row and ">30<" in day_row and ">300<" in day_row
    assert "0.25 EUR" in day_row
    if now - timedelta(hours=30) >= month_start:
        assert ">8<" in month_row and "1.25 EUR" in month_row
    else:  # early in the month, the day-old hour was last month's
        assert ">3<" in month_row and "0.25 EUR" in month_row
