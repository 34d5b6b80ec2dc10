"""The front's side of a request to a replica: the connection pool, the forwarding and
the streaming, and the error shape every answer the front makes itself has.

A request goes to a local replica (`POST /v1/<endpoint>`, X-CP-Internal: the node's
internal secret) or to another node's front (the client's path, X-CP-Internal: the node
secret, X-CP-Replica: the replica id). `_forward` answers False while the request had
not started there (no connection, a connection lost before any response byte, or a 503
`replica_draining`): the caller then tries another replica. Once bytes went to the client
a request is never retried.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from dataclasses import dataclass

from workers.serve.protocol import (
    CALLER_HEADER,
    INTERNAL_SECRET_HEADER,
    REPLICA_HEADER,
    REQUEST_ID_HEADER,
    SUBJECT_HEADER,
    error_shape,
)

logger = logging.getLogger("workers.serve.front")

CONNECT_TIMEOUT = 2.0
# A long generation (or a long queue) may keep a stream silent for a while.
UPSTREAM_READ_TIMEOUT = 600.0
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
    return json.dumps(error_shape(status, code, message)).encode()


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


class ProxyMixin:
    """FrontHandler's forwarding; `self` is the handler (headers, wfile, server, request_id)."""

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
