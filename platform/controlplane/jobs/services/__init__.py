"""Job life cycle: create, dispatch, apply worker events, cancel, reap lost jobs.

Invariants:
- A job's state changes only through a conditional UPDATE (`claim`), so two control
  workers applying events concurrently, or a redelivered event, cannot move it twice.
- An event is applied at most once: JobEventRecord's unique (job, attempt, seq) key.
- Events of an attempt other than the job's current one are dropped: after the reaper
  re-dispatches, a worker that was only slow (not dead) cannot change the job any more,
  and it learns so from the superseded marker in the object store.
- One lock order for everything that touches a job and its audit chain: the job row
  first (SELECT ... FOR UPDATE at the start of job_apply_event, job_cancel, job_resume,
  the reaper's pass over each job), then whatever the change derives (a dataset row),
  then the audit chain row last (audit_append). Never take the chain and then a job:
  two control processes would deadlock (one holding the chain, the other the job).
  A batch of events (job_apply_events) holds the job row for all of them and appends
  its audit events at its end, after every derived row.
- An event is acknowledged only once applied or parked (DeadLetterEvent): the control
  task retries database errors with backoff; nothing is dropped silently.
- Per attempt, JobEventStream counts the events applied and the highest seq: a gap is
  visible, healed by a resend request to the worker, and a `finished` is applied only
  after every earlier event of its attempt (or the attempt's completion record).
- Object-store markers written for a database change are written after it commits
  (cancel) or are harmless if it rolls back (superseded: the attempt is reaped again).
"""

from controlplane.jobs.services.delivery import (
    dead_letter_reapply,
    event_park,
    events_request_resends,
    job_reconcile_outputs,
)
from controlplane.jobs.services.events import (
    BatchOutcome,
    EventNotReady,
    job_apply_event,
    job_apply_events,
    stream_note_waiting_finish,
)
from controlplane.jobs.services.lifecycle import (
    RESUMABLE_KINDS,
    JobError,
    job_cancel,
    job_create,
    job_resume,
)
from controlplane.jobs.services.reaper import jobs_reap_expired

__all__ = [
    "RESUMABLE_KINDS",
    "BatchOutcome",
    "EventNotReady",
    "dead_letter_reapply",
    "event_park",
    "events_request_resends",
    "job_reconcile_outputs",
    "JobError",
    "job_apply_event",
    "job_apply_events",
    "job_cancel",
    "job_create",
    "jobs_reap_expired",
    "stream_note_waiting_finish",
    "job_resume",
]
