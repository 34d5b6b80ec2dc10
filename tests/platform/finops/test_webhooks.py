"""The webhook outbox against a real HTTP server that fails first, then succeeds: signed
bodies, retries with exponential backoff, giving up, the failure shown to admins."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.utils import timezone

from controlplane.finops.models import DeliveryState, OrgWebhook, WebhookDelivery
from controlplane.finops.services import webhook_set
from controlplane.finops.webhooks import (
    MAX_ATTEMPTS,
    SIGNATURE_HEADER,
    deliveries_send_due,
    delivery_enqueue,
    delivery_send,
)

pytestmark = pytest.mark.django_db


class Receiver:
    """A local HTTP server answering 500 to the first `failures` POSTs, then 204."""

    def __init__(self, failures: int):
        self.failures = failures
        self.received: list[tuple[dict, bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.received.append((dict(self.headers), body))
                status = 500 if len(receiver.received) <= receiver.failures else 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def test_a_failing_receiver_is_retried_with_backoff_then_gets_a_signed_body(team, org_admin):
    org = team.project.organisation
    with Receiver(failures=2) as receiver:
        webhook_set(org=org, actor=org_admin, url=receiver.url, secret="top-secret")
        delivery = delivery_enqueue(org=org, event="budget.alert", payload={"threshold": 80})
        now = timezone.now()
        assert delivery_send(delivery.pk, now=now) == "retry"
        delivery.refresh_from_db()
        assert delivery.attempts == 1 and delivery.response_status == 500
        assert delivery.next_attempt_at == now + timedelta(minutes=1)
        assert delivery_send(delivery.pk, now=now) == "skipped"  # not due yet
        later = now + timedelta(minutes=1)
        assert delivery_send(delivery.pk, now=later) == "retry"
        delivery.refresh_from_db()
        assert delivery.next_attempt_at == later + timedelta(minutes=2)  # doubled
        hook = OrgWebhook.objects.get()
        assert hook.last_failure_at is not None and "HTTP 500" in hook.last_error
        assert deliveries_send_due(now=later + timedelta(minutes=2)) == {"sent": 1}
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts, delivery.response_status) == ("sent", 3, 204)
    headers, body = receiver.received[-1]
    expected = hmac.new(b"top-secret", body, hashlib.sha256).hexdigest()
    assert headers[SIGNATURE_HEADER] == f"sha256={expected}"
    assert json.loads(body)["data"] == {"threshold": 80}
    assert json.loads(body)["event"] == "budget.alert"


def test_a_receiver_that_never_answers_is_given_up_after_the_last_try(team, org_admin):
    org = team.project.organisation
    webhook_set(org=org, actor=org_admin, url="http://127.0.0.1:9/nothing-listens")
    delivery = delivery_enqueue(org=org, event="budget.alert", payload={})
    moment = timezone.now()
    outcomes = []
    for _ in range(MAX_ATTEMPTS):
        outcomes.append(delivery_send(delivery.pk, now=moment))
        moment = WebhookDelivery.objects.get(pk=delivery.pk).next_attempt_at
    assert outcomes == ["retry"] * (MAX_ATTEMPTS - 1) + ["failed"]
    delivery.refresh_from_db()
    assert delivery.state == DeliveryState.FAILED and "Connection" in delivery.last_error


def test_no_webhook_no_delivery_and_a_disabled_one_sends_nothing(team, org_admin):
    org = team.project.organisation
    assert delivery_enqueue(org=org, event="budget.alert", payload={}) is None
    webhook_set(org=org, actor=org_admin, url="http://127.0.0.1:9/x", enabled=False)
    assert delivery_enqueue(org=org, event="budget.alert", payload={}) is None


def test_the_org_page_shows_the_last_failure_to_admins_only(client, api, team, org_admin):
    org = team.project.organisation
    webhook_set(org=org, actor=org_admin, url="http://127.0.0.1:9/x", secret="zebra-secret-42")
    delivery = delivery_enqueue(org=org, event="budget.alert", payload={})
    delivery_send(delivery.pk)
    client.force_login(org_admin)
    page = client.get(f"/orgs/{org.slug}/webhook/").content.decode()
    assert "Last failure" in page and "Connection" in page and "zebra-secret-42" not in page
    body = api(org_admin).get(f"/api/v1/orgs/{org.slug}/webhook/").json()
    assert body["secret_set"] is True and "secret" not in body
    assert body["deliveries"][0]["attempts"] == 1
    client.force_login(team.owner)
    assert client.get(f"/orgs/{org.slug}/webhook/").status_code == 403
    assert api(team.owner).get(f"/api/v1/orgs/{org.slug}/webhook/").status_code == 403


@pytest.mark.parametrize("url", ["", "ftp://example.org/x", "not a url", None])
def test_a_bad_url_is_a_400_naming_it(api, team, org_admin, url):
    answer = api(org_admin).put(
        f"/api/v1/orgs/{team.project.organisation.slug}/webhook/", {"url": url}, format="json"
    )
    assert answer.status_code == 400 and "url" in answer.json()["error"]["fields"]


def test_an_internal_address_is_refused_when_set_and_when_sent(api, team, org_admin, settings):
    """An org admin cannot make the control worker probe the deployment's own network."""
    settings.WEBHOOK_ALLOWED_NETWORKS = ()
    org = team.project.organisation
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.7/hook", "http://[::1]/"):
        response = api(org_admin).put(
            f"/api/v1/orgs/{org.slug}/webhook/", {"url": url}, format="json"
        )
        assert response.status_code == 400, url
        assert "inside the deployment" in response.json()["error"]["fields"]["url"][0]
    # A name is checked at each send: localhost resolves to loopback, refused with why.
    webhook_set(org=org, actor=org_admin, url="http://localhost:9/hook")
    delivery = delivery_enqueue(org=org, event="budget.alert", payload={"x": 1})
    delivery_send(delivery.pk)
    hook = OrgWebhook.objects.get(organisation=org)
    assert "refused" in hook.last_error and "127.0.0.1" in hook.last_error
    assert WebhookDelivery.objects.get(pk=delivery.pk).attempts == 1


def test_a_redirect_is_not_followed(team, org_admin):
    """A receiver answering 302 towards another address gets no second request."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_response(302)
            self.send_header("Location", "/elsewhere")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        org = team.project.organisation
        webhook_set(org=org, actor=org_admin, url=f"http://127.0.0.1:{server.server_address[1]}/h")
        delivery = delivery_enqueue(org=org, event="budget.alert", payload={"x": 1})
        delivery_send(delivery.pk)
    finally:
        server.shutdown()
        server.server_close()
    assert hits == ["/h"]
    assert WebhookDelivery.objects.get(pk=delivery.pk).state != DeliveryState.SENT


def _run_control_tasks(sent_jobs, capture) -> None:
    """Run the control tasks the platform queued, as the control worker would: the budget
    check (which enqueues the alert's delivery) and the delivery's sending."""
    from controlplane.finops.alerts import BUDGET_CHECK_TASK, budget_check
    from controlplane.finops.webhooks import SEND_TASK

    while sent_jobs:
        name, args, _queue = sent_jobs.pop(0)
        with capture(execute=True):
            if name == BUDGET_CHECK_TASK:
                budget_check(*args)
            elif name == SEND_TASK:
                delivery_send(*args)


@pytest.mark.parametrize("receiver_fails", ["with HTTP 500", "by refusing connections"])
def test_a_failing_webhook_never_blocks_a_job(
    team,
    org_admin,
    rate_card,
    owner_budget,
    make_upload,
    run_on_worker,
    sent_jobs,
    client,
    django_capture_on_commit_callbacks,
    receiver_fails,
):
    import time

    from controlplane.jobs.services import job_create

    org = team.project.organisation
    owner_budget("0.000001")  # the job's first CPU second crosses 80% and 100%
    with Receiver(failures=10**6) as receiver:
        url = receiver.url if receiver_fails == "with HTTP 500" else "http://127.0.0.1:9/hook"
        webhook_set(org=org, actor=org_admin, url=url, secret="s")
        upload = make_upload(team.project, team.engineer, b"a\nb\n")
        job = job_create(
            project=team.project,
            kind="inspect",
            params={"upload_id": upload.pk},
            actor=team.engineer,
        )
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            job = run_on_worker(job)
        took = time.monotonic() - started
        _run_control_tasks(sent_jobs, django_capture_on_commit_callbacks)

    assert job.state == "succeeded" and took < 30
    delivery = WebhookDelivery.objects.filter(event="budget.alert").order_by("pk").first()
    assert delivery is not None and delivery.state == DeliveryState.PENDING  # to be retried
    assert delivery.attempts == 1 and delivery.next_attempt_at > timezone.now()
    job.refresh_from_db()
    assert job.state == "succeeded"  # a failed delivery never touches the job
    client.force_login(org_admin)
    page = client.get(f"/orgs/{org.slug}/").content.decode()
    assert 'id="webhook-failing"' in page
    assert ("HTTP 500" if receiver_fails == "with HTTP 500" else "Connection") in page
    client.force_login(team.owner)  # not an admin of the organisation: not shown
    assert 'id="webhook-failing"' not in client.get(f"/orgs/{org.slug}/").content.decode()
