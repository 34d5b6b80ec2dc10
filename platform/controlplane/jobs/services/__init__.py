"""Job life cycle: create, dispatch, apply worker events, cancel, reap lost jobs.

Invariants:
- A job's state changes only through a conditional UPDATE (`claim`), so two control
  workers applying events concurrently, or a redelivered event, cannot move it twice.
- An event is applied at most once: JobEventRecord's unique (job, attempt, seq) key.
- Events of an attempt other than the job's current one are dropped: after the reaper
  re-dispatches, a worker that was only slow (not dead) cannot change the job any more,
  and it learns so from the superseded marker in the object store.
"""

from controlplane.jobs.services.events import job_apply_event
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
    "JobError",
    "job_apply_event",
    "job_cancel",
    "job_create",
    "jobs_reap_expired",
    "job_resume",
]
