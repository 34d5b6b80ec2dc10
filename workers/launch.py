"""Running a training job on several processes: torchrun as a child process group.

A job whose params ask for ``resources: {devices: N, nodes: M, strategy: ddp|fsdp}`` with
N * M > 1 trains under PyTorch's own launcher::

    python -m torch.distributed.run --standalone --nproc_per_node N \\
        -m engine train pretrain <work>/ranks.json --report-to <relay.sock> [--resume CKPT]

(one node; a gang of M nodes meets through the c10d rendezvous instead, workers/gang.py).
The worker process stays the job's one voice: it keeps the attempt's event numbering,
heartbeats, cancel and superseded checks, uploads and completion record
(workers/runtime.py) exactly as for a one-process job. Rank 0 reports every hook of the
training loop to it over a Unix socket (engine/loop/relay.py), and the worker calls the
job's own ``TrainingCallbacks`` with it, so a metric, a checkpoint or a cancel means the
same thing at any number of processes.

Stopping: a cancel reaches rank 0 as the answer to its ``should_stop`` (the loop then
checkpoints on every rank and returns); a group that has not ended STOP_GRACE_SECONDS
after the stop was seen, or whose rank failed, is terminated as a whole (torchrun gets
SIGTERM and stops its ranks; every rank that said hello is then killed if still alive,
since torchrun starts each rank in a session of its own). Every rank also holds its
socket as a lifeline and exits when this process is gone, so a killed worker leaves no
orphan training on.

A rank that fails fails the attempt with its reason (its own exception, or the signal
that killed it); a rank killed by a signal (the OOM killer, a lost device) is marked
retryable: the platform runs the next attempt from the last checkpoint.
"""

from __future__ import annotations

import json
import logging
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.train.resources import DATA_PARALLEL_KINDS, ResourcesError, resources_config
from workers.runtime import JobContext, JobFailed, JobStopped
from workers.training import TrainingCallbacks

log = logging.getLogger(__name__)

# How long a group may take to end after a cancel (or a superseded attempt) was seen:
# enough for the next logging step, the stop's checkpoint and its upload.
STOP_GRACE_SECONDS = 120.0
# How long torchrun gets to stop its ranks after SIGTERM before everything is killed.
TERMINATE_SECONDS = 15.0
_POLL_SECONDS = 0.5
# Where the relay's socket goes: /tmp even when TMPDIR is deep (a socket path is short).
_SHORT_TEMP = "/tmp" if os.path.isdir("/tmp") else None


@dataclass(frozen=True)
class Resources:
    """What a training job runs on; the platform validates and stores it in the params."""

    devices: int = 1  # processes (one per GPU) per node
    nodes: int = 1
    strategy: str = "ddp"

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> Resources:
        """The job's resources, checked by the engine's one definition of them (the
        platform validated them with the same one; this guards a hand-made message)."""
        try:
            config = resources_config(params.get("resources"))
        except ResourcesError as error:
            raise JobFailed(f"params.{error}") from None
        return cls(devices=config.devices, nodes=config.nodes, strategy=config.strategy)

    @property
    def processes(self) -> int:
        return self.devices * self.nodes

    @property
    def distributed(self) -> bool:
        return self.processes > 1


# The job kinds whose engine loop runs under torchrun (engine/train/trainer.py).
DISTRIBUTED_KINDS = frozenset(DATA_PARALLEL_KINDS)


def require_one_process(kind: str, params: dict[str, Any]) -> None:
    """Refuse resources a kind cannot use: never train silently on fewer processes."""
    resources = Resources.from_params(params)
    if resources.distributed and kind not in DISTRIBUTED_KINDS:
        raise JobFailed(
            f"{kind} jobs train on one process, but resources ask for {resources.devices} "
            f"device(s) on {resources.nodes} node(s); only {', '.join(sorted(DISTRIBUTED_KINDS))} "
            "jobs run on several"
        )


class RankFailed(JobFailed):
    """A rank of the group failed; ``retryable`` when a signal killed it (not its own error)."""


STANDALONE = ("--standalone",)


def torchrun_command(
    resources: Resources, launch: tuple[str, ...], config: Path, relay: Path, resume: Path | None
) -> list[str]:
    """``launch``: STANDALONE, or the rendezvous flags of a gang (workers/gang.py)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        *launch,
        "--nproc_per_node",
        str(resources.devices),
        "-m",
        "engine",
        "train",
        "pretrain",
        str(config),
        "--report-to",
        str(relay),
    ]
    if resume is not None:
        command += ["--resume", str(resume)]
    return command


def run_ranks(
    ctx: JobContext,
    callbacks: TrainingCallbacks,
    *,
    config: dict[str, Any],
    resources: Resources,
    work: Path,
    resume: Path | None,
):
    """Train ``config`` (the engine's RunConfig dict) on the group; returns its TrainSummary,
    or None on a gang's node that does not speak for the attempt (rank 0 ran elsewhere).

    Raises what the one-process path raises: JobStopped after a stop the loop did not
    reach, JobFailed for a failed rank, the callbacks' own errors (an upload's).
    """
    from engine.train.trainer import TrainSummary

    if resources.nodes > 1 and ctx.gang is None:
        raise JobFailed(
            f"resources ask for {resources.nodes} nodes, but this task is not one node of a "
            "gang (the platform dispatches multi-node jobs as gangs to gpu workers)"
        )
    launch = ctx.gang.meet(ctx) if ctx.gang is not None else STANDALONE
    config_path = work / "ranks.json"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    log_path = work / "ranks.log"
    with RankRelay(ctx, callbacks) as relay, log_path.open("wb") as output:
        command = torchrun_command(resources, launch, config_path, relay.path, resume)
        ctx.log(f"starting {resources.devices} process(es) on this node: torchrun {launch[0]}")
        process = subprocess.Popen(
            command,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=_rank_env(),
            start_new_session=True,  # its own group: stopped as a whole, apart from the worker
        )
        try:
            relay.serve(process)
        finally:
            stop_group(process, relay.pids)
    if process.returncode != 0:
        log.info(
            "job %s: torchrun exited with status %s; its output ends with:\n%s",
            ctx.spec.job_id,
            process.returncode,
            log_path.read_text(errors="replace")[-4000:],
        )
    if relay.failure is not None:
        raise relay.failure
    if process.returncode != 0:
        if relay.stopping:
            raise JobStopped(ctx.stop_reason() or "stopped")
        if not relay.finished_before_teardown():
            raise rank_failure(relay.errors, log_path, process.returncode)
        # The results are whole (every hook answered, the summary sent); retrying the
        # attempt would only train the same steps again.
        ctx.log(
            f"torchrun exited with status {process.returncode} after every process had "
            "finished the run (a crash while shutting down); the run's results are complete"
        )
    if ctx.gang is not None and not relay.has_rank_zero:
        ctx.mute_events()  # the node with rank 0 speaks for the attempt; this one took part
        return None
    if relay.summary is None:
        raise JobFailed("the training processes ended without a summary (see the worker's log)")
    summary = dict(relay.summary)
    checkpoint = summary.pop("checkpoint")
    summary["losses"] = [tuple(item) for item in summary.get("losses", [])]
    return TrainSummary(**summary, checkpoint=Path(checkpoint) if checkpoint else None)


def _rank_env() -> dict[str, str]:
    """The worker's environment, with the engine importable from wherever the ranks start."""
    import engine

    env = dict(os.environ)
    root = str(Path(engine.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


class RankRelay:
    """The worker's end of the ranks' sockets (engine/loop/relay.py): hooks to callbacks."""

    def __init__(self, ctx: JobContext, callbacks: TrainingCallbacks) -> None:
        self.ctx = ctx
        self.callbacks = callbacks
        # A short folder of its own: a Unix socket path holds ~100 bytes at most.
        self._folder = Path(tempfile.mkdtemp(prefix="relay-", dir=_SHORT_TEMP))
        self.path = self._folder / "relay.sock"
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self.path))
        self._listener.listen(64)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ)
        self._streams: list[Any] = []
        self.pids: dict[int, int] = {}  # rank -> pid, from their hellos
        self.errors: dict[int, str] = {}  # rank -> the error it reported before exiting
        self.done: set[int] = set()  # ranks past their last collective (only teardown left)
        self.summary: dict[str, Any] | None = None
        self.failure: BaseException | None = None  # our side of a hook failed
        self.stopping = False  # a stop was seen: the group should end by itself soon
        self._stop_seen_at: float | None = None
        self.has_rank_zero = False  # rank 0 runs here: this node speaks for the attempt

    def __enter__(self) -> RankRelay:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        for stream in self._streams:
            try:
                stream.close()
            except OSError:
                pass
        self._selector.close()
        self._listener.close()
        self.path.unlink(missing_ok=True)
        self._folder.rmdir()

    # the loop --------------------------------------------------------------------------
    def serve(self, process: subprocess.Popen) -> None:
        """Answer the ranks until the group exits, ends by itself or has to be stopped."""
        while True:
            for key, _mask in self._selector.select(timeout=_POLL_SECONDS):
                self._readable(key.fileobj)
            if process.poll() is not None:
                self._drain()
                return
            if self.failure is not None:
                return  # the caller stops the group
            if self._past_stop_grace():
                log.warning(
                    "job %s: the training processes did not stop within %.0f s; terminating",
                    self.ctx.spec.job_id,
                    STOP_GRACE_SECONDS,
                )
                return

    def finished_before_teardown(self) -> bool:
        """Whether the run was over before the group exited: every rank that said hello
        said it was done, none reported an error, and rank 0 (where it runs here) sent
        its summary. A crash after that is one of tearing the process group down."""
        return (
            bool(self.pids)
            and set(self.pids) <= self.done
            and not self.errors
            and self.failure is None
            and not self.stopping
            and (self.summary is not None or not self.has_rank_zero)
        )

    def _past_stop_grace(self) -> bool:
        """Whether to stop the group now: a stop seen STOP_GRACE_SECONDS ago, or one the
        ranks cannot act on (none has started yet; a superseded attempt, whose newer
        attempt owns the job: nothing of this one is published any more)."""
        if self._stop_seen_at is None:
            try:
                stopped = self.ctx.should_stop()
            except Exception as error:  # noqa: BLE001 - the store away past its patience
                self.failure = error
                return True
            if not stopped:
                return False
            self.stopping = True
            self._stop_seen_at = time.monotonic()
        if not self.pids or self.ctx.stop_reason() == "superseded":
            return True
        return time.monotonic() - self._stop_seen_at > STOP_GRACE_SECONDS

    def _drain(self) -> None:
        """What the ranks said just before the group exited (their errors, the summary)."""
        while True:
            ready = self._selector.select(timeout=0)
            if not ready:
                return
            for key, _mask in ready:
                self._readable(key.fileobj)

    def _readable(self, fileobj) -> None:
        if fileobj is self._listener:
            connection, _ = self._listener.accept()
            stream = connection.makefile("rwb")
            self._streams.append(stream)
            self._selector.register(connection, selectors.EVENT_READ, stream)
            return
        stream = self._selector.get_key(fileobj).data
        try:
            line = stream.readline()
        except OSError:
            line = b""
        if not line:
            self._selector.unregister(fileobj)
            return
        answer = self._handle(json.loads(line))
        if answer is not None:
            try:
                stream.write(json.dumps(answer).encode() + b"\n")
                stream.flush()
            except OSError:
                pass  # the rank is gone; the group's exit tells the rest

    def _handle(self, message: dict[str, Any]) -> dict[str, Any] | None:
        hook = message.get("hook")
        if hook == "hello":
            rank = int(message["rank"])
            self.pids[rank] = int(message["pid"])
            if rank == 0 and not self.has_rank_zero:
                self.has_rank_zero = True
                self.ctx.report_events()  # a gang's node learns it speaks for the attempt
            return None
        if hook == "error":
            self.errors.setdefault(int(message["rank"]), str(message["error"]))
            return None
        if hook == "done":
            self.done.add(int(message["rank"]))
            return None
        try:
            stop = self._call(hook, message)
        except BaseException as error:  # noqa: BLE001 - re-raised by run_ranks once the group is down
            self.failure = error
            return {"ok": False, "error": f"the worker's side failed: {type(error).__name__}"}
        return {"ok": True} if stop is None else {"ok": True, "stop": stop}

    def _call(self, hook: str | None, message: dict[str, Any]) -> bool | None:
        callbacks = self.callbacks
        if hook == "train_start":
            callbacks.on_train_start(message["info"])
        elif hook == "metrics":
            callbacks.on_metrics(int(message["step"]), message["metrics"])
        elif hook == "checkpoint":
            callbacks.on_checkpoint(
                int(message["step"]), Path(message["path"]), message.get("val_loss")
            )
        elif hook == "artifact":
            callbacks.on_artifact(int(message["step"]), Path(message["path"]))
        elif hook == "should_stop":
            stop = callbacks.should_stop()
            if stop and self._stop_seen_at is None:
                self.stopping, self._stop_seen_at = True, time.monotonic()
            return stop
        elif hook == "train_end":
            callbacks.on_train_end(message["summary"])
        elif hook == "summary":
            self.summary = message["summary"]
        else:
            raise JobFailed(f"a training process sent an unknown hook {hook!r}")
        return None


def stop_group(process: subprocess.Popen, pids: dict[int, int]) -> None:
    """End torchrun and every rank that said hello; nothing of the group outlives this."""
    if process.poll() is None:
        _signal_group(process.pid, signal.SIGTERM)  # torchrun stops its ranks on SIGTERM
        try:
            process.wait(TERMINATE_SECONDS)
        except subprocess.TimeoutExpired:
            _signal_group(process.pid, signal.SIGKILL)
            process.wait(10)
    for pid in pids.values():
        # torchrun puts each rank in a session of its own: after a SIGKILL of torchrun
        # (or a rank stuck in a collective) they are not in its group.
        _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


# torchrun's summary of the first failure: "rank      : 1 (local_rank: 1)",
# "exitcode  : -9 (pid: 4242)".
_ROOT_RANK = re.compile(r"^\s*rank\s*:\s*(\d+)", re.MULTILINE)
_ROOT_EXIT = re.compile(r"^\s*exitcode\s*:\s*(-?\d+)", re.MULTILINE)


def rank_failure(errors: dict[int, str], log_path: Path, returncode: int) -> RankFailed:
    """Why the group failed, from the ranks' own reports or torchrun's root-cause summary."""
    output = log_path.read_text(errors="replace")
    root_cause = output.rsplit("Root Cause", 1)[-1] if "Root Cause" in output else ""
    rank_match, exit_match = _ROOT_RANK.search(root_cause), _ROOT_EXIT.search(root_cause)
    rank = int(rank_match.group(1)) if rank_match else None
    exitcode = int(exit_match.group(1)) if exit_match else None
    if rank is not None and rank in errors:
        return RankFailed(f"rank {rank} failed: {errors[rank]}")
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else exitcode
        who = f"rank {rank}" if rank is not None else "a training process"
        return RankFailed(
            f"{who} was killed by {name} (out of memory, or a lost device?); "
            "the attempt is retried from the last checkpoint",
            retryable=True,
        )
    if errors:
        first = min(errors)
        return RankFailed(f"rank {first} failed: {errors[first]}")
    tail = " | ".join(output.strip().splitlines()[-5:])[-1000:]
    who = f"rank {rank}" if rank is not None else "torchrun"
    code = exitcode if exitcode is not None else returncode
    return RankFailed(f"{who} exited with status {code}: {tail}")
