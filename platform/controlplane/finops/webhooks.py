"""The organisation's webhook: notifications as an outbox, sent by the control worker.

A notification is a WebhookDelivery row written in the transaction of what caused it
(an alert), never sent from a request or a job. The control worker POSTs it as JSON,
signed with HMAC-SHA256 over the exact body (header X-Controlplane-Signature:
sha256=<hex>), with a short timeout; a failure is retried after 1, 2, 4 ... minutes, and
after MAX_ATTEMPTS tries the row is marked failed. The organisation's webhook keeps the
last error and when it happened, for its page.

The URL must not lead inside the deployment: every address its host resolves to is
checked before each POST (loopback, private, link-local, reserved and multicast ranges
are refused unless settings.WEBHOOK_ALLOWED_NETWORKS allows them), and redirects are not
followed, so neither the URL nor its server can point the control worker at an internal
service. A refusal is a failed try with the reason, shown on the webhook's page.

Senders claim a row by a conditional UPDATE of `next_attempt_at` (as the jobs' dispatch
outbox does), so two control workers never post the same row at once.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta

from django.conf import settings
from django.core.serializers.json import DjangoJSONEncoder
from django.db import transaction
from django.utils import timezone

from controlplane.finops.models import DeliveryState, OrgWebhook, WebhookDelivery
from controlplane.orgs.models import Organisation

log = logging.getLogger(__name__)

SEND_TASK = "control.finops_webhook_send"
SEND_DUE_TASK = "control.finops_webhooks_send_due"
SIGNATURE_HEADER = "X-Controlplane-Signature"
EVENT_HEADER = "X-Controlplane-Event"
TIMEOUT_SECONDS = 5.0
MAX_ATTEMPTS = 8
FIRST_RETRY_SECONDS = 60
CLAIM_SECONDS = 60  # far above TIMEOUT_SECONDS: a claim lapses only if its sender died
PASS_LIMIT = 100


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_delay(attempts: int) -> timedelta:
    """After the n-th failed try: 1 min, 2, 4, ... (64 min before the 8th)."""
    return timedelta(seconds=FIRST_RETRY_SECONDS * 2 ** max(0, attempts - 1))


def delivery_enqueue(*, org: Organisation, event: str, payload: dict) -> WebhookDelivery | None:
    """An outbox row for the organisation's webhook, in the caller's transaction (None:
    no enabled webhook). Sent right after commit by the control worker."""
    hook = OrgWebhook.objects.filter(organisation=org, enabled=True).first()
    if hook is None:
        return None
    delivery = WebhookDelivery.objects.create(
        organisation=org,
        event=event,
        payload=json.loads(json.dumps(payload, cls=DjangoJSONEncoder)),
        next_attempt_at=timezone.now(),
    )
    transaction.on_commit(lambda: _queue_send(delivery.pk), robust=True)
    return delivery


def _queue_send(delivery_id: int) -> None:
    from controlplane.finops.queueing import send_control_task

    send_control_task(SEND_TASK, [delivery_id])


def body_of(delivery: WebhookDelivery) -> bytes:
    document = {
        "id": delivery.pk,
        "event": delivery.event,
        "created_at": delivery.created_at,
        "data": delivery.payload,
    }
    return json.dumps(document, cls=DjangoJSONEncoder, sort_keys=True).encode()


def delivery_send(delivery_id: int, *, now: datetime | None = None) -> str:
    """Try one due row once: "sent", "retry", "failed" (gave up) or "skipped"."""
    now = now or timezone.now()
    claimed = WebhookDelivery.objects.filter(
        pk=delivery_id, state=DeliveryState.PENDING, next_attempt_at__lte=now
    ).update(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    if claimed != 1:
        return "skipped"
    delivery = WebhookDelivery.objects.get(pk=delivery_id)
    hook = OrgWebhook.objects.filter(organisation_id=delivery.organisation_id).first()
    if hook is None or not hook.enabled:
        _record(delivery, hook, now, status=None, error="the webhook is disabled or removed")
        return _outcome(delivery_id)
    status, error = _post(hook, delivery)
    _record(delivery, hook, now, status=status, error=error)
    return _outcome(delivery_id)


class InternalAddress(ValueError):
    """The webhook's host is (or resolves to) an address inside the deployment."""


def _is_internal(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if any(address in network for network in settings.WEBHOOK_ALLOWED_NETWORKS):
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    address = mapped or address
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
    )


def check_destination(url: str, *, resolve: bool = True) -> None:
    """InternalAddress when the URL's host is an internal address, or (``resolve``) when
    any address it resolves to is."""
    host = urllib.parse.urlsplit(url).hostname or ""
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        if not resolve:
            return
        try:
            infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except OSError as error:
            raise InternalAddress(f"{host} does not resolve: {error}") from None
        addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        if _is_internal(address):
            raise InternalAddress(
                f"{host} is an address inside the deployment ({address}); refused unless "
                "WEBHOOK_ALLOWED_NETWORKS allows it"
            )


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001
        return None  # a 3xx is the answer: a redirect could lead inside the deployment


_opener = urllib.request.build_opener(_NoRedirects)


def _post(hook: OrgWebhook, delivery: WebhookDelivery) -> tuple[int | None, str]:
    try:
        check_destination(hook.url)
    except InternalAddress as error:
        return None, f"refused: {error}"
    body = body_of(delivery)
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "controlplane-webhook/1",
        EVENT_HEADER: delivery.event,
    }
    if hook.secret:
        headers[SIGNATURE_HEADER] = sign(hook.secret, body)
    request = urllib.request.Request(hook.url, data=body, headers=headers, method="POST")
    try:
        with _opener.open(request, timeout=TIMEOUT_SECONDS) as response:
            return response.status, ""
    except urllib.error.HTTPError as error:
        return error.code, f"HTTP {error.code} {error.reason}"
    except (urllib.error.URLError, OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        return None, f"{type(error).__name__}: {reason}"[:2000]


def _record(
    delivery: WebhookDelivery, hook: OrgWebhook | None, now: datetime, *, status, error: str
) -> None:
    attempts = delivery.attempts + 1
    finished = timezone.now()
    if not error and status is not None and 200 <= status < 300:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(
            state=DeliveryState.SENT, attempts=attempts, response_status=status, sent_at=finished
        )
        if hook is not None:
            OrgWebhook.objects.filter(pk=hook.pk).update(last_success_at=finished)
        return
    gave_up = attempts >= MAX_ATTEMPTS
    WebhookDelivery.objects.filter(pk=delivery.pk).update(
        state=DeliveryState.FAILED if gave_up else DeliveryState.PENDING,
        attempts=attempts,
        response_status=status,
        last_error=error,
        next_attempt_at=now + retry_delay(attempts),
    )
    if hook is not None:
        OrgWebhook.objects.filter(pk=hook.pk).update(last_failure_at=finished, last_error=error)
    log.warning(
        "webhook delivery %s to %s failed (try %d%s): %s",
        delivery.pk,
        hook.url if hook else "-",
        attempts,
        ", giving up" if gave_up else "",
        error,
    )


def _outcome(delivery_id: int) -> str:
    delivery = WebhookDelivery.objects.only("state").get(pk=delivery_id)
    return {DeliveryState.SENT: "sent", DeliveryState.FAILED: "failed"}.get(delivery.state, "retry")


def deliveries_send_due(*, now: datetime | None = None) -> dict[str, int]:
    """The beat's pass: every due row, oldest first."""
    now = now or timezone.now()
    due = list(
        WebhookDelivery.objects.filter(state=DeliveryState.PENDING, next_attempt_at__lte=now)
        .order_by("next_attempt_at", "id")
        .values_list("pk", flat=True)[:PASS_LIMIT]
    )
    counts: dict[str, int] = {}
    for delivery_id in due:
        outcome = delivery_send(delivery_id, now=now)
        counts[outcome] = counts.get(outcome, 0) + 1
    return counts
