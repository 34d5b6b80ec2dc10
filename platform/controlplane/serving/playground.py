"""The dashboard playground's client: one trusted platform call to a serve node's front,
relayed to the browser as server-sent events.

The page already checked the user's role (`Action.RUN`), so the call skips the node's
token check: `Authorization: Bearer <SERVE_NODE_SECRET>` plus `X-CP-Caller` naming the
user, whom the replica archives as the caller (workers/serve/protocol.py). The node's
answer is streamed through as it arrives (a sync worker is held for the length of one
answer, as any streamed download holds one):

    data: <each chunk of the node, as the node sent it>
    event: request     data: {"request_id": "..."}     (first, from X-Request-Id)
    event: guardrails  data: <x_guardrails of a chunk>  (when the replica sent them)
    event: error       data: {"error": {...}}           (the node's error, or a broken stream)
    event: done        data: {}

An error before the first byte (the node refused the request, no replica, the node is
unreachable) is not streamed: the view answers it in the JSON error shape with its status.
Standard library HTTP only: the web process needs no client library for one POST.
"""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings

from workers.serve.protocol import BASE_PATH, CALLER_HEADER, REQUEST_ID_HEADER, Caller, to_dict

# gunicorn kills a sync worker that holds one request longer than its timeout
# (GUNICORN_TIMEOUT, 120 s by default), so a playground answer ends well before that: a
# stream stops after MAX_STREAM_SECONDS (worst case plus one READ_TIMEOUT of silence), an
# image call waits IMAGE_TIMEOUT. Longer work is for the API, from a client.
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0  # longest silence between two chunks of a stream
MAX_STREAM_SECONDS = 80.0
IMAGE_TIMEOUT = 100.0
MAX_ERROR_BODY = 64 * 1024


class PlaygroundError(Exception):
    """A refusal the page shows as it is: status, code and message of the error shape."""

    def __init__(self, status: int, code: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.fields = status, code, message, fields

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"status": self.status, "code": self.code, "message": self.message}
        if self.fields:
            error["fields"] = self.fields
        return {"error": error}


def node_secret() -> str:
    secret = getattr(settings, "SERVE_NODE_SECRET", "")
    if not secret:
        raise PlaygroundError(
            503,
            "not_configured",
            "The platform has no SERVE_NODE_SECRET, so the playground cannot call the serve "
            "nodes; set it (the same value as the nodes') and restart the web process.",
        )
    return secret


@dataclass
class NodeCall:
    """One POST to `<node_url>/p/<project slug>/<deployment>/v1<endpoint>`."""

    node_url: str
    project_slug: str
    deployment: str
    user_id: int
    username: str
    secret: str

    def _connection(self) -> tuple[http.client.HTTPConnection, str]:
        # A node may report "host:port" without a scheme: plain HTTP inside the cluster.
        url = urlsplit(self.node_url if "://" in self.node_url else f"http://{self.node_url}")
        if url.scheme not in ("http", "https") or not url.hostname:
            raise PlaygroundError(
                502, "node_unreachable", f"the serve node's URL {self.node_url!r} is not http(s)"
            )
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.hostname, url.port, timeout=CONNECT_TIMEOUT)
        base = url.path.rstrip("/") + BASE_PATH.format(
            project=self.project_slug, deployment=self.deployment
        )
        return connection, base

    def post(
        self, endpoint: str, body: dict, read_timeout: float = READ_TIMEOUT
    ) -> http.client.HTTPResponse:
        """Send the request; the answer's status and headers are read, its body is not.
        A node's refusal (any status but 200) is raised as that PlaygroundError."""
        connection, base = self._connection()
        caller = Caller(token_id=None, user_id=self.user_id, username=self.username)
        headers = {
            "Authorization": f"Bearer {self.secret}",
            CALLER_HEADER: json.dumps(to_dict(caller)),
            "Content-Type": "application/json",
            "Accept": "text/event-stream, application/json",
        }
        try:
            connection.request("POST", base + endpoint, json.dumps(body).encode(), headers)
            if connection.sock is not None:
                connection.sock.settimeout(read_timeout)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as error:
            connection.close()
            raise PlaygroundError(
                502,
                "node_unreachable",
                f"the serve node at {self.node_url} did not answer: {error}",
            ) from None
        if response.status != 200:
            try:
                raise _node_error(response)
            finally:
                connection.close()
        return response


def _node_error(response: http.client.HTTPResponse) -> PlaygroundError:
    """The node's JSON error shape as a PlaygroundError, or a 502 saying what came back."""
    raw = response.read(MAX_ERROR_BODY)
    try:
        error = json.loads(raw)["error"]
        return PlaygroundError(
            int(error.get("status", response.status)),
            str(error.get("code", "node_error")),
            str(error.get("message", "")) or f"the serve node answered {response.status}",
            error.get("fields") if isinstance(error.get("fields"), dict) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        text = raw.decode("utf-8", "replace").strip()[:300]
        return PlaygroundError(
            502, "bad_gateway", f"the serve node answered {response.status}: {text or 'no body'}"
        )


def request_id_of(response: http.client.HTTPResponse) -> str:
    return response.getheader(REQUEST_ID_HEADER, "") or ""


def call_json(call: NodeCall, endpoint: str, body: dict) -> tuple[dict, str]:
    """A non-streamed call (images): the answer's JSON and its request id."""
    response = call.post(endpoint, body, read_timeout=IMAGE_TIMEOUT)
    try:
        answer = json.loads(response.read())
    except (ValueError, OSError, http.client.HTTPException) as error:
        raise PlaygroundError(
            502, "bad_gateway", f"the serve node's answer could not be read: {error}"
        ) from None
    finally:
        response.close()
    return answer, request_id_of(response)


def event(name: str, data: dict) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def sse_data(response: http.client.HTTPResponse) -> Iterator[str]:
    """The `data` of each server-sent event, as the events arrive (multi-line data joined)."""
    lines: list[str] = []
    while True:
        raw = response.readline()
        if not raw:
            break
        line = raw.decode("utf-8").rstrip("\r\n")
        if line == "":
            if lines:
                yield "\n".join(lines)
                lines = []
        elif line.startswith("data:"):
            lines.append(line[5:].removeprefix(" "))
        # Comments (": keep-alive"), `event:`, `id:` and `retry:` lines carry nothing here.
    if lines:
        yield "\n".join(lines)


def relay(response: http.client.HTTPResponse) -> Iterator[bytes]:
    """The node's stream as the browser gets it (see the module docstring)."""
    request_id = request_id_of(response)
    if request_id:
        yield event("request", {"request_id": request_id})
    finished = False
    deadline = time.monotonic() + MAX_STREAM_SECONDS
    try:
        for data in sse_data(response):
            if time.monotonic() > deadline:
                yield event(
                    "error",
                    _broken(
                        f"the playground stops an answer after {MAX_STREAM_SECONDS:g} s; "
                        "ask for fewer tokens, or call the API from a client"
                    ),
                )
                return
            if data == "[DONE]":
                finished = True
                break
            try:
                chunk = json.loads(data)
            except ValueError:
                yield event(
                    "error", _broken(f"the serve node sent a chunk that is not JSON: {data[:80]!r}")
                )
                return
            if isinstance(chunk, dict) and "error" in chunk:
                yield event("error", chunk)
                return
            yield f"data: {data}\n\n".encode()
            if isinstance(chunk, dict):
                if chunk.get("x_guardrails"):
                    yield event("guardrails", chunk["x_guardrails"])
                finished = finished or any(
                    c.get("finish_reason") for c in chunk.get("choices", []) if isinstance(c, dict)
                )
    except (OSError, http.client.HTTPException, UnicodeDecodeError) as error:
        yield event("error", _broken(f"the serve node's stream broke off: {error}"))
        return
    finally:
        response.close()
    if not finished:
        yield event("error", _broken("the serve node's stream ended before the answer did"))
        return
    yield event("done", {})


def _broken(message: str) -> dict:
    return PlaygroundError(502, "stream_broken", message).body()
