"""The serve node's HTTP front: authenticate, rate-limit, pick a replica, proxy, stream.

    POST /p/<project>/<deployment>/v1/completions
    POST /p/<project>/<deployment>/v1/chat/completions
    POST /p/<project>/<deployment>/v1/images/generations
    GET  /p/<project>/<deployment>/v1/models
    GET  /healthz   (the node is alive; no auth)
    GET  /readyz    (the node has synced with the platform at least once)

Who may call:
- a client with `Authorization: Bearer cp_...`: the token's sha256 goes to the platform's
  authorize endpoint (verdicts cached for their ttl), then the per-token rate limit;
- the platform itself (the playground) with `Authorization: Bearer <node secret>` and
  `X-CP-Caller`: no authorize, no rate limit;
- another node's front with `X-CP-Internal: <node secret>` and `X-CP-Replica`: served on
  that local replica only (the sending front authenticated the client already).

Client-sent X-CP-* headers are never forwarded: the front builds the upstream headers
itself. Each request gets a new X-Request-Id, sent to the replica and echoed back.

Retries: a request is retried on another replica only while it had not started (the
connection failed before any response byte, or the replica answered 503
`replica_draining`); once response bytes reached the client it never is.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
import re
import secrets
import socket
import sys
import threading
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.serve.node import Node
from workers.serve.protocol import (
    CALLER_HEADER,
    INTERNAL_SECRET_HEADER,
    REPLICA_HEADER,
    REQUEST_ID_HEADER,
    Caller,
    deployment_key,
    to_dict,
)
from workers.serve.proxy import FrontError, ProxyMixin, Target, UpstreamPool, error_body
from workers.serve.ratelimit import RateLimiter

logger = logging.getLogger("workers.serve.front")

MAX_BODY_BYTES = 1 << 20
DISCARD_LIMIT = 16 << 20
AUTH_RETRY_AFTER = 5
NO_REPLICA_RETRY_AFTER = 2
_PATH = re.compile(
    r"^/p/([^/]+)/([^/]+)/v1/(completions|chat/completions|images/generations|models)$"
)
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")


class FrontServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def __init__(self, address: tuple[str, int], node: Node, *, internal_secret: str):
        self.node = node
        self.internal_secret = internal_secret
        self.pool = UpstreamPool()
        self.limiter = RateLimiter()
        self._in_flight: dict[str, int] = {}
        self._in_flight_lock = threading.Lock()
        super().__init__(address, FrontHandler)

    def in_flight(self, replica_id: str, delta: int) -> None:
        with self._in_flight_lock:
            count = self._in_flight.get(replica_id, 0) + delta
            if count > 0:
                self._in_flight[replica_id] = count
            else:
                self._in_flight.pop(replica_id, None)

    def pick(self, key: str, exclude: set[str]) -> Target | None:
        """The deployment's replica with the fewest of this front's requests in flight."""
        candidates = [
            Target(replica_id, "127.0.0.1", port, remote=False)
            for replica_id, port in self.node.supervisor.ready(key)
            if replica_id not in exclude
        ]
        local_ids = {t.replica_id for t in candidates}
        for route in self.node.remote_routes(key):
            if route.replica_id in exclude or route.replica_id in local_ids:
                continue
            if self.node.supervisor.replica(route.replica_id) is not None:
                continue  # ours but not ready: the platform's view lags behind
            parsed = urllib.parse.urlsplit(route.node_url)
            if not parsed.hostname:
                continue
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            candidates.append(Target(route.replica_id, parsed.hostname, port, remote=True))
        if not candidates:
            return None
        with self._in_flight_lock:
            load = {t.replica_id: self._in_flight.get(t.replica_id, 0) for t in candidates}
        fewest = min(load.values())
        # Local replicas first among equals: no extra hop.
        best = [t for t in candidates if load[t.replica_id] == fewest]
        local = [t for t in best if not t.remote]
        return random.choice(local or best)

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up between requests is normal, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            logger.debug("connection from %s: %r", client_address, error)
            return
        logger.exception("connection from %s failed", client_address)

    def server_close(self) -> None:
        super().server_close()
        self.pool.close()


class FrontHandler(ProxyMixin, BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "cp-serve"
    sys_version = ""
    # An idle keep-alive connection is closed after this long.
    timeout = 120
    server: FrontServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The stdlib's own errors (a malformed request line, headers too long) in our shape."""
        self.close_connection = True
        data = error_body(code, "bad_request" if code < 500 else "server_error", message or "")
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(data)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    # -- entry points ------------------------------------------------------------------

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def _dispatch(self, method: str) -> None:
        self._body_read = False
        self._responded = False
        self.request_id = uuid.uuid4().hex
        path = urllib.parse.urlsplit(self.path).path
        try:
            if path == "/healthz":
                self._only(method, "GET")
                self._send_json(200, {"ok": True, "node": self.server.node.name})
                return
            if path == "/readyz":
                self._only(method, "GET")
                node = self.server.node
                if not node.has_synced:
                    raise FrontError(
                        503,
                        "not_ready",
                        "the node has not synced with the platform yet",
                        retry_after=1,
                    )
                self._send_json(200, {"ready": True, "platform_reachable": node.platform_reachable})
                return
            match = _PATH.match(path)
            if match is None:
                raise FrontError(404, "not_found", f"no such endpoint: {path}")
            project, deployment, endpoint = (urllib.parse.unquote(g) for g in match.groups())
            self._only(method, "GET" if endpoint == "models" else "POST")
            self._serve(deployment_key(project, deployment), project, endpoint)
        except FrontError as error:
            if self._responded:
                self.close_connection = True
            else:
                self._send_error(error)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception:
            logger.exception("%s %s failed", method, path)
            self.close_connection = True
            if not self._responded:
                self._send_error(
                    FrontError(500, "internal_error", "the serve node failed; see its log")
                )

    def _only(self, method: str, allowed: str) -> None:
        if method != allowed:
            raise FrontError(405, "method_not_allowed", f"use {allowed} here")

    # -- one API request ---------------------------------------------------------------

    def _serve(self, key: str, project: str, endpoint: str) -> None:
        server = self.server
        node = server.node
        hop_replica = self._internal_hop()
        if hop_replica is not None:
            request_id = self.headers.get(REQUEST_ID_HEADER, "")
            if _REQUEST_ID.match(request_id):
                self.request_id = request_id
            caller = self.headers.get(CALLER_HEADER, "")
            body = self._read_json_body()
            port = node.supervisor.ready_port(hop_replica)
            if port is None:
                # The sending front retries elsewhere: this request had not started.
                raise FrontError(
                    503, "replica_draining", f"replica {hop_replica} is not ready here"
                )
            target = Target(hop_replica, "127.0.0.1", port, remote=False)
            if not self._forward(target, key, endpoint, body, caller):
                raise FrontError(
                    503, "replica_draining", f"replica {hop_replica} is not ready here"
                )
            return

        caller = self._authenticate(key)
        info = node.deployment(key)
        if info is None:
            if not node.has_synced:
                raise FrontError(
                    503,
                    "no_replica",
                    "the node is starting; try again",
                    retry_after=NO_REPLICA_RETRY_AFTER,
                )
            raise FrontError(404, "deployment_not_found", f"no deployment {key}")
        if info.state != "running":
            reason = f": {info.reason}" if info.reason else ""
            raise FrontError(503, "deployment_stopped", f"deployment {key} is stopped{reason}")
        if endpoint == "models":
            # The name the replica gives in its answers' `model` ("<model>:v<version>").
            served = info.model if info.version is None else f"{info.model}:v{info.version}"
            listed = {"id": served, "object": "model", "created": 0, "owned_by": project}
            self._send_json(200, {"object": "list", "data": [listed]})
            return
        body = self._read_json_body()
        caller_json = json.dumps(to_dict(caller))
        tried: set[str] = set()
        while True:
            target = server.pick(key, tried)
            if target is None:
                raise FrontError(
                    503,
                    "no_replica",
                    f"no replica of {key} is ready; try again",
                    retry_after=NO_REPLICA_RETRY_AFTER,
                )
            if self._forward(target, key, endpoint, body, caller_json):
                return
            tried.add(target.replica_id)

    def _internal_hop(self) -> str | None:
        """The replica id when another node's front sends this request, else None.

        Without the node secret the X-CP-* headers are a client's: ignored, like all of
        them (the request is then authenticated as any other)."""
        secret = self.headers.get(INTERNAL_SECRET_HEADER)
        if not secret:
            return None
        if not hmac.compare_digest(secret.encode(), self.server.node.node_secret.encode()):
            return None
        replica_id = self.headers.get(REPLICA_HEADER, "")
        if not replica_id:
            raise FrontError(400, "invalid_header", f"{REPLICA_HEADER} is required")
        return replica_id

    def _authenticate(self, key: str) -> Caller:
        node = self.server.node
        header = self.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise FrontError(401, "not_authenticated", "send Authorization: Bearer <token>")
        if hmac.compare_digest(token.encode(), node.node_secret.encode()):
            return self._platform_caller()
        token_sha256 = hashlib.sha256(token.encode()).hexdigest()
        verdict = node.authorize(token_sha256, key)
        if verdict is None:
            raise FrontError(
                503,
                "auth_unavailable",
                "cannot check the token now; try again",
                retry_after=AUTH_RETRY_AFTER,
            )
        if not verdict.allowed:
            status = verdict.status if verdict.status in (401, 403, 404) else 403
            code = verdict.code or {401: "authentication_failed", 404: "deployment_not_found"}.get(
                status, "permission_denied"
            )
            raise FrontError(status, code, verdict.message or "not allowed")
        retry_after = self.server.limiter.take((token_sha256, key), verdict.rate_limit_per_minute)
        if retry_after > 0:
            raise FrontError(
                429,
                "rate_limited",
                f"over {verdict.rate_limit_per_minute} requests a minute for this token",
                retry_after=retry_after,
            )
        return verdict.caller or Caller(token_id=None, user_id=None)

    def _platform_caller(self) -> Caller:
        raw = self.headers.get(CALLER_HEADER, "")
        try:
            data = json.loads(raw)
            caller = Caller(
                token_id=data.get("token_id"),
                user_id=data.get("user_id"),
                username=str(data.get("username", "")),
            )
        except (ValueError, AttributeError, TypeError):
            raise FrontError(
                400, "invalid_header", f"{CALLER_HEADER} must be a JSON caller"
            ) from None
        return caller

    def _read_json_body(self) -> bytes:
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            body = self._read_chunked()
        else:
            raw_length = self.headers.get("Content-Length")
            if raw_length is None:
                raise FrontError(411, "length_required", "send Content-Length (a JSON body)")
            try:
                length = int(raw_length)
            except ValueError:
                self.close_connection = True
                raise FrontError(400, "invalid_header", "Content-Length is not a number") from None
            if length > MAX_BODY_BYTES:
                self._discard(length)
                raise FrontError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
            body = self.rfile.read(length) if length > 0 else b""
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise FrontError(400, "invalid_json", "the body is not valid JSON") from None
        if not isinstance(data, dict):
            raise FrontError(400, "invalid_json", "the body must be a JSON object")
        return body

    def _read_chunked(self) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                self.close_connection = True
                raise FrontError(400, "invalid_body", "bad chunked encoding") from None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            total += size
            if total > MAX_BODY_BYTES:
                self.close_connection = True
                raise FrontError(413, "body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
            parts.append(self.rfile.read(size))
            self.rfile.readline(1024)

    # -- proxying ----------------------------------------------------------------------

    # -- answers the front makes itself ------------------------------------------------

    def _send_json(
        self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None
    ) -> None:
        self._finish_body()
        data = json.dumps(payload).encode()
        self._responded = True
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(REQUEST_ID_HEADER, self.request_id)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: FrontError) -> None:
        if error.status >= 500 and error.code not in ("no_replica", "replica_draining"):
            logger.warning(
                "%s %s -> %d %s: %s",
                self.command,
                self.path,
                error.status,
                error.code,
                error.message,
            )
        self._finish_body()
        data = error_body(error.status, error.code, error.message)
        self._responded = True
        try:
            self.send_response(error.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header(REQUEST_ID_HEADER, self.request_id)
            if error.retry_after is not None:
                self.send_header("Retry-After", str(max(1, math.ceil(error.retry_after))))
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _finish_body(self) -> None:
        """Read an unread request body, so the next request on the connection parses."""
        if self._body_read:
            return
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length != 0:
            self._discard(length)

    def _discard(self, length: int) -> None:
        """Read and drop a body we will not use: the client then reads our answer instead
        of failing on a write we never read. Past DISCARD_LIMIT, close the connection."""
        if not 0 < length <= DISCARD_LIMIT:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 1 << 16))
            if not chunk:
                self.close_connection = True
                return
            length -= len(chunk)


def new_internal_secret() -> str:
    return secrets.token_urlsafe(32)
