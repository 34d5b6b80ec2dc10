"""A stand-in replica for the serve node's tests: the replica CLI contract, no model.

    python stub_replica.py --spec SPEC.json --host 127.0.0.1 --port 0 --node NODE

Prints `READY <port>` once listening. The spec's `model` picks a behaviour:
"fail-load" prints `ERROR ...` and exits 3; "slow-load" sleeps 30 s first; "sick"
answers /health with 503. POST /v1/* answers JSON naming the replica and what it was
sent; `{"stream": true, "chunks": n, "delay": s}` streams n SSE chunks s seconds apart;
`{"sleep": s}` holds the answer s seconds. SIGTERM drains: new requests get 503
replica_draining, in-flight ones finish, then exit 0. With STUB_EVENTS_DIR set, a stream
the client abandoned leaves `<replica_id>.cancelled` there.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

parser = argparse.ArgumentParser()
parser.add_argument("--spec", required=True)
parser.add_argument("--host", required=True)
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--node", required=True)
args = parser.parse_args()

spec = json.loads(Path(args.spec).read_text())
SECRET = os.environ["CP_SERVE_SECRET"]
REPLICA_ID = spec["replica_id"]
EVENTS = os.environ.get("STUB_EVENTS_DIR")

if spec["model"] == "fail-load":
    print("ERROR the weights are corrupt (stub)", flush=True)
    sys.exit(3)
if spec["model"] == "slow-load":
    time.sleep(30)

state = {"draining": False, "running": 0, "served": 0}
lock = threading.Lock()
drained = threading.Event()


def event(name: str) -> None:
    if EVENTS:
        (Path(EVENTS) / f"{REPLICA_ID}.{name}").write_text(str(time.time()))


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_args):
        pass

    def _json(self, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Request-Id", self.headers.get("X-Request-Id", "stub-made"))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path != "/health":
            return self._json(404, {"error": {"code": "not_found"}})
        if spec["model"] == "sick":
            return self._json(503, {"up": False})
        with lock:
            health = {"up": True, "draining": state["draining"], "running": state["running"]}
        # As the real replica: 503 while draining.
        return self._json(503 if health["draining"] else 200, health)

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.headers.get("X-CP-Internal") != SECRET:
            return self._json(403, {"error": {"code": "forbidden"}})
        with lock:
            if state["draining"]:
                return self._json(
                    503,
                    {"error": {"status": 503, "code": "replica_draining", "message": "draining"}},
                )
            state["running"] += 1
        try:
            self._answer(json.loads(body))
        finally:
            with lock:
                state["running"] -= 1
                state["served"] += 1
                if state["draining"] and state["running"] == 0:
                    drained.set()

    def _answer(self, request: dict) -> None:
        seen = {
            "replica_id": REPLICA_ID,
            "node": args.node,
            "path": self.path,
            "model": request.get("model"),
            "caller": self.headers.get("X-CP-Caller"),
            "request_id": self.headers.get("X-Request-Id"),
            "subject": self.headers.get("X-Data-Subject"),
            "replica_header": self.headers.get("X-CP-Replica"),
        }
        if not request.get("stream"):
            time.sleep(float(request.get("sleep", 0)))
            return self._json(200, seen)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("X-Request-Id", self.headers.get("X-Request-Id", "stub-made"))
        self.end_headers()
        try:
            for index in range(int(request.get("chunks", 3))):
                payload = json.dumps({**seen, "index": index, "sent_at": time.time()})
                data = f"data: {payload}\n\n".encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()
                time.sleep(float(request.get("delay", 0.2)))
            done = b"data: [DONE]\n\n"
            self.wfile.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
        except OSError:
            event("cancelled")
            self.close_connection = True


server = ThreadingHTTPServer((args.host, args.port), Handler)
server.daemon_threads = True


def on_sigterm(*_):
    with lock:
        state["draining"] = True
        if state["running"] == 0:
            drained.set()


signal.signal(signal.SIGTERM, on_sigterm)
threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
print(f"READY {server.server_address[1]}", flush=True)
drained.wait()
event("drained")
server.shutdown()
sys.exit(0)
