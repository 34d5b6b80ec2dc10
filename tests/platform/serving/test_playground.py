"""The playground: a trusted platform call to a serve node (the node's secret and the user
as X-CP-Caller), relayed to the browser as server-sent events in the order they arrive,
with the node's errors forwarded; only owners and engineers may use it.

The serve node is a stub HTTP server in the test (`stub_node`) that checks the secret and
answers what the test scripts.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.platform.serving.pages_factories import (
    make_deployment,
    make_node,
    make_replica,
    make_version,
)

pytestmark = pytest.mark.django_db

SECRET = "node-secret-for-tests"


class StubNode:
    """What the node received (`calls`) and what it answers (`script`): a list of steps,
    each ("chunk", dict) -> one SSE event, ("raw", str) -> bytes as they are,
    ("wait", Event) -> hold the stream until the test sets it, ("sleep", seconds),
    ("status", code, body) ->
    a JSON answer instead of a stream."""

    def __init__(self):
        self.calls: list[dict] = []
        self.waits: list[bool] = []  # per ("wait", Event): whether the test set it in time
        self.script: list[tuple] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.0"  # the body ends when the connection closes

            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if self.headers.get("Authorization") != f"Bearer {SECRET}":
                    return self._json(401, {"error": {"status": 401, "code": "bad_secret"}})
                steps = list(stub.script)
                if steps and steps[0][0] == "status":
                    return self._json(steps[0][1], steps[0][2])
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("X-Request-Id", "f" * 32)
                self.end_headers()
                for step in steps:
                    if step[0] == "chunk":
                        self.wfile.write(f"data: {json.dumps(step[1])}\n\n".encode())
                    elif step[0] == "raw":
                        self.wfile.write(step[1].encode())
                    elif step[0] == "sleep":
                        time.sleep(step[1])
                    elif step[0] == "wait":
                        stub.waits.append(step[1].wait(10))
                    self.wfile.flush()

            def _json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("X-Request-Id", "e" * 32)
                self.end_headers()
                self.wfile.write(data)

        return Handler

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub_node():
    node = StubNode()
    yield node
    node.stop()


@pytest.fixture
def deployment(team, stub_node, settings):
    """Deployment "chat" of gpt v1 with a ready replica on the stub node."""
    settings.SERVE_NODE_SECRET = SECRET
    chat = make_deployment(team, make_version(team), name="chat")
    make_replica(chat, make_node("stub", stub_node.url))
    return chat


def _url(team, name="chat"):
    return f"/projects/{team.project.pk}/deployments/{name}/playground/"


def _events(response) -> list[tuple[str, object]]:
    """(event name, parsed data) of a text/event-stream answer."""
    text = b"".join(response.streaming_content).decode()
    return [_parse(block) for block in text.split("\n\n") if block.strip()]


def _parse(block: str) -> tuple[str, object]:
    name, data = "message", []
    for line in block.split("\n"):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data.append(line[6:])
    return name, json.loads("\n".join(data))


def _chunk(text: str, finish: str | None = None, **extra) -> dict:
    return {
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
        **extra,
    }


GUARDRAILS = {
    "input": {"pii": {"EMAIL": 1}, "pii_action": "redacted", "toxicity": 0.0},
    "output": {"pii": {}, "pii_action": "none", "toxicity": 0.01, "toxicity_action": "none"},
}


def test_chunks_are_relayed_in_order_as_they_arrive(team, client, stub_node, deployment):
    first_seen = threading.Event()
    stub_node.script = [
        ("chunk", _chunk("To ")),
        ("wait", first_seen),  # the rest only once the browser has the first chunk
        ("chunk", _chunk("be, ")),
        ("raw", ": keep-alive comment\n\n"),
        ("chunk", _chunk("or not", finish="length", x_guardrails=GUARDRAILS)),
        ("raw", "data: [DONE]\n\n"),
    ]
    client.force_login(team.engineer)
    response = client.post(
        _url(team),
        {"mode": "completion", "prompt": "ROMEO:", "max_tokens": 3, "temperature": 0, "seed": 7},
    )
    assert response.status_code == 200 and response.streaming
    assert response["Content-Type"] == "text/event-stream"
    stream = iter(response.streaming_content)
    assert _parse(next(stream).decode()) == ("request", {"request_id": "f" * 32})
    assert _parse(next(stream).decode()) == ("message", _chunk("To "))
    first_seen.set()  # had the view buffered the answer, the stub would still be waiting
    rest = [_parse(part.decode()) for part in stream]
    assert rest == [
        ("message", _chunk("be, ")),
        ("message", _chunk("or not", finish="length", x_guardrails=GUARDRAILS)),
        ("guardrails", GUARDRAILS),
        ("done", {}),
    ]
    assert stub_node.waits == [True]
    (call,) = stub_node.calls
    assert call["path"] == "/p/alpha/chat/v1/completions"
    assert call["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert json.loads(call["headers"]["X-CP-Caller"]) == {
        "token_id": None,
        "user_id": team.engineer.pk,
        "username": "engineer",
    }
    assert call["body"] == {
        "model": "chat",
        "prompt": "ROMEO:",
        "max_tokens": 3,
        "temperature": 0.0,
        "seed": 7,
        "stream": True,
    }


def test_chat_mode_sends_messages_to_chat_completions(team, client, stub_node, deployment):
    stub_node.script = [
        ("chunk", {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]}),
    ]
    client.force_login(team.owner)
    response = client.post(
        _url(team), {"mode": "chat", "prompt": "Hello", "max_tokens": 8, "temperature": 0.5}
    )
    events = _events(response)
    assert [name for name, _ in events] == ["request", "message", "done"]
    (call,) = stub_node.calls
    assert call["path"] == "/p/alpha/chat/v1/chat/completions"
    assert call["body"]["messages"] == [{"role": "user", "content": "Hello"}]
    assert "seed" not in call["body"] and "prompt" not in call["body"]


def test_a_refusal_of_the_node_is_forwarded_with_its_status(team, client, stub_node, deployment):
    refusal = {
        "error": {
            "status": 400,
            "code": "guardrail_refused",
            "message": "the prompt holds personal data (EMAIL) and this deployment refuses it",
            "type": "invalid_request_error",
        }
    }
    stub_node.script = [("status", 400, refusal)]
    client.force_login(team.engineer)
    response = client.post(
        _url(team),
        {"mode": "completion", "prompt": "mail a@b.c", "max_tokens": 4, "temperature": 1},
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "guardrail_refused"
    assert response.json()["error"]["message"] == refusal["error"]["message"]


def test_a_node_answer_that_is_not_the_error_shape_is_a_502(team, client, stub_node, deployment):
    stub_node.script = [("status", 500, ["not", "an", "error"])]
    client.force_login(team.engineer)
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 502 and response.json()["error"]["code"] == "bad_gateway"
    assert "answered 500" in response.json()["error"]["message"]


def test_an_error_in_the_stream_ends_it(team, client, stub_node, deployment):
    stub_node.script = [
        ("chunk", _chunk("To ")),
        (
            "chunk",
            {"error": {"status": 500, "code": "engine_failed", "message": "the engine died"}},
        ),
        ("chunk", _chunk("never sent")),
    ]
    client.force_login(team.engineer)
    events = _events(
        client.post(
            _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 4, "temperature": 1}
        )
    )
    assert events[1:] == [
        ("message", _chunk("To ")),
        (
            "error",
            {"error": {"status": 500, "code": "engine_failed", "message": "the engine died"}},
        ),
    ]


def test_a_stream_that_breaks_off_says_so(team, client, stub_node, deployment):
    stub_node.script = [("chunk", _chunk("To "))]  # then the connection closes
    client.force_login(team.engineer)
    events = _events(
        client.post(
            _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 4, "temperature": 1}
        )
    )
    name, body = events[-1]
    assert name == "error" and body["error"]["code"] == "stream_broken"


def test_a_stream_longer_than_the_playground_allows_is_cut(
    team, client, stub_node, deployment, monkeypatch
):
    from controlplane.serving import playground

    monkeypatch.setattr(playground, "MAX_STREAM_SECONDS", 0.2)
    stub_node.script = [
        ("chunk", _chunk("To ")),
        ("sleep", 0.4),
        ("chunk", _chunk("be", finish="stop")),
    ]
    client.force_login(team.engineer)
    events = _events(
        client.post(
            _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 4, "temperature": 1}
        )
    )
    assert [name for name, _ in events] == ["request", "message", "error"]
    assert "stops an answer after 0.2 s" in events[-1][1]["error"]["message"]


def test_an_invalid_request_is_a_400_naming_the_fields(team, client, stub_node, deployment):
    client.force_login(team.engineer)
    response = client.post(_url(team), {"mode": "completion", "prompt": "", "temperature": 5})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_value"
    assert set(error["fields"]) == {"prompt", "max_tokens", "temperature"}
    assert stub_node.calls == []


def test_no_ready_replica_is_a_clear_503(team, client, stub_node, deployment):
    deployment.replica_set.update(state="starting")
    client.force_login(team.engineer)
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_replica"
    assert "No replica of chat is ready yet" in response.json()["error"]["message"]


def test_a_stopped_deployment_is_a_503_with_its_reason(team, client, stub_node, deployment):
    deployment.state, deployment.reason = "stopped", "maintenance"
    deployment.save()
    client.force_login(team.engineer)
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "deployment_stopped"
    assert "maintenance" in response.json()["error"]["message"]


def test_without_the_node_secret_the_playground_says_what_to_set(
    team, client, deployment, settings
):
    settings.SERVE_NODE_SECRET = ""
    client.force_login(team.engineer)
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 503
    assert "SERVE_NODE_SECRET" in response.json()["error"]["message"]


def test_an_unreachable_node_is_a_502(team, client, deployment):
    from controlplane.serving.models import ServeNode

    ServeNode.objects.update(url="http://127.0.0.1:9")  # discard: nothing listens
    client.force_login(team.engineer)
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "node_unreachable"


@pytest.mark.parametrize("role", ("viewer", "compliance"))
def test_readers_get_403(team, client, stub_node, deployment, role):
    client.force_login(getattr(team, role))
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 403
    assert stub_node.calls == []


def test_another_projects_user_gets_404(team, client, stub_node, deployment):
    client.force_login(team.outsider)
    response = client.post(
        _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
    )
    assert response.status_code == 404
    assert stub_node.calls == []


def test_images_come_back_as_png_data(team, client, stub_node, settings):
    settings.SERVE_NODE_SECRET = SECRET
    digits = make_deployment(
        team, make_version(team, model_name="digits", task="image-generation"), name="digits"
    )
    make_replica(digits, make_node("stub", stub_node.url))
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n...").decode()
    stub_node.script = [("status", 200, {"created": 1, "data": [{"b64_json": png}] * 2})]
    client.force_login(team.engineer)
    page = client.get(f"/projects/{team.project.pk}/deployments/digits/").content.decode()
    assert 'data-task="image"' in page and 'name="steps"' in page
    response = client.post(_url(team, "digits"), {"prompt": "7", "n": 2, "steps": 10})
    assert response.status_code == 200
    assert response.json() == {"request_id": "e" * 32, "images": [png, png], "x_guardrails": None}
    (call,) = stub_node.calls
    assert call["path"] == "/p/alpha/digits/v1/images/generations"
    assert call["body"] == {
        "model": "digits",
        "prompt": "7",
        "n": 2,
        "steps": 10,
        "response_format": "b64_json",
    }


def test_a_node_reported_without_a_scheme_is_called_over_http(team, client, stub_node, deployment):
    from controlplane.serving.models import ServeNode

    ServeNode.objects.update(url=stub_node.url.removeprefix("http://"))
    stub_node.script = [("chunk", _chunk("ok", finish="stop"))]
    client.force_login(team.engineer)
    events = _events(
        client.post(
            _url(team), {"mode": "completion", "prompt": "x", "max_tokens": 1, "temperature": 1}
        )
    )
    assert [name for name, _ in events] == ["request", "message", "done"]
