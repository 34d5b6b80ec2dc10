"""A run's hooks reported to the process that launched it: JSON lines over a Unix socket.

A worker that runs a training job on several processes (``torchrun``) keeps the job's
event stream itself, and its ranks tell it what the one-process loop would tell its
callbacks in-process::

    torchrun --nproc_per_node 2 -m engine train pretrain run.yaml --report-to /tmp/r/relay.sock

Every rank connects once and says ``{"hook": "hello", "rank": 0, "pid": 4242}``, so the
launcher knows the processes to stop. Rank 0 (the only one the loops call back) then sends
each hook as one request line and waits for the answer line before it goes on: a
checkpoint is uploaded before the loop can prune it, and ``should_stop`` is answered by
the launcher. Requests::

    {"hook": "train_start", "info": {...}}
    {"hook": "metrics", "step": 10, "metrics": {"train/loss": 2.1}}
    {"hook": "checkpoint", "step": 10, "path": "/.../step_000010", "val_loss": null}
    {"hook": "artifact", "step": 10, "path": "/.../samples/step_000010.png"}
    {"hook": "should_stop"}
    {"hook": "train_end", "summary": {...}}
    {"hook": "summary", "summary": {...}}     # the run's TrainSummary, once, after fit()
    {"hook": "error", "rank": 1, "error": "RuntimeError: ..."}   # any rank, before it exits
    {"hook": "done", "rank": 1}   # every rank, after its run, before the last barrier

Answers: ``{"ok": true}``, ``{"ok": true, "stop": false}`` or ``{"ok": false, "error":
"..."}`` (the launcher's side of the hook failed: the rank raises :class:`RelayError`). ``error``
and ``done`` get no answer.

The connection is also a lifeline: a rank whose launcher is gone (the socket closed)
exits at once instead of training on as an orphan nobody reports or stops.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

from engine.loop.callbacks import Callback

log = logging.getLogger(__name__)

# Exit status of a rank whose launcher went away (EX_TEMPFAIL: not the run's own fault).
LAUNCHER_GONE_EXIT = 75


class RelayError(RuntimeError):
    """The launcher refused a hook (its side failed) or is gone."""


def read_line(stream) -> dict[str, Any] | None:
    """One JSON object from a socket file; None at the end of the stream."""
    line = stream.readline()
    if not line:
        return None
    return json.loads(line)


def write_line(stream, message: dict[str, Any]) -> None:
    stream.write(json.dumps(message, default=str).encode() + b"\n")
    stream.flush()


class RelayCallback(Callback):
    """Rank ``rank``'s connection to the launcher at ``path`` (see the module docstring).

    Built on every rank (each says hello and holds the lifeline); only rank 0's hooks are
    called by the loops.
    """

    def __init__(self, path: str | os.PathLike, *, rank: int) -> None:
        self.rank = rank
        self._closed = False
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._socket.connect(os.fspath(path))
        self._stream = self._socket.makefile("rwb")
        self._lock = threading.Lock()  # one request and its answer at a time
        write_line(self._stream, {"hook": "hello", "rank": rank, "pid": os.getpid()})
        if rank != 0:
            # Other ranks never read an answer: a thread waits for the end of the stream.
            threading.Thread(target=self._exit_when_launcher_gone, daemon=True).start()

    def _exit_when_launcher_gone(self) -> None:
        try:
            while self._socket.recv(4096):
                pass
        except OSError:
            pass
        # At interpreter shutdown the socket is closed under this thread: writing a log
        # line then races the main thread's flush of stderr, which aborts the process.
        if not self._closed and not sys.is_finalizing():
            log.error("rank %s: the launcher is gone; exiting", self.rank)
            os._exit(LAUNCHER_GONE_EXIT)

    def close(self) -> None:
        self._closed = True
        try:
            # shutdown, not just close: it wakes the lifeline thread's recv, and the
            # launcher sees the end of the stream now, not when the process exits.
            self._socket.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        try:
            self._stream.close()
            self._socket.close()
        except OSError:
            pass

    def _ask(self, message: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            try:
                write_line(self._stream, message)
                answer = read_line(self._stream)
            except OSError as error:
                answer, reason = None, str(error)
            else:
                reason = "connection closed"
        if answer is None:
            raise RelayError(f"the launcher is gone ({reason})")
        if not answer.get("ok"):
            raise RelayError(str(answer.get("error") or "the launcher refused the hook"))
        return answer

    # the loop's hooks ----------------------------------------------------------------
    def on_train_start(self, info: dict[str, Any]) -> None:
        self._ask({"hook": "train_start", "info": info})

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self._ask({"hook": "metrics", "step": step, "metrics": metrics})

    def on_checkpoint(self, step: int, path: Path, val_loss: float | None = None) -> None:
        self._ask({"hook": "checkpoint", "step": step, "path": str(path), "val_loss": val_loss})

    def on_artifact(self, step: int, path: Path) -> None:
        self._ask({"hook": "artifact", "step": step, "path": str(path)})

    def should_stop(self) -> bool:
        return bool(self._ask({"hook": "should_stop"}).get("stop"))

    def on_train_end(self, summary: dict[str, Any]) -> None:
        self._ask({"hook": "train_end", "summary": summary})

    # what the entry point adds -------------------------------------------------------
    def report_summary(self, summary: dict[str, Any]) -> None:
        self._ask({"hook": "summary", "summary": summary})

    def report_error(self, error: BaseException) -> None:
        """Tell the launcher why this rank is about to fail (best effort: it may be gone)."""
        self._tell(
            {"hook": "error", "rank": self.rank, "error": f"{type(error).__name__}: {error}"}
        )

    def report_done(self) -> None:
        """Tell the launcher this rank's part of the run is over: once every rank said so
        (they meet at a barrier after it), a crash while the process group is torn down
        cannot undo the run."""
        self._tell({"hook": "done", "rank": self.rank})

    def _tell(self, message: dict[str, Any]) -> None:
        """A message that gets no answer (best effort: the launcher may be gone)."""
        try:
            with self._lock:
                write_line(self._stream, message)
        except OSError:
            pass
