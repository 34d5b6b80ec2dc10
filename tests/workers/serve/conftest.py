"""The serve node tests' platform and node: a scripted platform that knows the token
"cp_good", and a node on stub replicas that has synced once (tests/workers/serve/node_stubs.py).
Stub replicas write their stream events under the test's tmp_path (STUB_EVENTS_DIR)."""

from __future__ import annotations

import pytest

from tests.workers.serve.node_stubs import RunningNode, StubPlatform, wait_for


@pytest.fixture
def platform():
    stub = StubPlatform()
    stub.allow("cp_good")
    yield stub
    stub.close()


@pytest.fixture
def node(platform, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_EVENTS_DIR", str(tmp_path))
    running = RunningNode(platform, tmp_path)
    wait_for(lambda: running.node.has_synced, what="first sync")
    yield running
    running.close()
