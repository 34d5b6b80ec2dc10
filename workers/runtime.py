"""Running one job attempt: event numbering, heartbeats and cooperative stopping.

A handler gets a `JobContext` and reports through it; it calls `ctx.should_stop()` between
units of work (chunks, files) and returns when it is true. A training handler passes
`ctx.training_callbacks()` (workers/training.py) to its engine loop instead, which asks
the same question after every step. The context stops a
job when the platform asked to cancel it (cancel marker) or when the reaper handed the job
to another attempt (superseded marker); both are objects in the store, because a worker
holds no database credentials.

No event may be lost on the way to the platform (docs/architecture.md, "The event path"):
- every event is numbered (seq) and kept in a bounded `EventLog`; with each stop check
  the context looks for re-send requests the platform wrote after it saw a gap
  (`resend_request_prefix`) and sends the asked-for events again, unchanged;
- before `finished` goes out, the attempt's completion record (`completion_record_key`:
  the finished event and every artifact and checkpoint event) is written to the store, so
  the reaper can tell a success whose `finished` was lost from a dead worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import threading
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from workers.config import worker_runtime_config
from workers.events import EventLog, EventSink
from workers.protocol import (
    RETRYABLE_FIELD,
    USAGE_FIELD,
    EventType,
    JobEvent,
    JobSpec,
    cancel_marker_key,
    completion_record_key,
    resend_request_prefix,
    superseded_marker_key,
)
from workers.storage import ObjectNotFoundError, ObjectStore, StorageError, StoredObject
from workers.storage.retrying import is_transient
from workers.tracking import NullTracker, start_tracking
from workers.training import TrainingCallbacks
from workers.usage import MeteredStore, UsageMeter

log = logging.getLogger(__name__)


_TRANSFER_CHUNK = 8 * 1024 * 1024
# How often (at most) the markers are read: a training loop asks after every step.
STOP_CHECK_SECONDS = 2.0
# step_000250.tar (pre-training), step_000250.pt (vision, post-training)
_CHECKPOINT_STEP = re.compile(r"step_(\d+)")


def checkpoint_step(key: str) -> int | None:
    """The training step a checkpoint object's name carries, if it carries one."""
    found = _CHECKPOINT_STEP.search(Path(key).name)
    return int(found.group(1)) if found else None


def _step_or_minus_one(key: str) -> int:
    step = checkpoint_step(key)
    return -1 if step is None else step


def verified_step_file(path: Path) -> Path:
    """A .pt step file that is whole: torch.save writes a zip, whose CRCs we check."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except zipfile.BadZipFile as error:
        raise JobFailed(f"{path.name} is not a readable checkpoint: {error}") from None
    if damaged is not None:
        raise JobFailed(f"{path.name} is damaged ({damaged} fails its CRC)")
    return path


class JobStopped(Exception):
    """Raised by `ctx.check_stop()` so a handler can unwind from deep inside its loop."""


class JobFailed(Exception):
    """A failure the user can act on; its message becomes the job's error.

    ``retryable``: not the job's own fault (a training process killed by the OOM killer):
    the platform runs the next attempt from the last checkpoint while attempts remain.
    """

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable


class JobContext:
    def __init__(
        self,
        spec: JobSpec,
        sink: EventSink,
        store: ObjectStore,
        *,
        stop_check_seconds: float | None = None,
        event_log: EventLog | None = None,
    ):
        config = worker_runtime_config()
        self.spec = spec
        # What the attempt uses (None: accounting off); its store counts the bytes moved.
        self.usage: UsageMeter | None = UsageMeter() if config.usage_accounting else None
        self.store = store if self.usage is None else MeteredStore(store, self.usage)
        self._sink = sink
        self._seq = 0
        self.events = event_log or EventLog(config.event_log_events)
        self._answered_resend_requests: set[str] = set()
        self._lock = threading.Lock()
        self._stop_reason: str | None = None
        self._stop_check_seconds = (
            STOP_CHECK_SECONDS if stop_check_seconds is None else stop_check_seconds
        )
        self._last_stop_check = 0.0
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        self.tracker: NullTracker = NullTracker()
        # A gang's node (workers/gang.py): its events wait in `_held` until it knows whether
        # its node hosts rank 0 (then they go out, numbered from 0 as any attempt's) or not
        # (then they are dropped: one node speaks for the attempt).
        self.gang: Any = None
        self._held: list[JobEvent] | None = None
        self.muted = False
        self.terminal: JobEvent | None = None  # the attempt's outcome, once emitted

    # events -------------------------------------------------------------------------
    def hold_events(self) -> None:
        with self._lock:
            self._held = []

    def report_events(self) -> None:
        """This node speaks for the attempt: what was held goes out, then everything."""
        with self._lock:
            held, self._held = self._held or [], None
            for event in held:
                self._sink_send(event)

    def mute_events(self) -> None:
        """Another node speaks for the attempt: nothing of this one reaches the platform."""
        with self._lock:
            self._held, self.muted = None, True

    def emit(self, event_type: EventType, payload: dict[str, Any] | None = None) -> JobEvent:
        with self._lock:  # the heartbeat thread emits too; seq must stay gap-free and ordered
            event = self._number(event_type, payload)
            self._send(event)
        return event

    def _number(self, event_type: EventType, payload: dict[str, Any] | None) -> JobEvent:
        """The next event of the attempt, logged for re-sends; the caller holds the lock."""
        if self.usage is not None and (event_type == EventType.HEARTBEAT or event_type.is_terminal):
            payload = {**(payload or {}), USAGE_FIELD: self.usage.report().to_dict()}
        event = JobEvent(
            job_id=self.spec.job_id,
            attempt=self.spec.attempt,
            seq=self._seq,
            type=event_type,
            payload=payload or {},
        )
        self._seq += 1
        self.events.record(event)
        return event

    def _send(self, event: JobEvent) -> None:
        if event.type.is_terminal:
            self.terminal = event
        if self.muted:
            return
        if self._held is not None:
            self._held.append(event)
            return
        self._sink_send(event)

    def _sink_send(self, event: JobEvent) -> None:
        # The sink is a BufferedSink on a real worker: it queues and never raises. Any other
        # sink failing must not end the training either; the event stays re-sendable.
        try:
            self._sink.send(event)
        except Exception:  # noqa: BLE001
            log.exception("job %s: event %s could not be sent", self.spec.job_id, event.seq)

    def flush_events(self, timeout: float) -> bool:
        """Wait (bounded) until the broker has every event of the attempt."""
        delivered = self._sink.flush(timeout)
        if not delivered:
            log.warning(
                "job %s attempt %s: events still unsent after %.0f s; they go out when the "
                "broker is back while this process lives",
                self.spec.job_id,
                self.spec.attempt,
                timeout,
            )
        return delivered

    def progress(self, fraction: float, message: str = "") -> None:
        self.emit(EventType.PROGRESS, {"fraction": fraction, "message": message})

    def metric(self, step: int, **values: float) -> None:
        self.emit(EventType.METRIC, {"step": step, "values": values})
        self.tracker.log_metrics(step, values)

    def log(self, message: str) -> None:
        self.emit(EventType.LOG, {"message": message})

    def artifact(self, *, name: str, key: str, sha256: str, size: int) -> None:
        self._check_stop_before_publishing(key)
        self.emit(EventType.ARTIFACT, {"name": name, "key": key, "sha256": sha256, "size": size})

    def publish(self, path: Path, name: str) -> dict[str, Any]:
        """Upload ``path`` as the output ``name`` ("model/config.json") and report it."""
        stored = self.upload(path, *name.split("/"))
        self.artifact(name=name, key=stored.key, sha256=stored.sha256, size=stored.size)
        return {"name": name, "key": stored.key, "sha256": stored.sha256, "size": stored.size}

    def checkpoint(
        self, *, step: int, key: str, sha256: str, size: int, even_if_stopped: bool = False
    ) -> None:
        """Report a stored checkpoint; ``even_if_stopped``: the one a loop wrote at its stop."""
        if not even_if_stopped:
            self._check_stop_before_publishing(key)
        self.emit(
            EventType.CHECKPOINT,
            {
                "name": f"checkpoint-{step}",
                "step": step,
                "key": key,
                "sha256": sha256,
                "size": size,
            },
        )

    def output_key(self, *parts: str) -> str:
        return self.spec.output_prefix + "/".join(parts)

    def training_callbacks(self, *, progress_until: float = 0.99) -> TrainingCallbacks:
        """The callback that reports an engine training loop's run as this job's events.

        ``progress_until``: the share of the job's progress bar the loop fills (the rest is
        for the handler's work after it, e.g. export and sampling).
        """
        return TrainingCallbacks(self, progress_until=progress_until)

    # files ------------------------------------------------------------------------------
    def download(self, key: str, target: Path, sha256: str | None = None) -> Path:
        """Copy an object to a local file, checking its sha256 on the way when given."""
        digest = hashlib.sha256()
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            for chunk in self.store.iter_chunks(key, chunk_size=_TRANSFER_CHUNK):
                digest.update(chunk)
                out.write(chunk)
        if sha256 and digest.hexdigest() != sha256:
            raise JobFailed(f"{key} does not match its sha256 (the stored object changed)")
        return target

    def download_resume_checkpoint(
        self, folder: Path, open_checkpoint: Callable[[Path], Any] = lambda path: path
    ) -> Any:
        """The newest usable checkpoint to resume from, opened; None when starting afresh.

        The spec names one checkpoint, but it may be gone (deleted, never fully stored) or
        damaged. Then the job's older checkpoints (any attempt's, under the job's output
        prefixes) are tried, newest first. Usable means: the download matches the sha256
        the store recorded for it and `open_checkpoint(path)` (unpack, integrity check)
        does not raise. An outage of the store is not "unusable": it propagates, so the
        attempt fails as retryable instead of silently resuming from further back.
        """
        named = self.spec.resume_checkpoint
        if not named:
            return None
        for key in [named, *self._older_checkpoints(named)]:
            target = folder / Path(key).name
            try:
                opened = open_checkpoint(self._download_verified(key, target))
            except Exception as error:  # noqa: BLE001 - any damage: try an older one
                if isinstance(error, StorageError) and is_transient(error):
                    raise
                target.unlink(missing_ok=True)
                self.log(f"checkpoint {key} is not usable ({error}); trying an older one")
                continue
            self.log(f"resuming from {key}" + ("" if key == named else f" instead of {named}"))
            return opened
        self.log(f"no usable checkpoint of this job (asked for {named}); starting from step 0")
        return None

    def _older_checkpoints(self, named: str) -> list[str]:
        """The job's other checkpoints at or before the named one's step, newest first."""
        named_step = checkpoint_step(named)
        job_prefix = f"projects/{self.spec.project_id}/jobs/{self.spec.job_id}/"
        candidates = [
            info
            for info in self.store.list(job_prefix)
            if "/checkpoints/" in info.key and info.key != named
        ]
        if named_step is not None:
            candidates = [
                info for info in candidates if (checkpoint_step(info.key) or -1) <= named_step
            ]
        candidates.sort(
            key=lambda info: (_step_or_minus_one(info.key), info.last_modified), reverse=True
        )
        return [info.key for info in candidates]

    def _download_verified(self, key: str, target: Path) -> Path:
        sha256 = self.store.stat(key).sha256  # recorded by the store when it was written
        return self.download(key, target, sha256)

    def upload(self, path: Path, *parts: str, even_if_stopped: bool = False) -> StoredObject:
        """Put a local file under this attempt's output prefix (reporting it is the caller's).

        A cancel seen mid-upload ends it (JobStopped, no object left), so a big model file
        does not keep a cancelled job alive for minutes. ``even_if_stopped``: upload it
        whole all the same (the checkpoint a training loop wrote because it was cancelled).
        """
        if not even_if_stopped:
            self.check_stop()
        with path.open("rb") as stream:
            return self.store.put_stream(
                self.output_key(*parts),
                stream if even_if_stopped else _StopCheckingReader(stream, self),
                length=path.stat().st_size,
            )

    # stopping -----------------------------------------------------------------------
    def stop_reason(self) -> str | None:
        """ "cancelled", "superseded" or None; looks at the store at most every few seconds."""
        if self._stop_reason is not None:
            return self._stop_reason
        now = time.monotonic()
        if now - self._last_stop_check < self._stop_check_seconds:
            return None
        self._last_stop_check = now
        return self._refresh_stop_reason()

    def _refresh_stop_reason(self) -> str | None:
        if self.store.exists(superseded_marker_key(self.spec.job_id, self.spec.attempt)):
            self._stop_reason = "superseded"
        elif self.store.exists(cancel_marker_key(self.spec.job_id)):
            self._stop_reason = "cancelled"
        else:
            self.answer_resend_requests()
        return self._stop_reason

    # re-sends and the completion record -----------------------------------------------
    def answer_resend_requests(self) -> int:
        """Send again the events the platform asked for (it saw a gap); returns how many.

        Each request object is answered once. The events go out exactly as first sent
        (same seq, payload and time), so applying them twice changes nothing.
        """
        prefix = resend_request_prefix(self.spec.job_id, self.spec.attempt)
        resent = 0
        for info in self.store.list(prefix):
            if info.key in self._answered_resend_requests:
                continue
            seqs = self._requested_seqs(info.key)
            self._answered_resend_requests.add(info.key)
            found, missing = self.events.find(seqs)
            for event in found:
                self._send(event)
            resent += len(found)
            log.info(
                "job %s attempt %s: re-sent %d events on request %s",
                self.spec.job_id,
                self.spec.attempt,
                len(found),
                info.key,
            )
            if missing:
                self.log(f"cannot re-send events {_ranges(missing)}: no longer in the worker's log")
        return resent

    def _requested_seqs(self, key: str) -> list[int]:
        try:
            request = json.loads(self.store.get_bytes(key, max_size=1024 * 1024))
            seqs = request["seqs"]
            if not isinstance(seqs, list) or not all(
                isinstance(seq, int) and not isinstance(seq, bool) for seq in seqs
            ):
                raise ValueError("seqs must be a list of integers")
        except ObjectNotFoundError:
            return []  # withdrawn by the platform (the gap healed meanwhile)
        except (ValueError, KeyError, TypeError) as error:
            log.warning(
                "job %s: ignoring malformed re-send request %s: %s", self.spec.job_id, key, error
            )
            return []
        return [seq for seq in seqs if 0 <= seq < self._seq]

    def _finish(self, result: dict[str, Any]) -> JobEvent:
        """Number `finished`, write the completion record holding it, then send it."""
        with self._lock:
            finished = self._number(EventType.FINISHED, {"result": result})
        record = {
            "finished": finished.to_dict(),
            "events": [event.to_dict() for event in self.events.published()],
        }
        if self.muted or self._held is not None:
            self._send(finished)  # not the node that speaks for the attempt: no record
            return finished
        key = completion_record_key(self.spec.job_id, self.spec.attempt)
        try:
            self.store.put_bytes(key, json.dumps(record).encode(), content_type="application/json")
        except StorageError as error:
            # The outputs are stored; losing the success over its receipt would be worse.
            log.error("job %s: completion record %s not written: %s", self.spec.job_id, key, error)
        self._send(finished)
        return finished

    def is_current_attempt(self) -> bool:
        """Whether this attempt still owns the job: asked fresh before every MLflow write.

        Not the throttled stop check: a worker paused for longer than its lease resumes
        into a step that logs metrics, and that very first write must already see the
        superseded marker the reaper wrote meanwhile.
        """
        if self._stop_reason == "superseded":
            return False
        try:
            superseded = self.store.exists(
                superseded_marker_key(self.spec.job_id, self.spec.attempt)
            )
        except StorageError as error:
            log.warning(
                "job %s: superseded marker unreadable, not tracking: %s", self.spec.job_id, error
            )
            return False
        if superseded:
            self._stop_reason = "superseded"
        return not superseded

    def should_stop(self) -> bool:
        return self.stop_reason() is not None

    def check_stop(self) -> None:
        if self.should_stop():
            raise JobStopped(self._stop_reason)

    def _check_stop_before_publishing(self, key: str) -> None:
        """Nothing is published once a cancel is seen: look now, not a few seconds ago."""
        if self._stop_reason is None:
            self._last_stop_check = time.monotonic()
            self._refresh_stop_reason()
        if self._stop_reason is not None:
            log.info("job %s: %s, %s not published", self.spec.job_id, self._stop_reason, key)
            raise JobStopped(self._stop_reason)

    # heartbeats ---------------------------------------------------------------------
    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._heartbeat_stop.wait(self.spec.heartbeat_seconds):
                try:
                    self.emit(EventType.HEARTBEAT, {})
                except Exception:  # a broker hiccup must not kill the job; the lease has slack
                    log.exception("heartbeat of job %s failed", self.spec.job_id)

        self._heartbeat = threading.Thread(
            target=beat, name=f"heartbeat-{self.spec.job_id}", daemon=True
        )
        self._heartbeat.start()
        if self.usage is not None:
            self.usage.start()

    def stop_heartbeat(self) -> None:
        self._heartbeat_stop.set()
        if self.usage is not None:
            self.usage.stop()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=5)


class _StopCheckingReader:
    """A file being uploaded that looks for a cancel (throttled) between the reads."""

    def __init__(self, stream, ctx: JobContext) -> None:
        self._stream, self._ctx = stream, ctx

    def read(self, size: int = -1) -> bytes:
        self._ctx.check_stop()
        return self._stream.read(size)

    # Seekable, so the retrying store can send the file again after a transient error.
    def seekable(self) -> bool:
        return self._stream.seekable()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._stream.seek(offset, whence)

    def tell(self) -> int:
        return self._stream.tell()


def run_attempt(
    spec: JobSpec,
    sink: EventSink,
    store: ObjectStore,
    handlers: dict,
    *,
    flush_seconds: float | None = None,
) -> str:
    """Run one attempt of a job from start to its terminal event; returns that event's type.

    Returns only once the sink delivered every event, or after `flush_seconds` (default
    WORKER_EVENT_FLUSH_SECONDS) of waiting for a broker that is away.
    """
    ctx = JobContext(spec, sink, store)
    if spec.gang is not None:
        from workers.gang import GangMember

        ctx.gang = GangMember(spec, store)
        ctx.hold_events()
    try:
        return _run_attempt(ctx, handlers)
    finally:
        if ctx.gang is not None:
            ctx.gang.leave(ctx.terminal)
        if flush_seconds is None:
            flush_seconds = worker_runtime_config().event_flush_seconds
        ctx.flush_events(flush_seconds)


def _run_attempt(ctx: JobContext, handlers: dict) -> str:
    spec = ctx.spec
    try:
        stopped = ctx._refresh_stop_reason()
    except StorageError as error:  # the store is away for longer than our patience
        log.exception("job %s: cannot read its markers", spec.job_id)
        ctx.emit(EventType.FAILED, failure_payload(error))
        return EventType.FAILED
    if stopped is not None:
        # A stale message (re-dispatched or cancelled before it ran): do no work at all.
        if ctx._stop_reason == "cancelled":
            ctx.emit(EventType.CANCELLED, {"reason": "cancelled before start"})
            return EventType.CANCELLED
        return "skipped"
    ctx.tracker = start_tracking(spec, is_current=ctx.is_current_attempt)
    ctx.emit(
        EventType.STARTED,
        {"worker": f"{socket.gethostname()}", "tracking_run_id": ctx.tracker.run_id},
    )
    if ctx.tracker.problem:
        ctx.log(ctx.tracker.problem)
    ctx.start_heartbeat()
    outcome = _run_handler(ctx, handlers)
    if outcome != "superseded":  # the current attempt owns the run and closes it
        ctx.tracker.finish(_TRACKING_STATUS.get(outcome, "KILLED"))
    return outcome


# How a job's outcome closes its MLflow run.
_TRACKING_STATUS = {EventType.FINISHED: "FINISHED", EventType.FAILED: "FAILED"}


def _run_handler(ctx: JobContext, handlers: dict) -> str:
    spec = ctx.spec
    try:
        result = handlers[spec.kind](ctx)
    except JobStopped:
        result = None
    except JobFailed as error:
        payload: dict[str, Any] = {"error": str(error)}
        if error.retryable:
            payload[RETRYABLE_FIELD] = True
        ctx.emit(EventType.FAILED, payload)
        return EventType.FAILED
    except Exception as error:  # noqa: BLE001 - every crash becomes a failed event with its reason
        log.exception("job %s failed", spec.job_id)
        ctx.emit(EventType.FAILED, failure_payload(error))
        return EventType.FAILED
    finally:
        ctx.stop_heartbeat()
    if ctx._stop_reason == "superseded":
        return "superseded"  # the platform ignores this attempt's events from now on anyway
    if ctx._stop_reason == "cancelled":
        ctx.emit(EventType.CANCELLED, {"reason": "cancelled by user"})
        return EventType.CANCELLED
    ctx._finish(result or {})
    return EventType.FINISHED


def is_infrastructure_error(error: BaseException) -> bool:
    """An object store or broker that stayed away past our retries: not the job's fault."""
    if isinstance(error, StorageError):
        return is_transient(error)
    from kombu.exceptions import OperationalError

    return isinstance(error, OperationalError)


def failure_payload(error: BaseException) -> dict[str, Any]:
    """A failed event's payload; an infrastructure failure is marked for an automatic retry."""
    payload: dict[str, Any] = {"error": f"{type(error).__name__}: {error}"}
    if is_infrastructure_error(error):
        payload[RETRYABLE_FIELD] = True
    return payload


def _ranges(seqs: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7": a short way to name many sequence numbers."""
    parts: list[str] = []
    start = previous = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == previous + 1:
            previous = seq
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if seq is not None:
            start = previous = seq
    return ", ".join(parts)
