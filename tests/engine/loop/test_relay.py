"""A rank's hooks reach the process that launched it, and its answers steer the rank."""

from __future__ import annotations

import json
import os
import socket
import threading

import pytest

from engine.loop.relay import RelayCallback, RelayError


class _Launcher:
    """A launcher's end of the socket: records what a rank says, answers from `answers`."""

    def __init__(self, path, answers: dict[str, dict]) -> None:
        self.heard: list[dict] = []
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(1)
        self._answers = answers
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        connection, _ = self._server.accept()
        with connection, connection.makefile("rwb") as stream:
            for line in stream:
                message = json.loads(line)
                self.heard.append(message)
                if message["hook"] in ("hello", "done", "error"):
                    continue  # told, never answered
                if message["hook"] == "hang_up":
                    return
                stream.write(json.dumps(self._answers.get(message["hook"], {"ok": True})).encode())
                stream.write(b"\n")
                stream.flush()


@pytest.fixture
def socket_path(tmp_path):
    return tmp_path / "relay.sock"


def test_rank_zero_reports_its_hooks_and_takes_the_launchers_answers(socket_path):
    launcher = _Launcher(
        socket_path,
        {
            "should_stop": {"ok": True, "stop": True},
            "checkpoint": {"ok": False, "error": "the worker's side failed: upload"},
        },
    )
    relay = RelayCallback(socket_path, rank=0)
    relay.on_metrics(10, {"train/loss": 2.5})
    assert relay.should_stop() is True
    with pytest.raises(RelayError, match="upload"):
        relay.on_checkpoint(10, socket_path.parent / "step_000010")

    hello, metrics = launcher.heard[0], launcher.heard[1]
    assert hello == {"hook": "hello", "rank": 0, "pid": os.getpid()}
    assert metrics == {"hook": "metrics", "step": 10, "metrics": {"train/loss": 2.5}}
    relay.close()


def test_a_rank_whose_launcher_is_gone_stops_with_an_error(socket_path):
    _Launcher(socket_path, {})
    relay = RelayCallback(socket_path, rank=0)
    relay._ask({"hook": "metrics", "step": 1, "metrics": {}})
    with pytest.raises(RelayError, match="the launcher is gone"):
        relay._ask({"hook": "hang_up"})  # the launcher closes without answering
    with pytest.raises(RelayError, match="the launcher is gone"):
        relay.should_stop()


def test_any_rank_says_it_is_done_and_expects_no_answer(socket_path):
    launcher = _Launcher(socket_path, {})
    relay = RelayCallback(socket_path, rank=1)
    relay.report_done()
    relay.report_error(RuntimeError("late"))
    relay.close()
    launcher._thread.join(5)
    assert launcher.heard[1:] == [
        {"hook": "done", "rank": 1},
        {"hook": "error", "rank": 1, "error": "RuntimeError: late"},
    ]
