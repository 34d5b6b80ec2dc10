"""The serve node's supervisor: crashes, restarts, health, load failures, drains."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from tests.workers.serve.node_stubs import (
    FAST,
    RunningNode,
    StubPlatform,
    replica_spec,
    run_replicas,
    wait_for,
)

pytestmark = pytest.mark.slow


def _reported(platform: StubPlatform, replica_id: str) -> dict | None:
    if not platform.reports:
        return None
    for status in platform.reports[-1]["replicas"]:
        if status["replica_id"] == replica_id:
            return status
    return None


def test_a_killed_replica_is_restarted_while_the_other_serves(platform, node):
    run_replicas(platform, node, ["r1", "r2"])
    victim = node.supervisor.replica("r1")
    os.kill(victim.process.pid, signal.SIGKILL)
    # Out of rotation at once: every request meanwhile lands on r2 and succeeds.
    for _ in range(10):
        status, _, body = node.complete()
        assert status == 200
    wait_for(lambda: node.state("r1") == "ready", what="r1 restarted")
    replica = node.supervisor.replica("r1")
    assert replica.restarts == 1
    assert replica.error == ""  # back to ready: the crash is history
    wait_for(
        lambda: (_reported(platform, "r1") or {}).get("state") == "ready", what="reported ready"
    )
    reported = _reported(platform, "r1")
    assert reported["restarts"] == 1 and reported["pid"] == replica.process.pid
    assert {node.complete()[2]["replica_id"] for _ in range(20)} == {"r1", "r2"}


def test_a_request_retries_on_another_replica_when_one_is_gone(platform, node):
    run_replicas(platform, node, ["r1", "r2"])
    # Kill r1 and, before its watcher notices, make the front pick it: the connection is
    # refused, the request had not started, so it goes to r2.
    victim = node.supervisor.replica("r1")
    victim.process.kill()
    victim.process.wait()
    for _ in range(5):
        status, _, body = node.complete()
        assert status == 200 and body["replica_id"] == "r2"


def test_a_replica_that_cannot_load_fails_with_its_message(platform, node):
    platform.answer["replicas"] = [replica_spec("bad", model="fail-load")]
    wait_for(lambda: node.state("bad") == "failed", what="failed")
    assert node.supervisor.replica("bad").error == "the weights are corrupt (stub)"
    wait_for(lambda: (_reported(platform, "bad") or {}).get("state") == "failed", what="reported")
    assert _reported(platform, "bad")["error"] == "the weights are corrupt (stub)"
    assert node.supervisor.replica("bad").restarts == 0


def test_a_replica_failing_health_checks_is_restarted_then_failed(platform, tmp_path):
    from dataclasses import replace

    config = replace(
        FAST, health_interval=0.05, backoff_base=0.05, backoff_max=0.05, max_restarts=2
    )
    running = RunningNode(platform, tmp_path, name="node-sick", config=config)
    try:
        platform.answer["replicas"] = [replica_spec("sick", model="sick")]
        wait_for(lambda: running.state("sick") == "failed", what="failed after restarts")
        replica = running.supervisor.replica("sick")
        assert replica.restarts == 2
        assert "failed 3 health checks in a row" in replica.error
        assert "restarted 2 times" in replica.error
    finally:
        running.close()


def test_a_replica_that_does_not_load_in_time_fails(platform, tmp_path):
    from dataclasses import replace

    running = RunningNode(
        platform, tmp_path, name="node-slow", config=replace(FAST, load_timeout=0.5)
    )
    try:
        platform.answer["replicas"] = [replica_spec("slow", model="slow-load")]
        wait_for(lambda: running.state("slow") == "failed", what="failed")
        assert running.supervisor.replica("slow").error == "did not load within 0.5 s"
    finally:
        running.close()


def test_a_replica_dropped_from_the_answer_drains_its_requests_then_stops(platform, node, tmp_path):
    run_replicas(platform, node, ["r1"])
    results = []
    thread = threading.Thread(
        target=lambda: results.append(node.complete(body={"prompt": "long", "sleep": 1.0})),
        daemon=True,
    )
    thread.start()
    wait_for(
        lambda: node.supervisor.replica("r1").health.get("running") == 1, what="request in flight"
    )
    platform.answer["replicas"] = []
    platform.answer["routes"] = {}
    wait_for(lambda: node.state("r1") == "draining", what="draining")
    # No new traffic while it drains.
    status, _, body = node.complete()
    assert status == 503 and body["error"]["code"] == "no_replica"
    thread.join(5)
    assert results and results[0][0] == 200 and results[0][2]["replica_id"] == "r1"
    assert (tmp_path / "r1.drained").exists() or wait_for(
        lambda: (tmp_path / "r1.drained").exists()
    )
    wait_for(
        lambda: (_reported(platform, "r1") or {}).get("state") == "stopped", what="reported stopped"
    )
    # Once the platform has heard it stopped, the node forgets it.
    wait_for(lambda: node.supervisor.replica("r1") is None, what="forgotten")


def test_a_replica_marked_draining_stops(platform, node):
    run_replicas(platform, node, ["r1"])
    platform.answer["replicas"] = [replica_spec("r1", draining=True)]
    wait_for(lambda: node.state("r1") == "stopped", what="stopped")
    time.sleep(0.3)
    assert node.state("r1") == "stopped"  # still listed: not started again


def test_a_replica_draining_on_its_own_sends_its_requests_elsewhere(platform, node):
    import http.client

    run_replicas(platform, node, ["r1", "r2"])
    r1 = node.supervisor.replica("r1")
    # A long request straight to r1 keeps it draining for a while after SIGTERM.
    direct = http.client.HTTPConnection("127.0.0.1", r1.port, timeout=10)
    direct.request(
        "POST",
        "/v1/completions",
        body=b'{"sleep": 1.5}',
        headers={"X-CP-Internal": "internal-node-a"},
    )
    time.sleep(0.1)
    os.kill(r1.process.pid, signal.SIGTERM)
    time.sleep(0.1)
    # r1 answers 503 replica_draining: those requests had not started, so r2 serves them.
    answers = [node.complete() for _ in range(12)]
    assert [status for status, _, _ in answers] == [200] * 12
    assert {body["replica_id"] for _, _, body in answers} == {"r2"}
    assert direct.getresponse().status == 200  # its in-flight request finished
    # It exited while the platform still wants it: restarted like any crash.
    wait_for(lambda: node.supervisor.replica("r1").restarts == 1, what="r1 restarted")
    wait_for(lambda: node.state("r1") == "ready", what="r1 ready again")


def test_a_replica_still_busy_after_the_drain_timeout_is_killed(platform, tmp_path):
    from dataclasses import replace

    running = RunningNode(
        platform, tmp_path, name="node-d", config=replace(FAST, drain_timeout=0.3)
    )
    try:
        run_replicas(platform, running, ["r1"])
        results = []
        thread = threading.Thread(
            target=lambda: results.append(running.complete(body={"sleep": 5})), daemon=True
        )
        thread.start()
        wait_for(lambda: running.supervisor.replica("r1").health.get("running") == 1, what="busy")
        platform.answer["replicas"] = []
        platform.answer["routes"] = {}
        started = time.monotonic()
        wait_for(lambda: running.state("r1") in ("stopped", None), what="stopped")
        assert time.monotonic() - started < 3
        thread.join(5)
        # Killed before it answered, and no other replica: the client hears no_replica.
        assert results[0][0] == 503 and results[0][2]["error"]["code"] == "no_replica"
    finally:
        running.close()
