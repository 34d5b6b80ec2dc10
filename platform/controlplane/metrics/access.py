"""Who may scrape /metrics: the holder of METRICS_TOKEN, or else a client on an internal
network (METRICS_ALLOWED_NETWORKS, loopback by default).

The figures name workers, queues and job kinds of every tenant, so the endpoint is never
public. With a token set it is the only way in (from any network): a Prometheus outside
the cluster scrapes with it. Without one, the client's address decides, and an address a
proxy relayed (X-Forwarded-For) counts only when TRUSTED_PROXY_COUNT says our own proxies
wrote it: a proxy on loopback would otherwise make every outside client look internal.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass

from django.conf import settings
from django.http import HttpRequest

from controlplane.accounts.lockout import client_address


@dataclass(frozen=True)
class Refusal:
    status: int  # 401: credentials missing or wrong; 403: this client may not scrape
    message: str


def scrape_refusal(request: HttpRequest) -> Refusal | None:
    """None when the request may read the metrics, else why not."""
    token = settings.METRICS_TOKEN
    if token:
        return _token_refusal(request, token)
    return _network_refusal(request)


def _token_refusal(request: HttpRequest, token: str) -> Refusal | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        return Refusal(401, "send the metrics token as `Authorization: Bearer <METRICS_TOKEN>`")
    if not hmac.compare_digest(presented.strip().encode(), token.encode()):
        return Refusal(401, "the metrics token is wrong")
    return None


def _network_refusal(request: HttpRequest) -> Refusal | None:
    if request.META.get("HTTP_X_FORWARDED_FOR") and not settings.TRUSTED_PROXY_COUNT:
        return Refusal(
            403,
            "a request relayed by a proxy is not trusted by its address; "
            "set METRICS_TOKEN, or TRUSTED_PROXY_COUNT for your own proxies",
        )
    address = client_address(request)
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return Refusal(403, "the client's address is unknown; set METRICS_TOKEN")
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 from a dual-stack socket
    if any(ip in network for network in settings.METRICS_ALLOWED_NETWORKS):
        return None
    return Refusal(
        403, f"{ip} is not in METRICS_ALLOWED_NETWORKS; scrape from there or set METRICS_TOKEN"
    )
