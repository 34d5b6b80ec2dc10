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
import http.client
import json
import logging
import math
import random
import re
import secrets
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from workers.serve.node import Node
from workers.serve.protocol import (
    CALLER_HEADER,
    INTERNAL_SECRET_HEADER,
    REPLICA_HEADER,
    REQUEST_ID_HEADER,
    SUBJECT_HEADER,
    Caller,
    deployment_key,
    to_dict,
)
from workers.serve.ratelimit import RateLimiter

logger = logging.getLogger("workers.serve.front")

MAX_BODY_BYTES = 1 << 20
DISCARD_LIMIT = 16 << 20
CONNECT_TIMEOUT = 2.0
# A long generation (or a long queue) may keep a stream silent for a while.
UPSTREAM_READ_TIMEOUT = 600.0
AUTH_RETRY_AFTER = 5
NO_REPLICA_RETRY_AFTER = 2
_PATH = re.compile(
    r"^/p/([^/]+)/([^/]+)/v1/(completions|chat/completions|images/generations|models)$"
)
_REQUEST_ID = re.compile(r"^[0-9a-f]{32}$")
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    411: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}
# Hop-by-hop or ours to set: never copied from a replica's answer.
_DROP_RESPONSE_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "server",
    "date",
    REQUEST_ID_HEADER.lower(),
}


class FrontError(Exception):
    def __init__(self, status: int, code: str, message: str, *, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after


def error_body(status: int, code: str, message: str) -> bytes:
    kind = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    error = {"status": status, "code": code, "message": message, "type": kind, "param": None}
    return json.dumps({"error": error}).encode()


class _UpstreamConnection(http.client.HTTPConnection):
    """A short connect timeout, a long read timeout, and no Nagle delay."""

    def connect(self) -> None:
        self.sock = socket.create_connection((self.host, self.port), CONNECT_TIMEOUT)
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class UpstreamPool:
    """Idle keep-alive connections per (host, port); a thread takes one for one request."""

    MAX_IDLE_PER_HOST = 32
    # Under the fronts' own keep-alive timeout (FrontHandler.timeout), so a pooled
    # connection to another node is dropped here before that node drops it.
    MAX_IDLE_SECONDS = 60.0

    def __init__(self, read_timeout: float = UPSTREAM_READ_TIMEOUT):
        self._idle: dict[tuple[str, int], list[tuple[_UpstreamConnection, float]]] = {}
        self._lock = threading.Lock()
        self._read_timeout = read_timeout

    def get(self, host: str, port: int) -> tuple[_UpstreamConnection, bool]:
        now = time.monotonic()
        stale = []
        found = None
        with self._lock:
            idle = self._idle.get((host, port), [])
            while idle:
                connection, since = idle.pop()
                if now - since < self.MAX_IDLE_SECONDS:
                    found = connection
                    break
                stale.append(connection)
        for connection in stale:
            connection.close()
        if found is not None:
            return found, True
        return _UpstreamConnection(host, port, timeout=self._read_timeout), False

    def put(self, host: str, port: int, connection: _UpstreamConnection) -> None:
        with self._lock:
            idle = self._idle.setdefault((host, port), [])
            if len(idle) < self.MAX_IDLE_PER_HOST:
                idle.append((connection, time.monotonic()))
                return
        connection.close()

    def close(self) -> None:
        with self._lock:
            for idle in self._idle.values():
                for connection, _since in idle:
                    connection.close()
            self._idle.clear()


@dataclass(frozen=True)
class Target:
    replica_id: str
    host: str
    port: int
    remote: bool  # another node's front (X-CP-Replica) rather than a local replica


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

    def server_close(self) -> None:
        super().server_close()
        self.pool.close()


class FrontHandler(BaseHTTPRequestHandler):
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
            self._send_json(
                200,
                {
                    "object": "list",
                    "data": [
                        {"id": info.model, "object": "model", "created": 0, "owned_by": project}
                    ],
                },
            )
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

    def _forward(self, target: Target, key: str, endpoint: str, body: bytes, caller: str) -> bool:
        """Send the request to one replica; False when it had not started there (retry)."""
        server = self.server
        headers = {
            "Content-Type": "application/json",
            "Accept": self.headers.get("Accept", "*/*"),
            CALLER_HEADER: caller,
            REQUEST_ID_HEADER: self.request_id,
        }
        subject = self.headers.get(SUBJECT_HEADER)
        if subject is not None:
            headers[SUBJECT_HEADER] = subject
        if target.remote:
            headers[INTERNAL_SECRET_HEADER] = server.node.node_secret
            headers[REPLICA_HEADER] = target.replica_id
            path = self.path.split("?", 1)[0]
        else:
            headers[INTERNAL_SECRET_HEADER] = server.internal_secret
            path = f"/v1/{endpoint}"
        server.in_flight(target.replica_id, +1)
        try:
            started = self._send_upstream(target, path, body, headers)
            if started is None:
                return False
            connection, response = started
            if response.status == 503 and not _is_event_stream(response):
                data = self._read_upstream(response, connection, target)
                if _error_code(data) == "replica_draining":
                    self._release(response, connection, target)
                    return False
                self._relay_whole(response, data)
                self._release(response, connection, target)
                return True
            if _is_event_stream(response) or response.getheader("Content-Length") is None:
                self._relay_stream(response, connection, target)
            else:
                data = self._read_upstream(response, connection, target)
                self._relay_whole(response, data)
                self._release(response, connection, target)
            return True
        finally:
            server.in_flight(target.replica_id, -1)

    def _send_upstream(self, target: Target, path: str, body: bytes, headers: dict[str, str]):
        """(connection, response), or None when the request did not start there."""
        while True:
            connection, reused = self.server.pool.get(target.host, target.port)
            try:
                if connection.sock is None:
                    connection.connect()
            except OSError as exc:
                connection.close()
                logger.info(
                    "replica %s: cannot connect (%s); trying another", target.replica_id, exc
                )
                return None
            try:
                connection.request("POST", path, body=body, headers=headers)
                _quick_ack(connection)
                return connection, connection.getresponse()
            except TimeoutError:
                connection.close()
                raise FrontError(
                    504, "replica_timeout", f"replica {target.replica_id} did not answer"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                connection.close()
                if reused:
                    continue  # the pooled connection had gone stale: a new one, same replica
                logger.info(
                    "replica %s: request not started (%s); trying another", target.replica_id, exc
                )
                return None

    def _read_upstream(self, response, connection, target: Target) -> bytes:
        try:
            return response.read()
        except (OSError, http.client.HTTPException) as exc:
            connection.close()
            raise FrontError(
                502, "replica_failed", f"replica {target.replica_id} failed mid-answer: {exc}"
            ) from None

    def _release(self, response, connection, target: Target) -> None:
        if response.will_close or not response.isclosed():
            connection.close()
        else:
            self.server.pool.put(target.host, target.port, connection)

    def _start_response(self, response, *, length: int | None) -> None:
        self._responded = True
        self.send_response(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in _DROP_RESPONSE_HEADERS:
                self.send_header(name, value)
        self.send_header(REQUEST_ID_HEADER, self.request_id)
        if length is not None:
            self.send_header("Content-Length", str(length))

    def _relay_whole(self, response, data: bytes) -> None:
        self._start_response(response, length=len(data))
        self.end_headers()
        self.wfile.write(data)

    def _relay_stream(self, response, connection, target: Target) -> None:
        """Each chunk to the client as the replica writes it; never buffered whole."""
        chunked = self.request_version != "HTTP/1.0"
        self._start_response(response, length=None)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        while True:
            try:
                _quick_ack(connection)
                chunk = response.read1(65536)
            except (OSError, http.client.HTTPException) as exc:
                # Bytes already went out: no retry, no error body; the client sees a cut stream.
                logger.warning("replica %s failed mid-stream: %s", target.replica_id, exc)
                connection.close()
                self.close_connection = True
                return
            try:
                if not chunk:
                    if chunked:
                        self.wfile.write(b"0\r\n\r\n")
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            except OSError:
                # The client went away: closing the upstream connection tells the replica
                # to cancel the generation.
                connection.close()
                self.close_connection = True
                return
        self._release(response, connection, target)

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


def _quick_ack(connection: http.client.HTTPConnection) -> None:
    """ACK the replica's answer at once instead of after the kernel's delayed-ACK wait.

    A replica that writes its headers and its body in two sends with Nagle on (the stdlib
    http.server does) holds the body until the headers are ACKed; a delayed ACK makes
    that ~40 ms per request. Linux only; the flag is not sticky, so set per request.
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    if quickack is not None and connection.sock is not None:
        try:
            connection.sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)
        except OSError:
            pass


def _is_event_stream(response) -> bool:
    return "text/event-stream" in (response.getheader("Content-Type") or "")


def _error_code(data: bytes) -> str:
    try:
        error = json.loads(data).get("error") or {}
        return str(error.get("code", ""))
    except (ValueError, AttributeError):
        return ""


def new_internal_secret() -> str:
    return secrets.token_urlsafe(32)
