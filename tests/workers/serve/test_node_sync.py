"""The serve node's sync loop: what it reports, platform outages, routes to other nodes."""

from __future__ import annotations

import json
import logging
import time

import pytest

from tests.workers.serve.node_stubs import (
    DEPLOYMENT,
    RunningNode,
    deployment_info,
    replica_spec,
    run_replicas,
    wait_for,
)

pytestmark = pytest.mark.slow


def test_the_node_reports_itself_and_its_replicas(platform, node):
    run_replicas(platform, node, ["r1"])
    wait_for(
        lambda: [r["state"] for r in platform.reports[-1]["replicas"]] == ["ready"],
        what="a report with r1 ready",
    )
    report = platform.reports[-1]
    assert report["node"] == "node-a" and report["url"] == node.url
    assert report["device"] == "cpu" and report["capacity"] == 4
    assert report["started_at"] == pytest.approx(time.time(), abs=60)
    [replica] = report["replicas"]
    assert replica["replica_id"] == "r1" and replica["state"] == "ready" and replica["pid"]
    wait_for(lambda: platform.reports[-1]["replicas"][0]["health"].get("up"), what="health")


def test_the_platform_down_the_node_keeps_serving_what_it_knows(platform, node, caplog):
    platform.allow("cp_brief", token_id=12, ttl=0.3)
    run_replicas(platform, node, ["r1", "r2"])
    assert node.complete(token="cp_good")[0] == 200
    assert node.complete(token="cp_brief")[0] == 200
    caplog.set_level(logging.WARNING, logger="workers.serve.node")
    platform.down = True
    reports = len(platform.reports)
    time.sleep(0.6)  # several sync intervals, and cp_brief's verdict expires
    for token in ("cp_good", "cp_brief"):
        status, _, body = node.complete(token=token)
        assert status == 200 and body["replica_id"] in {"r1", "r2"}, token
    # A token it has never seen cannot be checked now.
    status, headers, body = node.complete(token="cp_new")
    assert status == 503 and body["error"]["code"] == "auth_unavailable"
    assert int(headers["Retry-After"]) >= 1
    outage_logs = [r for r in caplog.records if "platform unreachable, serving" in r.getMessage()]
    assert len(outage_logs) == 1  # once per outage, not once per attempt
    platform.down = False
    wait_for(lambda: len(platform.reports) > reports, what="sync again")
    # The node logs the recovery when the answer comes back, just after the platform has
    # recorded the report: wait for the line rather than race it.
    wait_for(
        lambda: any("reachable again" in r.getMessage() for r in caplog.records),
        what="the recovery logged",
    )


def test_a_node_routes_to_a_replica_on_another_node(platform, tmp_path):
    node_a = RunningNode(platform, tmp_path, name="node-a")
    node_b = RunningNode(platform, tmp_path, name="node-b")
    try:
        empty = {
            "replicas": [],
            "deployments": [deployment_info()],
            "routes": {},
            "sync_interval": 0.1,
        }
        platform.node_answers["node-b"] = empty
        run_replicas(platform, node_a, ["r1"])
        empty["routes"] = platform.answer["routes"]  # routes are the same for every node
        wait_for(lambda: node_b.node.remote_routes(DEPLOYMENT), what="node b learns the route")
        status, headers, body = node_b.complete(token="cp_good", headers={"X-Data-Subject": "bob"})
        assert status == 200
        assert body["replica_id"] == "r1" and body["node"] == "node-a"
        assert body["replica_header"] is None  # node a's front consumed it
        assert json.loads(body["caller"])["token_id"] == 7
        assert body["subject"] == "bob"
        assert body["request_id"] == headers["X-Request-Id"]

        # A client cannot pose as a front: without the node secret its X-CP-* are ignored.
        spoof = {"X-CP-Internal": "guess", "X-CP-Replica": "r1"}
        status, _, body = node_a.complete(token=None, headers=spoof)
        assert status == 401
        status, _, body = node_a.complete(token="cp_good", headers=spoof)
        assert status == 200 and body["replica_header"] is None

        # The route is stale (r1 went away on node a): node b answers no_replica, not 502.
        platform.answer["replicas"] = []
        wait_for(lambda: node_a.state("r1") in ("stopped", None), what="r1 stopped")
        status, _, body = node_b.complete(token="cp_good")
        assert status == 503 and body["error"]["code"] == "no_replica"
    finally:
        node_b.close()
        node_a.close()


def test_a_new_replica_in_the_answer_is_started_with_its_spec(platform, node, tmp_path):
    platform.answer["replicas"] = [replica_spec("r7", max_batch=4)]
    wait_for(lambda: node.state("r7") == "ready", what="r7 ready")
    spec = json.loads((tmp_path / "node-a" / "r7.json").read_text())
    assert spec["replica_id"] == "r7" and spec["max_batch"] == 4
    assert spec["guardrails"]["pii"] == "redact"  # the protocol's defaults, filled in
