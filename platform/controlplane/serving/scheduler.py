"""The scheduler: each serve node's sync places, replaces, switches and drains replicas.

There is no scheduler process. Every node reports every SYNC_INTERVAL
(`POST /internal/serve/sync`, a `NodeReport`); `node_sync` records what the node says,
reconciles every deployment with what is wanted, and answers what this node must run
plus every deployment's routes (a `SyncAnswer`). Syncs are serialised, one at a time
across all nodes (a PostgreSQL advisory lock; SQLite's IMMEDIATE transactions serialise
writers anyway), so two nodes syncing at once never both place the missing replica.

Rules, in the order a sync applies them:
- The node's row is upserted (last_seen = now). Each replica it reports updates its row
  (state, pid, restarts, error, health; ready_at on the first `ready`). A replica ended
  in the platform's view (stopped, failed, lost) stays ended: the node, not finding it
  in the answer, stops it. A replica the node had reported before and no longer
  reports is lost (the node restarted, or its child vanished); one it never reported
  is still pending (the node has not started it yet).
- Replicas on nodes silent for NODE_TIMEOUT are lost.
- A deployment following an alias that points elsewhere is retargeted (the registry's
  hook normally did it already; this catches a hook lost to a crash).
- A running deployment keeps `replicas` live (pending/starting/ready) replicas of its
  target version: missing ones are placed on the live node of its device with the most
  free capacity (ties: fewer replicas of this deployment there, then the name), extra
  ones drained (those not ready first). Replicas of another version (a switch) stay
  routed until `replicas` target replicas are ready, then all drain at once and
  `deployment.switched` is audited; old ones that are not ready drain at once. When no
  node has room for a target replica, one old replica drains to make room (one at a
  time). Each failed replica is replaced, until MAX_FAILURES_IN_A_ROW replicas have
  failed since the deployment last had a ready replica or was last changed: then the
  deployment is `failed` (audited) and its replicas drain.
- Stopped and failed deployments drain all their replicas.
- A draining replica its node no longer reports, or reports stopped, is stopped.

Audit events are appended after every row change of the sync (the audit chain is the
last lock taken, as in the services), so a sync never waits on a deployment row while
holding a project's chain.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.db import connection, transaction
from django.db.models import Max
from django.utils import timezone

from controlplane.accounts.models import ApiToken
from controlplane.audit.services import audit_append
from controlplane.registry.models import ModelAlias
from controlplane.serving.errors import InvalidRequest
from controlplane.serving.models import Deployment, DeploymentState, Device, Replica, ServeNode
from controlplane.serving.selectors import LIVE_STATES, SERVING_STATES, live_nodes
from controlplane.serving.services import audit_switching, retarget_followers
from controlplane.serving.subjects import project_subject_key
from workers.serve.protocol import (
    NODE_TIMEOUT,
    DeploymentInfo,
    GuardrailConfig,
    ModelFileRef,
    NodeReport,
    ReplicaSpec,
    ReplicaState,
    Route,
    SyncAnswer,
    deployment_key,
)

MAX_FAILURES_IN_A_ROW = 3
# Tokens revoked this recently are listed in every answer, so fronts drop cached verdicts.
REVOKED_WINDOW = timedelta(minutes=10)
# pg_advisory_xact_lock key of the scheduler (any fixed 64-bit number no other code uses).
ADVISORY_LOCK_KEY = int.from_bytes(
    hashlib.sha256(b"controlplane.serving.scheduler").digest()[:8], "big", signed=True
)
MAX_NODE_CAPACITY = 1000
MAX_ERROR_CHARS = 10_000


def check_report(report: NodeReport) -> None:
    """InvalidRequest naming each field of the report that cannot be stored or used."""
    errors: dict[str, list[str]] = {}

    def text(name: str, value: Any, longest: int, *, empty: bool = False) -> None:
        if not isinstance(value, str) or (not empty and not value) or len(value) > longest:
            errors[name] = [f"text of 1-{longest} characters"]
        elif "\x00" in value or any(c.isspace() for c in value):
            errors[name] = ["no spaces or control characters"]

    text("node", report.node, 200)
    text("url", report.url, 500)
    if report.device not in Device.values:
        errors["device"] = [f"one of {', '.join(Device.values)}"]
    if (
        isinstance(report.capacity, bool)
        or not isinstance(report.capacity, int)
        or not 0 <= report.capacity <= MAX_NODE_CAPACITY
    ):
        errors["capacity"] = [f"a whole number from 0 to {MAX_NODE_CAPACITY}"]
    if isinstance(report.started_at, bool) or not isinstance(report.started_at, (int, float)):
        errors["started_at"] = ["a unix time"]
    states = {s.value for s in ReplicaState}
    for index, status in enumerate(report.replicas):
        where = f"replicas.{index}"
        if not isinstance(status.replica_id, str) or not 1 <= len(status.replica_id) <= 32:
            errors[f"{where}.replica_id"] = ["a replica id"]
        if status.state not in states:
            errors[f"{where}.state"] = [f"one of {', '.join(sorted(states))}"]
        if status.pid is not None and (
            isinstance(status.pid, bool)
            or not isinstance(status.pid, int)
            or not 0 <= status.pid < 2**31
        ):
            errors[f"{where}.pid"] = ["a process id or null"]
        if isinstance(status.restarts, bool) or not isinstance(status.restarts, int):
            errors[f"{where}.restarts"] = ["a whole number"]
        elif not 0 <= status.restarts < 2**31:
            errors[f"{where}.restarts"] = ["a whole number from 0"]
        if not isinstance(status.error, str):
            errors[f"{where}.error"] = ["text"]
        if not isinstance(status.health, dict):
            errors[f"{where}.health"] = ["an object"]
    if errors:
        raise InvalidRequest("the node report is invalid", fields=errors)


def node_sync(report: NodeReport) -> SyncAnswer:
    """Record the node's report, reconcile every deployment, answer what it must run."""
    check_report(report)
    with transaction.atomic():
        _serialise()
        now = timezone.now()
        audits: list[Callable[[], None]] = []  # appended last, see the docstring
        node, restarted = _upsert_node(report, now)
        reported = {status.replica_id: status for status in report.replicas}
        _apply_statuses(node, reported, now, restarted)
        _mark_lost(now)
        nodes = list(live_nodes(now))
        _follow_aliases(audits)
        _reconcile(nodes, now, audits)
        _stop_drained(node, reported, now)
        answer = _answer(node, nodes, now)
        for append in audits:  # the chain last: see the module's docstring
            append()
    return answer


def _serialise() -> None:
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [ADVISORY_LOCK_KEY])


def _upsert_node(report: NodeReport, now) -> tuple[ServeNode, bool]:
    node = ServeNode.objects.select_for_update().filter(name=report.node).first()
    fields = {
        "url": report.url,
        "device": report.device,
        "capacity": report.capacity,
        "started_at": float(report.started_at),
        "last_seen": now,
    }
    if node is None:
        return ServeNode.objects.create(name=report.node, **fields), False
    restarted = bool(report.started_at) and node.started_at != float(report.started_at)
    for key, value in fields.items():
        setattr(node, key, value)
    node.save(update_fields=list(fields))
    return node, restarted


def _apply_statuses(node: ServeNode, reported: dict, now, restarted: bool) -> None:
    from controlplane.finops.serving_usage import counters_delta, usage_batch, usage_write

    usage = usage_batch(now)  # what the replicas served since their last report
    rows = Replica.objects.filter(node=node, state__in=LIVE_STATES)
    for replica in rows:
        status = reported.get(replica.pk)
        if status is None:
            if replica.state == ReplicaState.DRAINING:
                # Done draining: its slot is free for this sync's placements.
                replica.state, replica.ended_at = ReplicaState.STOPPED, now
                replica.save(update_fields=["state", "ended_at"])
            elif replica.last_report is not None:
                replica.state = ReplicaState.LOST
                replica.ended_at = now
                replica.error = (
                    f"node {node.name} restarted"
                    if restarted
                    else f"node {node.name} no longer reports it"
                )
                replica.save(update_fields=["state", "ended_at", "error"])
            continue  # never reported: the node has not started it yet
        usage.add(
            deployment_id=replica.deployment_id,
            delta=counters_delta(
                replica.health, status.health, restarted=status.restarts != replica.restarts
            ),
        )
        replica.pid = status.pid
        replica.restarts = status.restarts
        replica.error = status.error[:MAX_ERROR_CHARS]
        replica.health = status.health
        replica.last_report = now
        said = status.state
        if replica.state == ReplicaState.DRAINING:
            if said in (ReplicaState.STOPPED, ReplicaState.FAILED, ReplicaState.LOST):
                replica.state, replica.ended_at = ReplicaState.STOPPED, now
        elif said == ReplicaState.READY:
            replica.state = ReplicaState.READY
            replica.ready_at = replica.ready_at or now
        elif said in (ReplicaState.STARTING, ReplicaState.DRAINING):
            replica.state = said
        elif said in (ReplicaState.FAILED, ReplicaState.STOPPED, ReplicaState.LOST):
            replica.state, replica.ended_at = said, now
            if said == ReplicaState.FAILED and not replica.error:
                replica.error = "failed (the node gave no reason)"
        replica.save()
    usage_write(usage, now=now)


def _mark_lost(now) -> None:
    cutoff = now - timedelta(seconds=NODE_TIMEOUT)
    gone = Replica.objects.filter(state__in=LIVE_STATES).exclude(node__last_seen__gte=cutoff)
    gone.update(state=ReplicaState.LOST, ended_at=now, error="its node stopped reporting")


def _follow_aliases(audits: list) -> None:
    followers = set(
        Deployment.objects.exclude(alias="").values_list("model_id", "alias", "target_version_id")
    )
    if not followers:
        return
    points = dict(
        ((model_id, name), version_id)
        for model_id, name, version_id in ModelAlias.objects.filter(
            model_id__in={model_id for model_id, _a, _v in followers}
        ).values_list("model_id", "name", "version_id")
    )
    stale = {
        (model_id, alias)
        for model_id, alias, target in followers
        if points.get((model_id, alias)) not in (None, target)
    }
    for model_id, alias in sorted(stale):
        for move in retarget_followers(model_id=model_id, alias=alias):
            audits.append(lambda move=move: audit_switching(*move))


def _reconcile(nodes: list[ServeNode], now, audits: list) -> None:
    deployments = list(
        Deployment.objects.select_related("project", "model", "target_version").order_by("pk")
    )
    live = list(Replica.objects.filter(state__in=LIVE_STATES).select_related("version"))
    by_deployment: dict[int, list[Replica]] = defaultdict(list)
    used: dict[int, int] = defaultdict(int)
    for replica in live:
        by_deployment[replica.deployment_id].append(replica)
        used[replica.node_id] += 1
    for deployment in deployments:
        replicas = by_deployment.get(deployment.pk, [])
        if deployment.state != DeploymentState.RUNNING:
            for replica in replicas:
                if replica.state in SERVING_STATES:
                    _drain(replica)
            continue
        _reconcile_running(deployment, replicas, nodes, used, now, audits)


def _current(replica: Replica, deployment) -> bool:
    """Whether the replica runs what the deployment wants now: its target version, with
    the settings of its current generation (guardrails, archiving)."""
    return (
        replica.version_id == deployment.target_version_id
        and replica.config_generation == deployment.config_generation
    )


def _reconcile_running(deployment, replicas, nodes, used, now, audits) -> None:
    serving = [r for r in replicas if r.state in SERVING_STATES]
    target = [r for r in serving if _current(r, deployment)]
    old = [r for r in serving if not _current(r, deployment)]
    wanted = deployment.replicas
    if len(target) > wanted:
        # Keep the ready ones, oldest first; drain the rest (not-ready and newest first).
        target.sort(key=lambda r: (r.state != ReplicaState.READY, r.created_at, r.pk))
        for replica in target[wanted:]:
            _drain(replica)
        target = target[:wanted]
    missing = wanted - len(target)
    if missing > 0:
        failures = _failures_in_a_row(deployment)
        if len(failures) >= MAX_FAILURES_IN_A_ROW:
            _fail(deployment, failures, replicas, now, audits)
            return
        for _ in range(missing):
            node = _pick_node(nodes, deployment, replicas, used)
            if node is None:
                break
            replica = Replica.objects.create(
                deployment=deployment,
                version=deployment.target_version,
                config_generation=deployment.config_generation,
                node=node,
            )
            used[node.pk] += 1
            replicas.append(replica)
            target.append(replica)
        short = wanted - len(target)
        draining = any(r.state == ReplicaState.DRAINING for r in replicas)
        if short > 0 and old and not draining:
            # No room for the new version: free one slot held by the old one.
            old.sort(key=lambda r: (r.state == ReplicaState.READY, -r.created_at.timestamp()))
            _drain(old.pop(0))
    if not old:
        return
    ready = sum(r.state == ReplicaState.READY for r in target)
    if ready >= wanted:
        versions = sorted({r.version.number for r in old})
        for replica in old:
            _drain(replica)
        payload = {
            "name": deployment.name,
            "from_versions": versions,
            "to_version": deployment.target_version.number,
            "to_version_id": deployment.target_version_id,
            "ready_replicas": ready,
        }
        if all(r.version_id == deployment.target_version_id for r in old):
            # Same version, new settings: every replica now runs the current generation.
            action = "deployment.reconfigured"
            payload["generation"] = deployment.config_generation
        else:
            action = "deployment.switched"
        audits.append(lambda: _audit(deployment, action, payload))
        return
    for replica in old:
        if replica.state != ReplicaState.READY:
            _drain(replica)  # routes nothing; frees its slot for the new version


def _drain(replica: Replica) -> None:
    replica.state = ReplicaState.DRAINING
    replica.save(update_fields=["state"])


def _failures_in_a_row(deployment) -> list[Replica]:
    """Failed replicas since the deployment last had a replica ready or was last changed
    (a start, a scale, a new target version: each gives it fresh chances)."""
    last_ready = Replica.objects.filter(deployment=deployment).aggregate(Max("ready_at"))
    since = max(d for d in (deployment.updated_at, last_ready["ready_at__max"]) if d is not None)
    return list(
        Replica.objects.filter(
            deployment=deployment, state=ReplicaState.FAILED, ended_at__gt=since
        ).order_by("-ended_at")
    )


def _fail(deployment, failures, replicas, now, audits) -> None:
    last = failures[0].error or "no reason given"
    reason = (
        f"{len(failures)} replicas of {deployment.model.name} "
        f"v{deployment.target_version.number} failed in a row; the last: {last}"
    )[:2000]
    claimed = Deployment.objects.filter(pk=deployment.pk, state=DeploymentState.RUNNING).update(
        state=DeploymentState.FAILED, reason=reason, stopped_at=now, updated_at=now
    )
    if claimed != 1:
        return
    deployment.state, deployment.reason, deployment.stopped_at = DeploymentState.FAILED, reason, now
    for replica in replicas:
        if replica.state in SERVING_STATES:
            _drain(replica)
    payload = {
        "name": deployment.name,
        "version": deployment.target_version.number,
        "version_id": deployment.target_version_id,
        "failed_replicas": [r.pk for r in failures],
        "reason": reason,
    }
    audits.append(lambda: _audit(deployment, "deployment.failed", payload))


def _audit(deployment, action: str, payload: dict[str, Any]) -> None:
    audit_append(
        project=deployment.project,
        actor=None,
        action=action,
        artifact=deployment,
        payload=payload,
    )


def _pick_node(nodes, deployment, replicas, used) -> ServeNode | None:
    fitting = [n for n in nodes if n.device == deployment.device and used[n.pk] < n.capacity]
    if not fitting:
        return None
    here = defaultdict(int)
    for replica in replicas:
        if replica.state in LIVE_STATES:
            here[replica.node_id] += 1
    return min(fitting, key=lambda n: (-(n.capacity - used[n.pk]), here[n.pk], n.name))


def _stop_drained(node: ServeNode, reported: dict, now) -> None:
    gone = Replica.objects.filter(node=node, state=ReplicaState.DRAINING).exclude(
        pk__in=list(reported)
    )
    gone.update(state=ReplicaState.STOPPED, ended_at=now)


# The answer ------------------------------------------------------------------------------


def _answer(node: ServeNode, nodes: list[ServeNode], now) -> SyncAnswer:
    live_urls = {n.pk: n.url for n in nodes}
    deployments = list(
        Deployment.objects.select_related("project", "model", "target_version").order_by("pk")
    )
    live = list(
        Replica.objects.filter(state__in=LIVE_STATES)
        .select_related("version")
        .order_by("created_at", "pk")
    )
    by_deployment: dict[int, list[Replica]] = defaultdict(list)
    for replica in live:
        by_deployment[replica.deployment_id].append(replica)
    keys = {d.pk: deployment_key(d.project.slug, d.name) for d in deployments}
    infos, routes = [], {}
    for deployment in deployments:
        replicas = by_deployment.get(deployment.pk, [])
        ready = [r for r in replicas if r.state == ReplicaState.READY and r.node_id in live_urls]
        routes[keys[deployment.pk]] = [Route(r.pk, live_urls[r.node_id]) for r in ready]
        old_ready = [r for r in ready if r.version_id != deployment.target_version_id]
        serving = old_ready[0].version if old_ready else deployment.target_version
        running = deployment.state == DeploymentState.RUNNING
        infos.append(
            DeploymentInfo(
                id=deployment.pk,
                key=keys[deployment.pk],
                # The protocol knows running and stopped; a failed one answers like a
                # stopped one, with its reason.
                state="running" if running else "stopped",
                task=deployment.model.task,
                model=deployment.model.name,
                version=serving.number,
                reason="" if running else deployment.reason,
                rate_limit_per_minute=deployment.rate_limit_per_minute,
            )
        )
    by_id = {d.pk: d for d in deployments}
    subject_keys: dict[int, str] = {}
    specs = []
    mine = (
        Replica.objects.filter(node=node, state__in=LIVE_STATES)
        .select_related("version")
        .prefetch_related("version__files")
        .order_by("created_at", "pk")
    )
    for replica in mine:
        deployment = by_id[replica.deployment_id]
        project = deployment.project
        if project.pk not in subject_keys:
            subject_keys[project.pk] = project_subject_key(project)
        specs.append(
            ReplicaSpec(
                replica_id=replica.pk,
                deployment_id=deployment.pk,
                deployment=keys[deployment.pk],
                project_id=project.pk,
                model=deployment.model.name,
                version=replica.version.number,
                version_id=replica.version_id,
                task=deployment.model.task,
                files=[
                    ModelFileRef(
                        name=f.name,
                        role=f.role,
                        object_key=f.object_key,
                        sha256=f.sha256,
                        size=f.size,
                    )
                    for f in sorted(replica.version.files.all(), key=lambda f: f.name)
                ],
                device=deployment.device,
                max_batch=deployment.max_batch,
                max_queue=deployment.max_queue,
                guardrails=GuardrailConfig.from_dict(deployment.guardrails),
                subject_key=subject_keys[project.pk],
                archive=deployment.archive_requests,
                draining=replica.state == ReplicaState.DRAINING,
            )
        )
    revoked = list(
        ApiToken.objects.filter(revoked_at__gte=now - REVOKED_WINDOW)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    return SyncAnswer(replicas=specs, deployments=infos, routes=routes, revoked_token_ids=revoked)
