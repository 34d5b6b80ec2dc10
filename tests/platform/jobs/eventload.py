"""Synthetic worker event streams for real jobs, sent through a broker to a real control
worker: what the event-delivery fault tests and bench/bench_events.py drive.

A `SyntheticJob` emits what a training attempt does (started, metrics, heartbeats,
checkpoints, artifacts, then finished or cancelled) with gap-free seqs; `EventSender`
publishes them on the `control` queue one event per message (`control.apply_event`, as
workers did before batching), `BatchingSender` as workers do now (one BufferedSink per
attempt, `control.apply_events` batches);
`ControlWorker` runs `celery -A controlplane.celery_app worker -Q control --pool prefork`;
`Resender` answers the platform's resend requests as a worker's event log does;
`stream_problems` lists whatever the platform did not apply exactly once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from workers.protocol import (
    APPLY_EVENT_TASK,
    CONTROL_QUEUE,
    EventType,
    JobEvent,
    resend_request_prefix,
)

ROOT = Path(__file__).resolve().parents[3]


@dataclass
class SyntheticJob:
    job_id: int
    output_prefix: str  # the job's prefix (Job.output_prefix)
    steps: int = 20  # one metric event per step
    checkpoint_every: int = 8
    heartbeat_every: int = 5
    outputs: tuple[str, ...] = ("model/weights.bin", "model/config.json", "samples.txt")
    ending: EventType = EventType.FINISHED
    attempt: int = 1
    _events: list[JobEvent] = field(default_factory=list, init=False)

    def key(self, name: str) -> str:
        return f"{self.output_prefix}attempt-{self.attempt}/{name}"

    def events(self) -> list[JobEvent]:
        if self._events:
            return self._events
        payloads: list[tuple[EventType, dict]] = [(EventType.STARTED, {"worker": "synthetic"})]
        for step in range(1, self.steps + 1):
            payloads.append(
                (EventType.METRIC, {"step": step, "values": {"loss": 5.0 / step, "lr": 0.001}})
            )
            if step % self.heartbeat_every == 0:
                payloads.append((EventType.HEARTBEAT, {}))
            if step % self.checkpoint_every == 0:
                payloads.append((EventType.CHECKPOINT, self._object(f"ckpt-{step}.pt", step)))
        if self.ending == EventType.FINISHED:
            payloads += [(EventType.ARTIFACT, self._object(name)) for name in self.outputs]
            payloads.append((EventType.FINISHED, {"result": {"steps": self.steps}}))
        else:
            payloads.append((EventType.CANCELLED, {"reason": "cancelled by user"}))
        self._events = [
            JobEvent(job_id=self.job_id, attempt=self.attempt, seq=seq, type=kind, payload=data)
            for seq, (kind, data) in enumerate(payloads)
        ]
        return self._events

    def _object(self, name: str, step: int | None = None) -> dict:
        payload = {"name": name, "key": self.key(name), "sha256": "0" * 64, "size": 3}
        if step is not None:
            payload["step"] = step
        return payload

    @property
    def checkpoint_count(self) -> int:
        return self.steps // self.checkpoint_every

    @property
    def artifact_count(self) -> int:
        outputs = len(self.outputs) if self.ending == EventType.FINISHED else 0
        return outputs + self.checkpoint_count


def interleave(jobs: Iterable[SyntheticJob], *, seed: int = 0) -> list[JobEvent]:
    """All jobs' events mixed as many workers would send them: each job's in seq order."""
    rng = random.Random(seed)
    queues = [list(job.events()) for job in jobs]
    mixed: list[JobEvent] = []
    while queues:
        queue = rng.choice(queues)
        mixed.append(queue.pop(0))
        if not queue:
            queues.remove(queue)
    return mixed


class _Sender:
    def send(self, event: JobEvent) -> None:
        raise NotImplementedError

    def send_at_rate(
        self,
        events: list[JobEvent],
        per_second: float,
        *,
        on_progress: Callable[[int], None] | None = None,
    ) -> list[float]:
        """Send on a fixed schedule (not faster when behind); returns each send's time."""
        sent_at: list[float] = []
        start = time.time()
        for index, event in enumerate(events):
            due = start + index / per_second
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            sent_at.append(time.time())
            self.send(event)
            if on_progress is not None:
                on_progress(index)
        return sent_at


class Resender:
    """What a worker's bounded event log does for the platform: every resend request
    object under the attempt's prefix is answered once, by sending the named seqs again,
    unchanged. Kombu's Redis transport can lose a message taken off the queue by a worker
    that is killed before it registers the message as unacked (kombu #305); the gap it
    leaves is healed this way, by the platform asking and the worker re-sending."""

    def __init__(self, sender: _Sender, jobs: Iterable[SyntheticJob], store, interval=0.5):
        self.sender, self.jobs, self.store, self.interval = sender, list(jobs), store, interval
        self.answered: set[str] = set()
        self.resent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resender", daemon=True)

    def __enter__(self) -> Resender:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            for job in self.jobs:
                self._answer(job)

    def _answer(self, job: SyntheticJob) -> None:
        prefix = resend_request_prefix(job.job_id, job.attempt)
        for info in self.store.list(prefix):
            if info.key in self.answered:
                continue
            self.answered.add(info.key)
            seqs = json.loads(self.store.get_bytes(info.key))["seqs"]
            events = job.events()
            for seq in seqs:
                if 0 <= seq < len(events):
                    self.sender.send(events[seq])
                    self.resent += 1


def _celery_for(broker_url: str):
    from celery import Celery

    app = Celery("synthetic-worker", broker=broker_url)
    app.conf.update(task_serializer="json", accept_content=["json"])
    return app


class EventSender(_Sender):
    """Publishes events on the control queue of a broker, one per message (old workers)."""

    def __init__(self, broker_url: str):
        self.app = _celery_for(broker_url)
        # An explicit connection: Celery lets CELERY_BROKER_URL in the environment win
        # over `broker=`, and the test process has the shared Redis there.
        self.connection = self.app.connection_for_write(broker_url)

    def send(self, event: JobEvent) -> None:
        # Stamped now, as a worker stamps an event when it emits it (lag is measured from it).
        message = {**event.to_dict(), "time": time.time()}
        self.app.send_task(
            APPLY_EVENT_TASK,
            args=[message],
            queue=CONTROL_QUEUE,
            connection=self.connection,
        )

    def close(self) -> None:
        self.connection.release()
        self.app.close()


class BatchingSender(_Sender):
    """Publishes events as a worker's sink does now: each attempt's through its own
    `BufferedSink(ControlQueueSink)`, whose thread sends `control.apply_events` batches."""

    def __init__(self, broker_url: str, *, batch_seconds: float | None = None):
        from workers.events import DEFAULT_BATCH_SECONDS

        self.broker_url = broker_url
        self.app = _celery_for(broker_url)
        self.batch_seconds = DEFAULT_BATCH_SECONDS if batch_seconds is None else batch_seconds
        self._sinks: dict[tuple[int, int], tuple] = {}

    def send(self, event: JobEvent) -> None:
        self._sink_for(event).send(dataclasses.replace(event, time=time.time()))

    def _sink_for(self, event: JobEvent):
        from workers.events import BufferedSink, ControlQueueSink

        key = (event.job_id, event.attempt)
        if key not in self._sinks:
            # One connection per sending thread: a kombu connection is not thread-safe.
            connection = self.app.connection_for_write(self.broker_url)
            sink = BufferedSink(
                ControlQueueSink(self.app, connection=connection),
                batch_seconds=self.batch_seconds,
            )
            self._sinks[key] = (sink, connection)
        return self._sinks[key][0]

    @property
    def messages(self) -> int:
        return sum(sink.messages for sink, _ in self._sinks.values())

    def flush(self, timeout: float = 30) -> bool:
        return all(sink.flush(timeout) for sink, _ in self._sinks.values())

    def close(self) -> None:
        self.flush()
        for sink, connection in self._sinks.values():
            sink.stop()
            connection.release()
        self.app.close()


def control_env(*, database_url: str, broker_url: str, data_dir: Path, **extra: str) -> dict:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join([str(ROOT / "platform"), str(ROOT)]),
        DJANGO_SETTINGS_MODULE="controlplane.settings",
        DATABASE_URL=database_url,
        CELERY_BROKER_URL=broker_url,
        CONTROLPLANE_DATA_DIR=str(data_dir),
        **extra,
    )
    return env


class ControlWorker:
    """`celery -A controlplane.celery_app worker -Q control --pool prefork -c N`."""

    def __init__(self, env: dict, log: Path, *, concurrency: int = 3):
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane.celery_app",
                "worker",
                "-Q",
                CONTROL_QUEUE,
                "--pool",
                "prefork",
                "-c",
                str(concurrency),
                "-n",
                f"control-{os.getpid()}-{time.monotonic_ns()}@test",
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if " ready." in self.log.read_text(errors="replace"):
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"control worker not ready:\n{self.log.read_text()[-3000:]}")

    def pool_pids(self) -> list[int]:
        import psutil

        return [child.pid for child in psutil.Process(self.process.pid).children()]

    def kill_pool_process(self) -> int:
        """SIGKILL one pool process (the main process forks a replacement)."""
        pid = random.choice(self.pool_pids())
        os.kill(pid, signal.SIGKILL)
        return pid

    def kill(self) -> None:
        """SIGKILL the main process and its pool at once: no goodbye, no requeue."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


class Beat:
    """The reaper's schedule as its own process (`celery beat`)."""

    def __init__(self, env: dict, log: Path, schedule: Path):
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "controlplane.celery_app",
                "beat",
                "-s",
                str(schedule),
                "--loglevel",
                "INFO",
            ],
            cwd=ROOT,
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)


def applied_count(job_ids: Iterable[int]) -> int:
    from controlplane.jobs.models import JobEventRecord

    return JobEventRecord.objects.filter(job_id__in=list(job_ids)).count()


def wait_for(predicate: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def stream_problems(jobs: Iterable[SyntheticJob]) -> list[str]:
    """What the platform did not apply exactly once, per job (empty: all well)."""
    from controlplane.audit.models import AuditEvent
    from controlplane.jobs.models import (
        DeadLetterEvent,
        Job,
        JobArtifact,
        JobEventRecord,
        JobMetric,
    )

    problems: list[str] = []
    for synthetic in jobs:
        job = Job.objects.get(pk=synthetic.job_id)
        where = f"job {job.pk}"
        expected_seqs = list(range(len(synthetic.events())))
        seqs = sorted(
            JobEventRecord.objects.filter(job=job, attempt=synthetic.attempt).values_list(
                "seq", flat=True
            )
        )
        if seqs != expected_seqs:
            missing = sorted(set(expected_seqs) - set(seqs))
            problems.append(f"{where}: {len(seqs)} events applied, missing {missing[:20]}")
        if job.attempt != synthetic.attempt:
            problems.append(f"{where}: re-run (attempt {job.attempt})")
        expected_state = "succeeded" if synthetic.ending == EventType.FINISHED else "cancelled"
        if job.state != expected_state:
            problems.append(f"{where}: {job.state}, expected {expected_state}")
        metrics = JobMetric.objects.filter(job=job).count()
        if metrics != 2 * synthetic.steps:
            problems.append(f"{where}: {metrics} metric points, expected {2 * synthetic.steps}")
        artifacts = JobArtifact.objects.filter(job=job).count()
        if artifacts != synthetic.artifact_count:
            problems.append(
                f"{where}: {artifacts} artifact rows, expected {synthetic.artifact_count}"
            )
        audited = AuditEvent.objects.filter(
            action__in=["output.created", "checkpoint.created"], payload__job_id=job.pk
        ).count()
        if audited != synthetic.artifact_count:
            problems.append(f"{where}: {audited} artifact audit events")
        finishes = AuditEvent.objects.filter(
            artifact_type="job",
            artifact_id=str(job.pk),
            action__in=["job.succeeded", "job.cancelled", "job.failed"],
        ).count()
        if finishes != 1:
            problems.append(f"{where}: {finishes} terminal audit events")
        if DeadLetterEvent.objects.filter(job=job).exists():
            problems.append(
                f"{where}: dead letters {list(DeadLetterEvent.objects.filter(job=job).values_list('seq', 'error'))}"
            )
    return problems
