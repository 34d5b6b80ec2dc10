"""A replica: one loaded model behind an OpenAI-compatible HTTP server (a serve node's child).

    python -m workers.serve.replica --spec SPEC.json --host 127.0.0.1 --port 0 --node NODE

Environment: ``CP_SERVE_SECRET`` (every model request must carry it in X-CP-Internal),
the object store's (the model files) and the broker's (the archive index). Prints
``READY <port>`` once the model is loaded and the server listens, or ``ERROR <message>``
and exits 3 when it cannot load. SIGTERM drains: new requests get 503
``replica_draining``, in-flight ones finish, the engine stops, the archive is flushed, exit 0.

Endpoints: POST /v1/completions, /v1/chat/completions (text models),
/v1/images/generations (image models); GET /health (no secret needed: it tells only load).
Every answer carries the guardrail decisions as ``x_guardrails`` (the archive record's
``guardrails``: {"input": report, "output": report}): a top-level field of a JSON answer,
and a field of a stream's last chunk before ``data: [DONE]`` (OpenAI clients keep unknown
fields in ``model_extra``; the dashboard's playground shows them).
Request shapes and the field policy: workers/serve/openai_api.py; guardrails:
workers/serve/guardrails.py.

What is archived (one record per request, handed to the archiver in one piece after the
answer's last byte): every request that reached the model or a guardrail's verdict: status
``ok``, ``flagged``, ``refused`` (a guardrail; the record keeps the redacted input) and
``error`` (the engine failed, or the client went away: the engine request is cancelled and
its slot freed). Requests turned away before that are not archived, since nothing was
generated and no guardrail decided: 403 (not from a front), 404/405, 413, malformed JSON or
parameters (400), a prompt over the context, 429 queue full, 503 draining or engine down.
A spec with ``archive: false`` (a deployment created without archiving) archives nothing:
no archiver is started, and answers are the same, ``x_guardrails`` included.
"""

from __future__ import annotations

import argparse
import base64
import hmac
import json
import logging
import math
import os
import random
import select
import signal
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from engine.serve.params import (
    Cancelled,
    CompletionParams,
    EngineStopped,
    PromptTooLong,
    QueueFull,
    RequestFailed,
    ServeError,
)
from workers.serve import openai_api as api
from workers.serve.guardrails import GuardrailRefused, Guardrails, empty_report
from workers.serve.openai_api import ApiError
from workers.serve.protocol import (
    CALLER_HEADER,
    INTERNAL_SECRET_HEADER,
    REQUEST_ID_HEADER,
    SUBJECT_HEADER,
    Endpoint,
    RecordStatus,
    ReplicaSpec,
)

log = logging.getLogger("workers.serve.replica")

MAX_BODY_BYTES = 1 << 20  # a prompt is at most a context long; 1 MiB is generous
LOAD_FAILED_EXIT = 3
ROUTES = {
    "/v1/completions": Endpoint.COMPLETIONS,
    "/v1/chat/completions": Endpoint.CHAT,
    "/v1/images/generations": Endpoint.IMAGES,
}
_REQUEST_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")


class ClientGone(Exception):
    """The client closed the connection before the answer was complete."""


class _Context:
    """One request's bookkeeping for its archive record."""

    def __init__(self, request_id: str, endpoint: Endpoint, caller: dict, subject: str | None):
        self.id = request_id
        self.time = time.time()
        self.started = time.perf_counter()
        self.endpoint = endpoint
        self.caller = caller
        self.subject = subject
        self.stream = False
        self.request: dict[str, Any] | None = None
        self.guardrails = {"input": empty_report(), "output": empty_report()}


class ReplicaServer:
    """The HTTP server of one model. ``model`` is a TextEngine (started here if it is not
    yet) or a DigitImageModel; ``archiver`` anything with ``record(dict)`` and
    ``close(timeout)``."""

    def __init__(
        self,
        spec: ReplicaSpec,
        model,
        archiver,
        secret: str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        from engine.serve import TextEngine

        if not secret:
            raise ValueError("a replica needs a secret (CP_SERVE_SECRET)")
        self.spec = spec
        self.engine = model if isinstance(model, TextEngine) else None
        self.images = None if self.engine is not None else model
        self.archiver = archiver
        self.secret = secret.encode()
        self.guardrails = Guardrails(spec.guardrails, encodable=_encodable_by(self.engine))
        self.model_name = f"{spec.model}:v{spec.version}"
        self.draining = False
        self._inflight = 0
        self._lock = threading.Condition()
        self._image_lock = threading.Lock()  # one image batch at a time: it fills the cores
        self._image_waiting = 0
        self._recent_image_seconds = 1.0
        # Cumulative over the process's life, reported in its health: the platform turns
        # them into hourly usage (finops), whether or not the deployment archives.
        self.counters = {"requests": 0, "errors": 0, "tokens_in": 0, "tokens_out": 0}
        self.httpd = _HTTPServer((host, port), _Handler)
        self.httpd.replica = self
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{self.httpd.server_address[0]}:{self.port}"

    def start(self) -> ReplicaServer:
        if self.engine is not None:
            self.engine.start()  # no-op when the caller started it (thread=False in tests)
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="replica-http", daemon=True
        )
        self._thread.start()
        return self

    def warm_up(self) -> None:
        """One token through the model, so the first client does not pay torch's first call."""
        if self.engine is not None:
            self.engine.complete("", CompletionParams(max_tokens=1, temperature=0.0))

    def health(self) -> dict[str, Any]:
        if self.engine is not None:
            health = self.engine.health()
        else:
            health = {"up": True, "running": int(self._image_lock.locked()), "waiting": 0}
            health["waiting"] = max(0, self._image_waiting - health["running"])
        return {**health, "draining": self.draining, "inflight": self._inflight, **self.counters}

    def drain(self, timeout: float = 60.0) -> None:
        """Take nothing new, let what is in flight finish, stop the engine, flush the archive."""
        with self._lock:
            self.draining = True
            deadline = time.monotonic() + timeout
            while self._inflight and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
        if self.engine is not None:
            self.engine.stop(timeout=timeout, drain=True)
        try:
            self.archiver.close(timeout)
        except Exception:  # noqa: BLE001 - the drain must finish
            log.exception("the archiver did not close cleanly")
        self.httpd.shutdown()
        self.httpd.server_close()

    close = drain

    # -- request accounting -------------------------------------------------------------
    def enter(self) -> None:
        with self._lock:
            if self.draining:
                raise ApiError(
                    503,
                    "replica_draining",
                    "this replica is shutting down; retry on another",
                    headers={"Retry-After": "1"},
                )
            self._inflight += 1
            self.counters["requests"] += 1

    def leave(self) -> None:
        with self._lock:
            self._inflight -= 1
            self._lock.notify_all()

    def authorized(self, header: str | None) -> bool:
        return header is not None and hmac.compare_digest(header.encode(), self.secret)

    def archive(self, ctx: _Context, status: RecordStatus, **parts: Any) -> None:
        if status == RecordStatus.ERROR:
            self.counters["errors"] += 1
        usage = parts.get("usage") or {}
        with self._lock:  # handler threads finish requests concurrently
            self.counters["tokens_in"] += _count(usage.get("prompt_tokens"))
            self.counters["tokens_out"] += _count(usage.get("completion_tokens"))
        if not self.spec.archive:
            # Checked here, not only by make_archiver: whatever archiver the replica was
            # given, a deployment without archiving must leave no record of a request.
            return
        record = {
            "id": ctx.id,
            "time": ctx.time,
            "endpoint": str(ctx.endpoint),
            "status": str(status),
            "stream": ctx.stream,
            "caller": ctx.caller,
            "subject": ctx.subject,
            "request": ctx.request,
            "response": parts.get("response"),
            "error": parts.get("error"),
            "guardrails": ctx.guardrails,
            "usage": parts.get("usage") or {"prompt_tokens": 0, "completion_tokens": 0},
            "timings": {
                **(parts.get("timings") or {}),
                "total_ms": round((time.perf_counter() - ctx.started) * 1000, 3),
            },
        }
        try:
            self.archiver.record(record)
        except Exception:  # noqa: BLE001 - archiving never fails a request
            log.exception("archiving request %s failed", ctx.id)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    replica: ReplicaServer

    def handle_error(self, request, client_address) -> None:
        """A client that hangs up between requests is normal, not a traceback on stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, ConnectionError | TimeoutError):
            log.debug("connection from %s: %r", client_address, error)
            return
        log.exception("connection from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the front reuses its connections
    disable_nagle_algorithm = True  # small SSE writes must not wait for an ACK
    timeout = 120  # an idle keep-alive connection's thread ends after this
    server: _HTTPServer
    server_version = "cp-replica"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s %s", self.address_string(), format % args)

    # -- plumbing -----------------------------------------------------------------------
    @property
    def replica(self) -> ReplicaServer:
        return self.server.replica

    def _request_id(self) -> str:
        given = self.headers.get(REQUEST_ID_HEADER, "")
        if 0 < len(given) <= 64 and set(given) <= _REQUEST_ID_CHARS:
            return given
        return uuid.uuid4().hex

    def _send_json(self, status: int, body: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header(REQUEST_ID_HEADER, self.request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError) -> None:
        self._send_json(error.status, error.body(), error.headers)

    def _client_gone(self) -> bool:
        """The client closed its end (a readable socket with nothing to read)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- methods ------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
        self.request_id = self._request_id()
        if self.path.split("?")[0] != "/health":
            self.close_connection = True
            self._send_error(ApiError(404, "not_found", f"no such endpoint: GET {self.path}"))
            return
        health = self.replica.health()
        ok = bool(health.get("up")) and not health["draining"]
        self._send_json(200 if ok else 503, health)

    def do_POST(self) -> None:  # noqa: N802
        self.request_id = self._request_id()
        self.streaming = False
        replica = self.replica
        endpoint = ROUTES.get(self.path.split("?")[0])
        try:
            if not replica.authorized(self.headers.get(INTERNAL_SECRET_HEADER)):
                self.close_connection = True  # its body is left unread
                raise ApiError(403, "forbidden", "replicas answer their serve node only")
            body = self._read_body()
            if endpoint is None:
                raise ApiError(404, "not_found", f"no such endpoint: POST {self.path}")
            replica.enter()
        except ApiError as error:
            self._send_error(error)
            return
        try:
            ctx = _Context(self.request_id, endpoint, self._caller(), self._subject())
            if endpoint == Endpoint.IMAGES:
                self._images(ctx, body)
            else:
                self._text(ctx, body, endpoint)
        except ApiError as error:
            self._send_error(error)
        except ClientGone:
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never a traceback to the client
            log.exception("request %s failed", self.request_id)
            self.close_connection = True
            if not self.streaming:  # mid-stream, closing the connection is all we can do
                try:
                    self._send_error(
                        ApiError(500, "internal_error", "the replica failed; see its log")
                    )
                except OSError:
                    pass
        finally:
            replica.leave()

    def do_PUT(self) -> None:  # noqa: N802
        self.request_id = self._request_id()
        self.close_connection = True
        self._send_error(ApiError(405, "method_not_allowed", "use POST (or GET /health)"))

    do_DELETE = do_PATCH = do_PUT

    def _read_body(self) -> dict[str, Any]:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # its body is left unread
            raise ApiError(411, "length_required", "send the body with a Content-Length")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            raise ApiError(
                413, "request_too_large", f"the body must be at most {MAX_BODY_BYTES} bytes"
            )
        return api.parse_json(self.rfile.read(length))

    def _caller(self) -> dict[str, Any]:
        caller = {"token_id": None, "user_id": None, "username": ""}
        raw = self.headers.get(CALLER_HEADER)
        if raw:
            try:
                given = json.loads(raw)
            except ValueError:
                given = None
            if isinstance(given, dict):
                for key in caller:
                    if key in given:
                        caller[key] = given[key]
        return caller

    def _subject(self) -> str | None:
        subject = self.headers.get(SUBJECT_HEADER)
        return subject if subject else None

    # -- text ---------------------------------------------------------------------------
    def _text(self, ctx: _Context, body: dict, endpoint: Endpoint) -> None:
        replica = self.replica
        engine = replica.engine
        if engine is None:
            raise ApiError(
                400,
                "wrong_model_type",
                f"{replica.model_name} generates images; use /v1/images/generations",
            )
        request = api.parse_text_request(body, endpoint)
        ctx.stream = request.stream
        field = "messages" if request.chat else "prompt"
        try:
            texts, ctx.guardrails["input"] = replica.guardrails.check_input(request.texts())
        except GuardrailRefused as refused:
            request.with_texts(refused.texts)
            ctx.request = request.archived()
            ctx.guardrails["input"] = refused.report
            error = ApiError(400, "guardrail_refused", str(refused), param=field)
            replica.archive(ctx, RecordStatus.REFUSED, error=error.summary())
            raise error from None
        request.with_texts(texts)
        ctx.request = request.archived()
        try:
            if request.chat:
                from engine.serve.chat import chat_prompt_ids

                prompt: Any = chat_prompt_ids(request.messages, engine.tokenizer)
                prompt_tokens = len(prompt)
            else:
                prompt, prompt_tokens = request.prompt, 0
            params = request.completion_params(engine.block_size, prompt_tokens)
            submitted = engine.submit(prompt, params)
        except PromptTooLong as error:
            raise ApiError(400, "context_length_exceeded", str(error), param=field) from None
        except QueueFull as error:
            raise ApiError(
                429,
                "queue_full",
                str(error),
                headers={"Retry-After": str(math.ceil(error.retry_after))},
            ) from None
        except EngineStopped as error:
            raise ApiError(
                503,
                "engine_stopped",
                f"the model is not serving: {error}",
                headers={"Retry-After": "1"},
            ) from None
        except ServeError as error:
            raise api.from_serve_error(error) from None
        ident = api.response_id(request, ctx.id)
        created = int(ctx.time)
        try:
            if request.stream:
                self._stream(ctx, request, submitted, ident, created)
            else:
                self._complete(ctx, request, submitted, ident, created)
        except (ApiError, ClientGone):
            raise  # archived where they happened
        except Exception:
            submitted.cancel()  # a bug of ours must not hold a slot
            error = {"status": 500, "code": "internal_error", "message": "the replica failed"}
            replica.archive(ctx, RecordStatus.ERROR, error=error, **_engine_parts(ctx, submitted))
            raise

    def _wait(self, submitted):
        """The engine's result; cancels the request when the client goes away meanwhile."""
        while True:
            try:
                return submitted.result(timeout=0.25)
            except TimeoutError:
                if not submitted.cancelled and self._client_gone():
                    submitted.cancel()

    def _complete(self, ctx: _Context, request, submitted, ident: str, created: int) -> None:
        replica = self.replica
        try:
            result = self._wait(submitted)
        except Cancelled:
            self._archive_gone(ctx, submitted)
            raise ClientGone() from None
        except (EngineStopped, RequestFailed) as error:
            failure = _engine_failure(error)
            replica.archive(
                ctx, RecordStatus.ERROR, error=failure.summary(), **_engine_parts(ctx, submitted)
            )
            raise failure from None
        texts, refused, ctx.guardrails["output"] = replica.guardrails.check_output(
            [c.text for c in result.choices]
        )
        choices = [
            (text, "content_filter" if refused[i] else result.choices[i].finish_reason)
            for i, text in enumerate(texts)
        ]
        usage = api.usage_body(result.prompt_tokens, result.completion_tokens)
        body = api.completion_body(request, ident, created, replica.model_name, choices, usage)
        try:
            self._send_json(200, {**body, "x_guardrails": ctx.guardrails})
        except OSError:
            self._archive_gone(ctx, submitted, response=body)
            raise ClientGone() from None
        replica.archive(
            ctx, _status(ctx, any(refused)), response=body, **_engine_parts(ctx, submitted)
        )

    def _archive_gone(self, ctx: _Context, submitted, response: dict | None = None) -> None:
        error = {"status": 499, "code": "client_disconnected", "message": "the client went away"}
        self.replica.archive(
            ctx, RecordStatus.ERROR, error=error, response=response, **_engine_parts(ctx, submitted)
        )

    # -- streaming ----------------------------------------------------------------------
    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _event(self, payload: dict | str) -> None:
        data = (
            payload
            if isinstance(payload, str)
            else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        )
        self._write_chunk(b"data: " + data.encode() + b"\n\n")

    def _stream(self, ctx: _Context, request, submitted, ident: str, created: int) -> None:
        replica = self.replica
        guard = replica.guardrails
        model = replica.model_name
        n = submitted.params.n
        redactors = [guard.stream_redactor() for _ in range(n)]
        refuse_toxic = guard.config.toxicity == "refuse"
        texts = [""] * n
        reasons: list[str | None] = [None] * n
        filtered = [False] * n
        failure: ApiError | None = None
        # The chunk that ends the last open choice waits for the end of the stream: the
        # output report (PII found, toxicity) is complete only then, and it rides on the
        # last chunk as x_guardrails. A separate chunk without choices would break clients
        # that read chunk.choices[0] unless they asked for include_usage.
        last: dict | None = None

        def finish(index: int, reason: str) -> None:
            nonlocal last
            reasons[index] = reason
            chunk = api.chunk_body(request, ident, created, model, index, None, reason)
            if all(r is not None for r in reasons):
                last = chunk
            else:
                self._event(chunk)

        try:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream; charset=utf-8")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header(REQUEST_ID_HEADER, self.request_id)
            self.end_headers()
            self.streaming = True
            if request.chat:
                for index in range(n):
                    self._event(
                        api.chunk_body(request, ident, created, model, index, "", role=True)
                    )
            try:
                for delta in submitted:
                    i = delta.index
                    if filtered[i]:
                        continue
                    text = delta.text
                    if redactors[i] is not None:
                        text = redactors[i].feed(text)
                        if delta.finish_reason is not None:
                            text += redactors[i].finish()
                    if refuse_toxic and text and guard.toxic(guard.toxicity(texts[i] + text)):
                        filtered[i] = True
                        finish(i, "content_filter")
                        if all(filtered):
                            submitted.cancel()
                            break
                        continue
                    if text:
                        texts[i] += text
                        self._event(api.chunk_body(request, ident, created, model, i, text))
                    if delta.finish_reason is not None:
                        finish(i, delta.finish_reason)
            except Cancelled:
                if not all(filtered):
                    raise
            except (EngineStopped, RequestFailed) as error:
                failure = _engine_failure(error)
                self._event(failure.body())
            self._finish_stream_report(ctx, redactors, texts, filtered)
            usage = _usage(submitted)
            if failure is None:
                if request.include_usage:
                    if last is not None:
                        self._event(last)
                    last = api.usage_chunk(request, ident, created, model, usage)
                elif last is None:  # no choice ended (cannot happen): the report still goes
                    last = api.usage_chunk(request, ident, created, model, usage)
                    last.pop("usage")
                self._event({**last, "x_guardrails": ctx.guardrails})
            self._event("[DONE]")
            self._write_chunk(b"")
        except OSError:  # the client went away mid-stream: free its slot
            submitted.cancel()
            self._finish_stream_report(ctx, redactors, texts, filtered)
            self._archive_gone(ctx, submitted, response=None)
            raise ClientGone() from None
        parts = _engine_parts(ctx, submitted)
        if failure is not None:
            replica.archive(ctx, RecordStatus.ERROR, error=failure.summary(), **parts)
            return
        choices = [(texts[i], reasons[i] or "stop") for i in range(n)]
        body = api.completion_body(request, ident, created, model, choices, usage)
        replica.archive(ctx, _status(ctx, any(filtered)), response=body, **parts)

    def _finish_stream_report(self, ctx: _Context, redactors, texts, filtered) -> None:
        guard = self.replica.guardrails
        report = empty_report()
        found: dict[str, int] = {}
        for redactor in redactors:
            if redactor is not None:
                for kind, count in redactor.found.items():
                    found[kind] = found.get(kind, 0) + count
        report["pii"] = dict(sorted(found.items()))
        if found:
            report["pii_action"] = "redacted"
        if guard.scorer is not None:
            report["toxicity"] = round(max((guard.toxicity(t) for t in texts), default=0.0), 4)
            if any(filtered):
                report["toxicity_action"] = "refused"
            elif guard.toxic(report["toxicity"]):
                report["toxicity_action"] = "flagged"
        ctx.guardrails["output"] = report

    # -- images -------------------------------------------------------------------------
    def _images(self, ctx: _Context, body: dict) -> None:
        replica = self.replica
        images = replica.images
        if images is None:
            raise ApiError(
                400,
                "wrong_model_type",
                f"{replica.model_name} generates text; use /v1/completions or /v1/chat/completions",
            )
        request = api.parse_image_request(body)
        try:
            texts, ctx.guardrails["input"] = replica.guardrails.check_input([request.prompt])
        except GuardrailRefused as refused:
            request.prompt = refused.texts[0]
            ctx.request = request.archived()
            ctx.guardrails["input"] = refused.report
            error = ApiError(400, "guardrail_refused", str(refused), param="prompt")
            replica.archive(ctx, RecordStatus.REFUSED, error=error.summary())
            raise error from None
        request.prompt = texts[0]
        try:
            digit = images.digit(request.prompt)
        except ServeError as error:
            raise ApiError(400, "invalid_value", str(error), param="prompt") from None
        seed = request.seed if request.seed is not None else random.randrange(2**31)
        ctx.request = {**request.archived(), "seed": seed}
        with replica._lock:
            if replica._image_waiting >= replica.spec.max_queue:
                retry = math.ceil(replica._image_waiting * replica._recent_image_seconds)
                raise ApiError(
                    429,
                    "queue_full",
                    f"the request queue is full ({replica._image_waiting} waiting)",
                    headers={"Retry-After": str(max(1, retry))},
                )
            replica._image_waiting += 1
        try:
            with replica._image_lock:
                started = time.perf_counter()
                pngs = images.generate(
                    [digit], n=request.n, guidance=request.guidance, steps=request.steps, seed=seed
                )
                replica._recent_image_seconds = time.perf_counter() - started
        except ServeError as error:
            raise api.from_serve_error(error) from None
        finally:
            with replica._lock:
                replica._image_waiting -= 1
        answer = api.images_body(int(ctx.time), [base64.b64encode(p).decode() for p in pngs])
        try:
            self._send_json(200, {**answer, "x_guardrails": ctx.guardrails})
        except OSError:
            error = {
                "status": 499,
                "code": "client_disconnected",
                "message": "the client went away",
            }
            replica.archive(ctx, RecordStatus.ERROR, error=error, response=answer)
            raise ClientGone() from None
        timings = {"decode_ms": round(replica._recent_image_seconds * 1000, 3)}
        replica.archive(ctx, _status(ctx, False), response=answer, timings=timings)


def _engine_failure(error: ServeError) -> ApiError:
    """The engine stopped (503: the node replaces the replica), or failed this request
    alone (500: the replica serves on)."""
    if isinstance(error, RequestFailed):
        return ApiError(500, "generation_failed", f"the model failed on this request: {error}")
    return ApiError(503, "engine_stopped", f"the model failed: {error}")


def _status(ctx: _Context, refused: bool) -> RecordStatus:
    if refused:
        return RecordStatus.REFUSED
    actions = [ctx.guardrails[d]["toxicity_action"] for d in ("input", "output")]
    return RecordStatus.FLAGGED if "flagged" in actions else RecordStatus.OK


def _usage(submitted) -> dict[str, int]:
    completion = sum(len(row.ids) for row in submitted.rows)
    return api.usage_body(len(submitted.prompt_ids), completion)


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def _engine_parts(ctx: _Context, submitted) -> dict[str, Any]:
    """The record's usage and timings from the engine's request (finished or not)."""
    now = time.perf_counter()

    def ms(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds * 1000, 3)

    first = submitted.first_token
    admitted = submitted.admitted
    usage = _usage(submitted)
    return {
        "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens")},
        "timings": {
            "queue_ms": ms((admitted or now) - submitted.submitted),
            "prefill_ms": ms(submitted.prefill_seconds),
            "decode_ms": ms(None if first is None else (submitted.finished_at or now) - first),
            "first_token_ms": ms(None if first is None else first - ctx.started),
        },
    }


# -- archivers ------------------------------------------------------------------------------
class FileArchiver:
    """Records as JSON lines in a local file (``--archive file:PATH``: debugging and tests)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def record(self, record: dict) -> None:
        line = json.dumps(record, ensure_ascii=False, default=str) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as out:
            out.write(line)

    def close(self, timeout: float | None = None) -> None:
        return None


class NoArchiver:
    """A deployment without archiving: keeps nothing, opens no store or broker connection."""

    def record(self, record: dict) -> None:
        return None

    def close(self, timeout: float | None = None) -> None:
        return None


def make_archiver(kind: str, store, spec: ReplicaSpec, node: str):
    """``store``: the Archiver of workers/serve/archive.py (objects in the store, index
    batches to the control queue); ``file:PATH``: FileArchiver; NoArchiver whatever the
    kind when the spec says not to archive."""
    if not spec.archive:
        return NoArchiver()
    if kind.startswith("file:"):
        return FileArchiver(kind[len("file:") :])
    if kind != "store":
        raise ValueError(f"--archive must be 'store' or 'file:PATH', got {kind!r}")
    from workers.celery_app import app
    from workers.serve.archive import Archiver, ControlQueueIndexSink

    archiver = Archiver(
        store,
        spec,
        ControlQueueIndexSink(app),
        node=node,
        window_seconds=spec.archive_window_seconds,
    )
    archiver.start()
    return archiver


def _encodable_by(engine):
    """`text -> bool`: can the text model's tokenizer encode it (None: an image model)."""
    if engine is None:
        return None

    def encodable(text: str) -> bool:
        try:
            engine.tokenizer.encode(text)
        except (ValueError, KeyError):
            return False
        return True

    return encodable


# -- process entry --------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m workers.serve.replica", description=__doc__)
    parser.add_argument("--spec", required=True, help="the ReplicaSpec as a JSON file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (see READY)")
    parser.add_argument("--node", default=socket.gethostname())
    parser.add_argument("--archive", default="store", help="'store' (default) or 'file:PATH'")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        server = _load(args)
    except Exception as error:  # noqa: BLE001 - the node reads the one line
        message = " ".join(str(error).split()) or type(error).__name__
        log.exception("the replica could not start")
        print(f"ERROR {message}", flush=True)
        return LOAD_FAILED_EXIT
    print(f"READY {server.port}", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("draining")
    server.drain()
    log.info("drained")
    return 0


def _load(args) -> ReplicaServer:
    from workers.serve.modelfiles import ModelLoadError, fetch_model_files, load_model
    from workers.storage import get_object_store

    secret = os.environ.get("CP_SERVE_SECRET", "")
    if not secret:
        raise ModelLoadError("CP_SERVE_SECRET is not set")
    try:
        spec = ReplicaSpec.from_dict(json.loads(Path(args.spec).read_text()))
    except (OSError, ValueError, TypeError) as error:
        raise ModelLoadError(f"cannot read the spec {args.spec}: {error}") from None
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    store = get_object_store()
    model = load_model(spec, fetch_model_files(store, spec))
    archiver = make_archiver(args.archive, store, spec, args.node)
    server = ReplicaServer(spec, model, archiver, secret, host=args.host, port=args.port)
    server.start()
    server.warm_up()
    return server


if __name__ == "__main__":
    sys.exit(main())
