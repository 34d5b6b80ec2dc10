"""Read queries of serving, shared by the API, the pages and the scheduler."""

from __future__ import annotations

import re
from datetime import timedelta

from django.conf import settings
from django.db.models import Prefetch, Q, QuerySet
from django.utils import timezone

from controlplane.serving.models import (
    DEPLOYMENT_NAME_PATTERN,
    Deployment,
    DeploymentState,
    Replica,
    ServeNode,
)
from workers.serve.protocol import BASE_PATH, NODE_TIMEOUT, ReplicaState

# A replica in one of these states holds (or is about to hold) a process on its node.
LIVE_STATES = (
    ReplicaState.PENDING,
    ReplicaState.STARTING,
    ReplicaState.READY,
    ReplicaState.DRAINING,
)
# ...and in one of these it counts towards the deployment's replicas.
SERVING_STATES = (ReplicaState.PENDING, ReplicaState.STARTING, ReplicaState.READY)
# Ended replicas shown with a deployment (its recent history); older ones stay in the table.
RECENT_ENDED = 10


def live_nodes(now=None) -> QuerySet[ServeNode]:
    """Nodes that reported within NODE_TIMEOUT."""
    now = now or timezone.now()
    return ServeNode.objects.filter(last_seen__gte=now - timedelta(seconds=NODE_TIMEOUT))


def deployments_of(project) -> QuerySet[Deployment]:
    return (
        Deployment.objects.filter(project=project)
        .select_related("project", "model", "pinned_version", "target_version", "created_by")
        .prefetch_related(
            Prefetch(
                "replica_set",
                queryset=Replica.objects.select_related("node", "version").order_by(
                    "created_at", "id"
                ),
            )
        )
        .order_by("name")
    )


def deployment_in(project, name: str) -> Deployment | None:
    # A name no deployment can have (a slash, a NUL...) never reaches the database.
    if not isinstance(name, str) or not re.fullmatch(DEPLOYMENT_NAME_PATTERN, name):
        return None
    return deployments_of(project).filter(name=name).first()


def deployment_by_key(key: str) -> Deployment | None:
    """The deployment a node names "<project slug>/<deployment name>" (protocol.deployment_key)."""
    slug, _, name = key.partition("/")
    if not slug or len(key) > 200 or not re.fullmatch(DEPLOYMENT_NAME_PATTERN, name):
        return None
    return (
        Deployment.objects.select_related("project").filter(project__slug=slug, name=name).first()
    )


def token_by_hash(token_sha256: str):
    """The API token whose sha256 a node sends (the raw token never leaves the node)."""
    from controlplane.accounts.models import ApiToken

    return ApiToken.objects.select_related("user").filter(token_hash=token_sha256).first()


def replicas_shown(deployment: Deployment) -> list[Replica]:
    """The live replicas and the most recent ended ones (prefetched by deployments_of)."""
    replicas = list(deployment.replica_set.all())
    live = [r for r in replicas if r.state in LIVE_STATES]
    ended = [r for r in replicas if r.state not in LIVE_STATES]
    ended.sort(key=lambda r: (r.ended_at or r.created_at, r.id), reverse=True)
    return live + ended[:RECENT_ENDED]


def served_version(deployment: Deployment):
    """The version answering requests now: during a switch, the old one while its replicas
    are still the ready ones; otherwise the target."""
    ready = [
        r
        for r in deployment.replica_set.all()
        if r.state == ReplicaState.READY and r.version_id != deployment.target_version_id
    ]
    if ready:
        return ready[0].version
    return deployment.target_version


def node_base_url(node_url: str) -> str:
    return node_url.rstrip("/") if "://" in node_url else f"http://{node_url.rstrip('/')}"


def serve_origin(
    nodes: list[ServeNode] | None = None, prefer: set[int] = frozenset()
) -> str | None:
    """Where clients reach the deployments: SERVING_PUBLIC_URL (a load balancer before the
    nodes) when set, else a live node's front (one of `prefer` if any is live); None while
    no node is up. Any node's front serves every deployment (it proxies to the replicas)."""
    public = getattr(settings, "SERVING_PUBLIC_URL", "")
    if public:
        return node_base_url(public)
    nodes = list(live_nodes()) if nodes is None else nodes
    if not nodes:
        return None
    node = next((n for n in nodes if n.pk in prefer), nodes[0])
    return node_base_url(node.url)


def base_url(deployment: Deployment, nodes: list[ServeNode] | None = None) -> str | None:
    """The deployment's base URL (the `openai` client's base_url), preferring a node that
    runs a ready replica of it; None while no node is up."""
    hosting = {
        r.node_id
        for r in deployment.replica_set.all()
        if r.state == ReplicaState.READY and r.node_id is not None
    }
    origin = serve_origin(nodes, hosting)
    if origin is None:
        return None
    return origin + BASE_PATH.format(project=deployment.project.slug, deployment=deployment.name)


def deployments_serving(version) -> list[str]:
    """Names of the deployments that serve `version`, are switching to it, or still have
    a replica of it up (a switch away from it not finished yet)."""
    wanted = Q(state=DeploymentState.RUNNING) & (
        Q(pinned_version=version) | Q(target_version=version)
    )
    held = Q(replica_set__version=version, replica_set__state__in=LIVE_STATES)
    return sorted(set(Deployment.objects.filter(wanted | held).values_list("name", flat=True)))
