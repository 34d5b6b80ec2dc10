"""Stand-ins for the serve node's tests: a scripted platform, and a node on stub replicas.

The platform answers /internal/serve/sync with `answer` and /internal/serve/authorize
with the verdict scripted for the token's sha256; `down = True` makes it refuse both
(connection closed without an answer). Replicas are tests/workers/serve/stub_replica.py.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from workers.serve.front import FrontServer
from workers.serve.node import Node
from workers.serve.platform_client import PlatformClient
from workers.serve.supervisor import Supervisor, SupervisorConfig

NODE_SECRET = "test-node-secret-0123456789-abcdefghij"
STUB_REPLICA = Path(__file__).with_name("stub_replica.py")
DEPLOYMENT = "acme/chat"


def sha(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


def replica_spec(
    replica_id: str, *, deployment: str = DEPLOYMENT, model: str = "tiny", **extra
) -> dict:
    return {
        "replica_id": replica_id,
        "deployment_id": 1,
        "deployment": deployment,
        "project_id": 1,
        "model": model,
        "version": 1,
        "version_id": 1,
        "task": "text-generation",
        "files": [],
        **extra,
    }


def deployment_info(key: str = DEPLOYMENT, *, state: str = "running", **extra) -> dict:
    return {
        "id": 1,
        "key": key,
        "state": state,
        "task": "text-generation",
        "model": "tiny",
        "version": 1,
        **extra,
    }


def allowed(token_id: int = 7, *, rate: int = 600, ttl: float = 10.0) -> dict:
    caller = {"token_id": token_id, "user_id": 3, "username": "ann"}
    return {"allowed": True, "caller": caller, "rate_limit_per_minute": rate, "ttl": ttl}


class StubPlatform:
    def __init__(self) -> None:
        self.answer: dict[str, Any] = {
            "replicas": [],
            "deployments": [deployment_info()],
            "routes": {},
            "revoked_token_ids": [],
            "sync_interval": 0.1,
        }
        # Per node name; a node not named here gets `answer`.
        self.node_answers: dict[str, dict[str, Any]] = {}
        self.verdicts: dict[str, dict] = {}
        self.authorize_calls: list[dict] = []
        self.reports: list[dict] = []
        self.down = False
        platform = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if platform.down:
                    self.close_connection = True
                    self.connection.close()
                    return
                if self.headers.get("Authorization") != f"Bearer {NODE_SECRET}":
                    return self._json(401, {"error": {"code": "not_authenticated"}})
                if self.path == "/internal/serve/sync":
                    platform.reports.append(body)
                    return self._json(200, platform.node_answers.get(body["node"], platform.answer))
                if self.path == "/internal/serve/authorize":
                    platform.authorize_calls.append(body)
                    verdict = platform.verdicts.get(
                        body["token_sha256"],
                        {
                            "allowed": False,
                            "status": 401,
                            "code": "authentication_failed",
                            "message": "bad token",
                        },
                    )
                    return self._json(200, verdict)
                return self._json(404, {})

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def allow(self, raw_token: str, **kwargs) -> None:
        self.verdicts[sha(raw_token)] = allowed(**kwargs)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


FAST = SupervisorConfig(
    load_timeout=20,
    drain_timeout=10,
    health_interval=0.2,
    health_timeout=0.5,
    backoff_base=0.2,
    backoff_max=1.0,
)


class RunningNode:
    """A node in this process (sync loop, supervisor, front) on stub replicas."""

    def __init__(self, platform: StubPlatform, workdir: Path, *, name: str = "node-a", config=FAST):
        self.platform = platform
        self.supervisor = Supervisor(
            node_name=name,
            command=[sys.executable, str(STUB_REPLICA)],
            internal_secret="internal-" + name,
            workdir=workdir / name,
            config=config,
        )
        self.node = Node(
            name=name,
            public_url="http://placeholder",
            device="cpu",
            capacity=4,
            platform=PlatformClient(platform.url, NODE_SECRET, timeout=1.0),
            supervisor=self.supervisor,
            node_secret=NODE_SECRET,
        )
        self.server = FrontServer(("127.0.0.1", 0), self.node, internal_secret="internal-" + name)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.node.public_url = self.url
        self.node.start()
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.node.stop(drain_timeout=5)
        self.server.shutdown()
        self.server.server_close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, http.client.HTTPMessage, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        all_headers = dict(headers or {})
        if token is not None:
            all_headers["Authorization"] = f"Bearer {token}"
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        if data is not None:
            all_headers.setdefault("Content-Type", "application/json")
        connection.request(method, path, body=data, headers=all_headers)
        response = connection.getresponse()
        raw = response.read()
        connection.close()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"raw": raw.decode(errors="replace")}
        return response.status, response.headers, payload

    def complete(self, token: str = "cp_good", body: dict | None = None, **kwargs):
        return self.request(
            "POST",
            f"/p/{DEPLOYMENT}/v1/completions",
            body or {"model": "tiny", "prompt": "hi"},
            token=token,
            **kwargs,
        )

    def state(self, replica_id: str) -> str | None:
        replica = self.supervisor.replica(replica_id)
        return None if replica is None else str(replica.state)


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def run_replicas(platform: StubPlatform, node: RunningNode, replica_ids: list[str]) -> None:
    """Tell the node to run these replicas, wait until they are ready, publish their routes."""
    platform.answer["replicas"] = [replica_spec(r) for r in replica_ids]
    for replica_id in replica_ids:
        wait_for(lambda r=replica_id: node.state(r) == "ready", what=f"replica {replica_id} ready")
    platform.answer["routes"] = {
        DEPLOYMENT: [{"replica_id": r, "node_url": node.url} for r in replica_ids]
    }
