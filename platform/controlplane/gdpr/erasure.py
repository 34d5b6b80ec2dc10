"""Carrying out an approved erasure request (GDPR Art. 17): holds, job, delete, certificate.

    services.on_approved -> erasure_start(request)      holds + in progress + `erasure` job
    worker (workers/jobs/erasure.py)                    finds and rewrites, per version
    job succeeded -> erasure_job_succeeded(job, result) a new version per affected version
    erasure_advance(request)                            the rest, step by step (below)

`erasure_advance` is what the control worker runs after the job's success commits (a
task sent then) and on its beat (`control.gdpr_erasures_advance`, every minute), so a
lost message or a failed step is simply taken up again. Its steps, each recorded in
`request.progress["done"]` and each safe to repeat. A pass may die anywhere, and the
certificate must still count what the dead pass did, though the re-run finds it gone:
- a step ends with `_finish`: its account, its audit event and its name in `done` in one
  transaction (so a step is audited once, and either on the record or run again);
- what a step must not lose is on the account before it is destroyed: object version
  ids are listed and recorded before `delete_all_versions`, a completion record's key
  before its delete, an archive object's erasure before its old bytes go (the `account`
  hook of serving/erasure.py);
- a re-run adds to the account (union of version ids, archive objects merged by key,
  jobs scrubbed once) and never replaces it with the little it found left.

1. rebuild   a pipeline output's token shards are cut by the worker (the erased
             documents out of the token stream, byte-identical to re-tokenizing; the
             tokenizer kept), so nothing is rebuilt. Only an output whose shards could
             not be cut exactly, or whose tokenizer's vocabulary holds the subject
             (the job's `rebuild` says "tokens"), is rebuilt: a data_pipeline job with
             the old output's pipeline config on the new raw version; the request waits
             (visibly, "waiting for job N") until they end.
             So it does for queued or running jobs reading an old version, unless the
             policy's rule 4 says `running_jobs: cancel`: then they are cancelled.
2. delete    every stored version of every object of the old versions
             (`delete_all_versions` per DatasetFile key); the versions become `erased`
             (who, when, which request) and keep their rows. A store failure raises: the
             next pass retries, and deleting what is gone is a no-op.
3. archive   the subject out of the inference archive, with the hash of every key
             generation (serving/erasure.py).
4. models    every model version trained, transitively, on an old version is flagged
             (ErasedDataFlag).
5. scan      a residue scan of every object version under projects/<id>/ for the
             identifiers (workers/storage/residue.py); a hit fails the request with where
             (key, object version, line), never the text.
6. release   the request's erasure holds.
7. complete  the certificate: the request, reviewer, findings per version and file, what
             was rewritten and deleted, models flagged, the scan, audit event ids and the
             chain head.

The subject appears in audit events and progress only as keyed hashes; the identifiers
reach the worker only in the job's dispatch message (JobSpec.subject_secrets).
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

from django.db import connection, transaction
from django.db.models import Q
from django.utils import timezone

from controlplane.audit.services import audit_append
from controlplane.gdpr import identifiers as ids
from controlplane.gdpr import selectors, services
from controlplane.gdpr.models import (
    ErasedDataFlag,
    RequestKind,
    RequestScope,
    RequestState,
    SubjectRequest,
)

logger = logging.getLogger(__name__)

ADVANCE_TASK = "control.gdpr_erasure_advance"
_JSONL = tuple(s + c for s in (".jsonl", ".ndjson") for c in ("", ".gz", ".zst"))
MAX_HITS_SHOWN = 20
_LOCK_SPACE = 0x6764_7072  # "gdpr": advisory locks of erasure_advance, per request id


def reference_of(request: SubjectRequest) -> str:
    return f"erasure request #{request.pk}"


# -- start --------------------------------------------------------------------------------


def erasure_candidates(project) -> list:
    """The dataset versions an erasure searches: ready text versions of a dataset with a
    subject field, or holding JSONL, or a pipeline output (a manifest)."""
    from controlplane.datasets.models import DatasetVersion, VersionState

    found = []
    versions = (
        DatasetVersion.objects.filter(
            dataset__project=project, dataset__kind="text", state=VersionState.READY
        )
        .select_related("dataset")
        .prefetch_related("files")
        .order_by("dataset_id", "number")
    )
    for version in versions:
        names = [f.name for f in version.files.all()]
        output = any(n.rsplit("/", 1)[-1] == "manifest.json" for n in names)
        if (
            version.dataset.subject_field
            or output
            or any(n.lower().endswith(_JSONL) for n in names)
        ):
            found.append(version)
    return found


def _search_of(version) -> str:
    """How the job finds the subject: the subject index of a pipeline output or of a raw
    upload indexed at ingestion (datasets/subject_index.py); a raw upload from before
    that, by a streaming pass over its subject field; data with no subject field, by scan."""
    from controlplane.datasets.subject_index import RAW_INDEX_MANIFEST

    names = [f.name for f in version.files.all()]
    output = any(n.rsplit("/", 1)[-1] == "manifest.json" for n in names)
    if version.dataset.subject_field:
        return "index" if output or RAW_INDEX_MANIFEST in names else "field"
    return "scan"


def _job_request(request: SubjectRequest, versions: list):
    from controlplane.jobs.requests import JobRequest
    from workers.protocol import Queue

    inputs, listed = [], []
    for version in versions:
        files = []
        for f in sorted(version.files.all(), key=lambda f: (f.name, f.pk)):
            files.append({"name": f.name, "input": len(inputs)})
            inputs.append({"uri": f.object_key, "sha256": f.sha256, "size": f.size})
        listed.append(
            {
                "id": version.pk,
                "label": f"{version.dataset.slug} v{version.number}",
                "search": _search_of(version),
                "subject_field": version.dataset.subject_field,
                "files": files,
            }
        )
    params = {"request_id": request.pk, "versions": listed}
    return JobRequest(queue=Queue.CPU, params=params, inputs=inputs)


def erasure_start(request: SubjectRequest) -> SubjectRequest:
    """The `on_approved` hook: hold every searched version, start the job. Idempotent."""
    from controlplane.jobs.services.lifecycle import _job_insert
    from controlplane.policies.waivers import hold_place

    if request.kind != RequestKind.ERASURE or request.is_parent:
        return request  # an organisation request's children run the jobs (organisation.py)
    request = SubjectRequest.objects.select_related("project", "reviewed_by").get(pk=request.pk)
    project, reviewer = request.project, request.reviewed_by
    if any(
        not ids.readable(request.project_id, row.value_token) for row in request.identifiers.all()
    ):
        # Searching for a placeholder would find nobody and certify "found nowhere".
        services.request_mark_in_progress(request=request)
        return services.request_fail(
            request=request,
            reason="an identifier was sealed with a retired SECRET_KEY (add it to "
            "SECRET_KEY_FALLBACKS): the subject cannot be searched for",
        )
    with transaction.atomic():
        locked = SubjectRequest.objects.select_for_update().get(pk=request.pk)
        if locked.progress.get("job_id"):
            return locked  # started already (a hook run twice)
        request = services.request_mark_in_progress(request=request)
        versions = erasure_candidates(project)
        # Held before anything is searched: which of them hold the subject is what the
        # job finds out, and until then none may be trained on.
        holds = [
            hold_place(
                project=project,
                actor=reviewer,
                dataset_version_id=version.pk,
                reference=reference_of(request),
                reason="approved erasure in progress",
            ).pk
            for version in versions
        ]
        job = _job_insert(project, "erasure", _job_request(request, versions), reviewer, "")
        progress = {
            "job_id": job.pk,
            "searched": [{"id": v.pk, "label": f"{v.dataset.slug} v{v.number}"} for v in versions],
            "holds": holds,
            "done": ["started"],
            "steps": [_step("started", job_id=job.pk, versions_held=len(holds))],
        }
        request = services.request_record_progress(request=request, progress=progress)
    return request


def erasure_secrets(job) -> dict[str, Any]:
    """What the erasure job's dispatch message carries (JobSpec.subject_secrets)."""
    from controlplane.subject_keys import project_subject_keys, subject_key_id

    request = SubjectRequest.objects.select_related("project").get(pk=job.params["request_id"])
    keys = project_subject_keys(request.project)  # the current one first
    return {
        "identifiers": [i.value for i in selectors.identifiers_clear(request)],
        "keys": {subject_key_id(key): key for key in keys},
        "hashes": [row.subject_hash for row in request.identifiers.all()],
    }


# -- the job's success (in the control worker's event transaction) -----------------------


def _step(name: str, **details: Any) -> dict[str, Any]:
    """One row of the request page's progress table (name, state, detail)."""
    detail = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in details.items())
    at = timezone.now()
    return {
        "name": name.replace("_", " "),
        "state": "done",
        "detail": f"{at:%Y-%m-%d %H:%M:%S}" + (f": {detail}" if detail else ""),
        "at": at.isoformat(),
        **details,
    }


def _record(request: SubjectRequest, step: str, **details: Any) -> SubjectRequest:
    progress = dict(request.progress)
    progress["done"] = [*progress.get("done", []), step]
    progress["steps"] = [*progress.get("steps", []), _step(step, **details)]
    progress.pop("waiting", None)  # it moved on
    return services.request_record_progress(request=request, progress=progress)


def _subjects(request: SubjectRequest) -> list[str]:
    return [row.subject_hash for row in request.identifiers.all()]


def erasure_job_succeeded(job, result: dict) -> list[dict[str, Any]]:
    """A new version for each version the job found the subject in (rows only: the job
    stored the files). Returns the audit event for the job's batch."""
    from controlplane.datasets.models import Dataset, DatasetFile, DatasetVersion
    from controlplane.datasets.services import _role_of
    from controlplane.datasets.versioning import version_mark_ready, version_number_take
    from controlplane.storage import object_store

    if job.params.get("mode") == "find":
        from controlplane.gdpr.access import access_job_succeeded

        return access_job_succeeded(job, result)  # an access request: nothing is rewritten
    request = SubjectRequest.objects.select_related("project").get(pk=job.params["request_id"])
    if request.state != RequestState.IN_PROGRESS or "rewritten" in request.progress.get("done", []):
        return []
    location = object_store().location()
    rewritten, untouched = [], []
    for outcome in result.get("versions", []):
        old = DatasetVersion.objects.select_related("dataset").get(pk=outcome["id"])
        label = f"{old.dataset.slug} v{old.number}"
        if not outcome["found"]["records"]:
            untouched.append(
                {"id": old.pk, "label": label, "found": outcome["found"], **_not_searched(outcome)}
            )
            continue
        dataset = Dataset.objects.get(pk=old.dataset_id)
        new = DatasetVersion.objects.create(
            dataset=dataset,
            number=version_number_take(dataset),
            produced_by=job,
            created_by=request.reviewed_by,
            note=f"derived from v{old.number} by {reference_of(request)}",
            record_count=(
                old.record_count - outcome["found"]["records"]
                if old.record_count is not None
                else None
            ),
            storage_bucket=location.bucket,
            storage_region=location.region,
        )
        new.parents.add(old)
        DatasetFile.objects.bulk_create(
            DatasetFile(
                version=new,
                name=f["name"],
                role=_role_of(f["name"]),
                object_key=f["key"],
                size=f["size"],
                sha256=f["sha256"],
            )
            for f in outcome["new_files"]
        )
        version_mark_ready(
            new,
            None,
            action="dataset_version.derived",
            payload={
                "job_id": job.pk,
                "parent_version_id": old.pk,
                "request": request.pk,
                "subjects": _subjects(request),
            },
        )
        rewritten.append(
            {
                "old": old.pk,
                "old_label": label,
                "new": new.pk,
                "new_label": f"{dataset.slug} v{new.number}",
                "found": outcome["found"],
                "new_files": outcome["new_files"],
                "unchanged": outcome["unchanged"],
                "dropped": outcome["dropped"],
                "rebuild": outcome["rebuild"],
                "token_shards": outcome.get("token_shards", {}),
            }
        )
    progress = dict(request.progress)
    progress["versions"] = rewritten
    progress["not_affected"] = untouched
    # The request page's findings table: where, how many records, how it was searched.
    progress["findings"] = [
        {
            "source": entry.get("old_label") or entry["label"],
            "records": entry["found"]["records"],
            "detail": _finding_detail(entry),
        }
        for entry in [*rewritten, *untouched]
    ]
    request = services.request_record_progress(request=request, progress=progress)
    _record(request, "rewritten", versions=len(rewritten))
    transaction.on_commit(lambda: advance_soon(request.pk), robust=True)
    return [
        {
            "action": "subject_request.rewritten",
            "artifact": request,
            "payload": {
                "request": request.pk,
                "subjects": _subjects(request),
                "job_id": job.pk,
                "versions": [
                    {"old": r["old"], "new": r["new"], "records": r["found"]["records"]}
                    for r in rewritten
                ],
                "searched": len(result.get("versions", [])),
            },
        }
    ]


def _finding_detail(entry: dict) -> str:
    found = entry["found"]
    files = ", ".join(
        f"{f['name']}: {f['records']}" for f in found.get("files", []) if f["records"]
    )
    text = search_wording(found)
    if files:
        text += f"; {files}"
    if entry.get("new_label"):
        text += f"; rewritten as {entry['new_label']}"
    if entry.get("not_searched"):
        text += f"; not searched through: {entry['not_searched']}"
    return text


def search_wording(found: dict) -> str:
    """How a version was searched, in the request page's words: a version whose dataset
    has no subject field is "not indexed" (the issue's term) and was read by a bounded
    full-text scan, whose extent and budget are said."""
    from controlplane.sizes import human_size

    method = found.get("method")
    if method == "scan":
        text = "not indexed — searched by a full-text scan"
        if found.get("scan_budget_bytes"):
            scanned = human_size(found.get("bytes_scanned") or 0)
            text += f" ({scanned} of {human_size(found['scan_budget_bytes'])} budget)"
        return text
    if method == "index":
        return "searched through the subject index"
    if method == "field":
        return "searched by its subject field"
    return f"searched by {method or '?'}"


def _not_searched(outcome: dict) -> dict:
    return {"not_searched": outcome["not_searched"]} if outcome.get("not_searched") else {}


def advance_soon(request_id: int) -> None:
    """Ask the control worker to go on with the request (the beat does it otherwise)."""
    from controlplane.celery_app import app
    from workers.protocol import CONTROL_QUEUE

    try:
        app.send_task(ADVANCE_TASK, args=[request_id], queue=CONTROL_QUEUE)
    except Exception:  # noqa: BLE001 - the beat's pass takes it up
        logger.warning("could not send %s for request %s", ADVANCE_TASK, request_id)


# -- the rest, step by step ---------------------------------------------------------------


# The embedded default (SQLite) runs one control worker process: its passes are
# serialised in that process instead of by PostgreSQL's advisory locks.
_LOCAL_LOCKS: defaultdict[int, threading.Lock] = defaultdict(threading.Lock)


@contextmanager
def _advisory_lock(request_id: int):
    """One pass at a time per request (the task after commit and the beat may meet)."""
    if connection.vendor != "postgresql":
        lock = _LOCAL_LOCKS[request_id]
        got = lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                lock.release()
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [_LOCK_SPACE, request_id])
        got = cursor.fetchone()[0]
    try:
        yield got
    finally:
        if got:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LOCK_SPACE, request_id])


def erasure_advance(request: SubjectRequest) -> str:
    """Take the request as far as it can go now; returns where it stands ("completed",
    "failed", "waiting for job N", "busy"). Raises on a store failure (the step is
    retried by the next pass; the request stays in progress)."""
    with _advisory_lock(request.pk) as got:
        if not got:
            return "busy"
        request = SubjectRequest.objects.select_related("project", "reviewed_by").get(pk=request.pk)
        if request.kind != RequestKind.ERASURE or request.state != RequestState.IN_PROGRESS:
            return request.state
        if request.is_parent:
            return "organisation request: its children do the work"
        outcome = _advance(request)
        if outcome.startswith("waiting"):
            _note_waiting(request, outcome)
        return outcome


def _note_waiting(request: SubjectRequest, outcome: str) -> None:
    """What the request waits for, on its page ("waiting for job 12")."""
    request.refresh_from_db()
    if request.state == RequestState.IN_PROGRESS and request.progress.get("waiting") != outcome:
        progress = {**request.progress, "waiting": outcome}
        services.request_record_progress(request=request, progress=progress)


def _advance(request: SubjectRequest) -> str:
    from controlplane.jobs.models import Job, JobState

    done = request.progress.get("done", [])
    job = Job.objects.filter(pk=request.progress.get("job_id")).first()
    if job is None:
        services.request_fail(request=request, reason="the erasure job is missing")
        return "failed"
    if job.state in (JobState.FAILED, JobState.CANCELLED):
        services.request_fail(
            request=request, reason=f"erasure job {job.pk} {job.state}: {job.error}"
        )
        return "failed"
    if job.state != JobState.SUCCEEDED or "rewritten" not in done:
        return f"waiting for job {job.pk}"
    if "rebuilt" not in done:
        waiting = _rebuild(request)
        if waiting:
            return waiting
        request.refresh_from_db()
    if "deleted" not in request.progress.get("done", []):
        busy = _jobs_reading_old_versions(request)
        if busy and _running_jobs_mode(request) == "cancel":
            # The project's policy (rule 4) would rather stop them than be held up.
            request = _cancel_readers(request, busy)
            busy = []
        if busy:
            # Not pulled from under a running job: the erasure waits for it, visibly.
            return f"waiting for job {busy[0].pk} (it reads a version being erased)"
    steps = (
        ("deleted", _delete_old_versions),
        ("copies_scrubbed", _scrub_job_copies),
        ("archive_erased", _erase_archive),
        ("models_flagged", _flag_models),
    )
    for name, step in steps:
        if name not in request.progress.get("done", []):
            # Each step ends with `_finish` (its account, audit event and name in `done`
            # in one transaction) and adds to what a killed pass recorded before it.
            step(request)
            request.refresh_from_db()
    if "scanned" not in request.progress.get("done", []):
        scan = _residue_scan(request)
        audit = {"action": "subject_request.residue_scanned", "payload": scan}
        if not scan["clean"]:
            request = _finish(request, None, account={"scan": scan}, audit=audit)
            services.request_fail(request=request, reason=_residue_reason(scan))
            return "failed"
        request = _finish(request, "scanned", account={"scan": scan}, audit=audit, clean=True)
    if "released" not in request.progress.get("done", []):
        request = _finish(request, "released", holds=_release_holds(request))
    services.request_complete(request=request, certificate=_certificate(request))
    return "completed"


def _finish(
    request: SubjectRequest,
    step: str | None,
    *,
    account: dict[str, Any] | None = None,
    audit: dict[str, Any] | None = None,
    **details: Any,
) -> SubjectRequest:
    """A control step's end in one transaction: its account in `progress`, its audit
    event and its name in `done`. A pass killed before it runs the step again, which
    finds less (or nothing) left to do and adds to the account; one killed after it
    skips the step. `step` None: the account and the event only (a failing scan)."""
    with transaction.atomic():
        fresh = SubjectRequest.objects.select_for_update().get(pk=request.pk)
        if account:
            progress = {**fresh.progress, **account}
            fresh = services.request_record_progress(request=fresh, progress=progress)
        if audit:
            audit_append(
                project=request.project,
                actor=None,
                action=audit["action"],
                artifact=fresh,
                payload={"request": fresh.pk, "subjects": _subjects(fresh), **audit["payload"]},
            )
        return _record(fresh, step, **details) if step else fresh


def _account(request: SubjectRequest, **entries: Any) -> SubjectRequest:
    """Entries of the request's progress written now, on the row as it stands (locked):
    what a step must not lose if the pass dies before `_finish`."""
    with transaction.atomic():
        fresh = SubjectRequest.objects.select_for_update().get(pk=request.pk)
        progress = {**fresh.progress, **entries}
        return services.request_record_progress(request=fresh, progress=progress)


def _listed_versions(store, key: str) -> list[str]:
    """The stored version ids of `key`, listed before they are deleted: what a delete
    killed half-way took is no longer listed afterwards (workers/storage/base.py)."""
    return [v.version_id for v in store.list_versions(key)]


def _rebuild(request: SubjectRequest) -> str | None:
    """Start (once) and wait for the data_pipeline jobs that rebuild token shards."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job, JobState
    from controlplane.jobs.services import job_create

    versions = request.progress.get("versions", [])
    new_of = {entry["old"]: entry["new"] for entry in versions}
    rebuilds = list(request.progress.get("rebuilds", []))
    started = {r["for"] for r in rebuilds}
    for entry in versions:
        if "tokens" not in entry["rebuild"] or entry["old"] in started:
            continue
        old = DatasetVersion.objects.select_related("produced_by").get(pk=entry["old"])
        pipeline = old.produced_by
        source = (pipeline.params or {}).get("dataset_version_id") if pipeline else None
        if pipeline is None or pipeline.kind != "data_pipeline" or source not in new_of:
            rebuilds.append(
                {
                    "for": entry["old"],
                    "job_id": None,
                    "note": "no rewritten source version to run the pipeline on; the new "
                    "version has no token shards",
                }
            )
            continue
        target = new_of[source]
        # Idempotent after a crash between creating the job and recording it: the new
        # source version is the erasure's own, so a pipeline job on it is this one.
        job = Job.objects.filter(kind="data_pipeline", params__dataset_version_id=target).first()
        if job is None:
            params = {
                k: pipeline.params[k]
                for k in ("pipeline", "tokenizer", "val_fraction", "text_field")
                if k in pipeline.params
            }
            job = job_create(
                project=request.project,
                kind="data_pipeline",
                params={**params, "dataset_version_id": target},
                actor=request.reviewed_by,
            )
        rebuilds.append({"for": entry["old"], "job_id": job.pk, "source": target})
    if rebuilds != request.progress.get("rebuilds", []):
        progress = {**request.progress, "rebuilds": rebuilds}
        request = services.request_record_progress(request=request, progress=progress)
    for rebuild in rebuilds:
        if rebuild["job_id"] is None:
            continue
        job = Job.objects.get(pk=rebuild["job_id"])
        if job.state in (JobState.FAILED, JobState.CANCELLED):
            services.request_fail(
                request=request,
                reason=f"rebuilding token shards: job {job.pk} {job.state}: {job.error}",
            )
            return "failed"
        if job.state != JobState.SUCCEEDED:
            return f"waiting for job {job.pk}"
        rebuild["version"] = job.produced_versions.values_list("pk", flat=True).first()
    progress = {**request.progress, "rebuilds": rebuilds}
    request = services.request_record_progress(request=request, progress=progress)
    _record(request, "rebuilt", jobs=[r["job_id"] for r in rebuilds if r["job_id"]])
    return None


def _jobs_reading_old_versions(request: SubjectRequest) -> list:
    """Queued or running jobs of the project that read one of the old versions."""
    from controlplane.jobs.models import Job, JobState

    old_ids = [entry["old"] for entry in request.progress.get("versions", [])]
    if not old_ids:
        return []
    return list(
        Job.objects.filter(
            project=request.project,
            state__in=[JobState.QUEUED, JobState.RUNNING],
            params__dataset_version_id__in=old_ids,
        ).order_by("pk")
    )


def _running_jobs_mode(request: SubjectRequest) -> str:
    """Rule 4's `running_jobs` (wait or cancel); wait while the rule is off."""
    from controlplane.policies.rules import RuleKey
    from controlplane.policies.selectors import policy_in_force

    params = policy_in_force(request.project).enabled(RuleKey.PENDING_ERASURE)
    return params["running_jobs"] if params else "wait"


def _cancel_readers(request: SubjectRequest, jobs: list) -> SubjectRequest:
    """Cancel the jobs reading a version being erased, each audited with the request as
    the reason, and record them in the request's progress. A running job stops at its
    next check; what it reads is deleted meanwhile, which only hastens its end."""
    from controlplane.jobs.services import job_cancel

    cancelled = list(request.progress.get("cancelled_jobs", []))
    for job in jobs:
        if job.cancel_requested_at is None:
            with transaction.atomic():
                job_cancel(
                    job=job,
                    actor=request.reviewed_by,
                    reason={
                        "reason": f"erasure request #{request.pk}: it reads a version being erased",
                        "request": request.pk,
                    },
                )
        if job.pk not in cancelled:
            cancelled.append(job.pk)
    progress = {**request.progress, "cancelled_jobs": cancelled}
    request = services.request_record_progress(request=request, progress=progress)
    if "readers_cancelled" in request.progress.get("done", []):
        return request  # a retried pass (a store failure after the cancel)
    return _record(request, "readers_cancelled", jobs=cancelled)


def _delete_old_versions(request: SubjectRequest) -> None:
    from controlplane.datasets.models import DatasetFile, DatasetVersion, VersionState
    from controlplane.storage import object_store

    store = object_store()
    deleted = dict(request.progress.get("deleted", {}))  # object key -> version ids
    for entry in request.progress.get("versions", []):
        files = list(DatasetFile.objects.filter(version_id=entry["old"]).order_by("name", "id"))
        for file in files:
            # On the account key by key, before the versions go: a pass killed (or a
            # store failing) half-way leaves a true account, and the next pass deletes
            # what is left (nothing, for what is gone) and adds to it.
            key = file.object_key
            ids = sorted({*deleted.get(key, []), *_listed_versions(store, key)})
            if key not in deleted or ids != deleted[key]:
                deleted[key] = ids
                request = _account(request, deleted=deleted)
            gone = store.delete_all_versions(key)
            if set(gone) - set(ids):  # a version written between the listing and the delete
                deleted[key] = sorted({*ids, *gone})
                request = _account(request, deleted=deleted)
        with transaction.atomic():
            marked = DatasetVersion.objects.filter(
                pk=entry["old"], state=VersionState.READY
            ).update(
                state=VersionState.ERASED,
                erased_at=timezone.now(),
                erased_by=request.reviewed_by,
                erasure_request=request,
                # Both quote records (first records, report examples): the subject's perhaps.
                preview=None,
                report=None,
            )
            if marked:
                version = DatasetVersion.objects.select_related("dataset").get(pk=entry["old"])
                audit_append(
                    project=request.project,
                    actor=request.reviewed_by,
                    action="dataset_version.erased",
                    artifact=version,
                    payload={
                        "request": request.pk,
                        "subjects": _subjects(request),
                        "dataset_id": version.dataset_id,
                        "number": version.number,
                        "replaced_by": entry["new"],
                        "files": [
                            {
                                "name": f.name,
                                "object_key": f.object_key,
                                "sha256": f.sha256,
                                "deleted_versions": deleted.get(f.object_key, []),
                            }
                            for f in files
                        ],
                    },
                )
    _finish(request, "deleted", objects=len(deleted))


def _without_examples(value: Any) -> Any:
    """A pipeline report without its example snippets (they quote records)."""
    if isinstance(value, dict):
        return {
            k: ([] if k in ("examples", "problem_examples") else _without_examples(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_without_examples(v) for v in value]
    return value


def _scrubbed(result: Any, request: SubjectRequest) -> Any:
    if not isinstance(result, dict):
        return result
    clean = {**result, "erased_by_request": request.pk}
    if "preview" in clean:
        clean["preview"] = []
    if "report" in clean:
        clean["report"] = _without_examples(clean["report"])
    if "summary" in clean:
        clean["summary"] = ""
    return clean


def _scrub_job_copies(request: SubjectRequest) -> None:
    """What the jobs that made the old versions copied of their records: the result's
    first records and report examples (job row, its `finished` event rows) and the
    attempts' completion records in the store (which repeat the `finished` event)."""
    from controlplane.datasets.models import DatasetVersion
    from controlplane.jobs.models import Job, JobEventRecord
    from controlplane.storage import object_store
    from workers.protocol import EventType, completion_record_key

    old_ids = [entry["old"] for entry in request.progress.get("versions", [])]
    job_ids = sorted(
        {
            pk
            for pk in DatasetVersion.objects.filter(pk__in=old_ids).values_list(
                "produced_by_id", flat=True
            )
            if pk is not None and pk != request.progress.get("job_id")
        }
    )
    store = object_store()
    for job in Job.objects.filter(pk__in=job_ids).order_by("pk"):
        for attempt in range(1, job.attempt + 1):
            key = completion_record_key(job.pk, attempt)
            recorded = request.progress.get("completion_records_deleted", [])
            if key not in recorded and _listed_versions(store, key):
                # On the account before it goes: a pass killed right after the delete
                # would find nothing left to count.
                request = _account(request, completion_records_deleted=[*recorded, key])
            store.delete_all_versions(key)
        if job.pk in request.progress.get("scrubbed_jobs", []):
            continue  # scrubbed by a pass that died later on
        with transaction.atomic():
            Job.objects.filter(pk=job.pk).update(result=_scrubbed(job.result, request))
            for event in JobEventRecord.objects.filter(job=job, type=EventType.FINISHED):
                payload = {
                    **event.payload,
                    "result": _scrubbed(event.payload.get("result"), request),
                }
                JobEventRecord.objects.filter(pk=event.pk).update(payload=payload)
            scrubbed = [*request.progress.get("scrubbed_jobs", []), job.pk]
            request = _account(request, scrubbed_jobs=scrubbed)
            audit_append(
                project=request.project,
                actor=None,
                action="job.result_scrubbed",
                artifact=job,
                payload={
                    "request": request.pk,
                    "subjects": _subjects(request),
                    "removed": ["preview", "report examples", "summary"],
                    "completion_records_deleted": [
                        k
                        for k in request.progress.get("completion_records_deleted", [])
                        if f"/{job.pk}/" in k
                    ],
                },
            )
    _finish(request, "copies_scrubbed", jobs=job_ids)


def _erase_archive(request: SubjectRequest) -> None:
    from controlplane.serving.erasure import archive_erase_subject
    from controlplane.subject_keys import subject_hashes

    def account(erased) -> None:
        # Called before an object's old bytes go (serving/erasure.py): killed after it,
        # the next pass finds the object again, and the account merges the two by key.
        nonlocal request
        request = _archive_account(request, [asdict(erased)])

    for identifier in selectors.identifiers_clear(request):
        for digest in subject_hashes(request.project, identifier.value):
            report = archive_erase_subject(
                project=request.project, subject_hash=digest, account=account
            )
            if report.objects:  # with the version ids the deletes returned
                request = _archive_account(request, [asdict(o) for o in report.objects])
    summary = _archive_summary(request.progress.get("archive", {}).get("objects", []))
    _finish(
        request,
        "archive_erased",
        account={"archive": summary},
        audit={
            "action": "subject_request.archive_erased",
            "payload": {
                "records_removed": summary["records_removed"],
                "objects": [
                    {
                        "key": o["key"],
                        "new_key": o["new_key"],
                        "deleted_versions": o["deleted_versions"],
                    }
                    for o in summary["objects"]
                ],
            },
        },
        records_removed=summary["records_removed"],
    )


def _archive_account(request: SubjectRequest, erased: list[dict]) -> SubjectRequest:
    """The archive objects erased so far, merged by key with what earlier passes recorded:
    a re-run after a kill sees an object again with less left in it (no kept records, its
    versions gone), so every field keeps what the fuller report said."""
    with transaction.atomic():
        fresh = SubjectRequest.objects.select_for_update().get(pk=request.pk)
        objects = {o["key"]: o for o in fresh.progress.get("archive", {}).get("objects", [])}
        objects = _merged_objects(objects, erased)
        progress = {**fresh.progress, "archive": _archive_summary(list(objects.values()))}
        return services.request_record_progress(request=fresh, progress=progress)


def _merged_objects(objects: dict[str, dict], erased: list[dict]) -> dict[str, dict]:
    for entry in erased:
        before = objects.get(entry["key"])
        if before is None:
            objects[entry["key"]] = entry
            continue
        merged = {k: before.get(k) if before.get(k) is not None else v for k, v in entry.items()}
        merged["records_removed"] = max(before["records_removed"], entry["records_removed"])
        merged["records_kept"] = max(before["records_kept"], entry["records_kept"])
        merged["deleted_versions"] = [
            *before["deleted_versions"],
            *(v for v in entry["deleted_versions"] if v not in before["deleted_versions"]),
        ]
        objects[entry["key"]] = merged
    return objects


def _archive_summary(objects: list[dict]) -> dict:
    return {"records_removed": sum(o["records_removed"] for o in objects), "objects": objects}


def models_trained_on(version_ids: list[int]) -> list:
    """Model versions trained on any of the dataset versions, transitively: through the
    lineage recorded at registration, and through models fine-tuned from them."""
    from controlplane.registry.models import ModelVersion

    found = {
        mv.pk: mv for mv in ModelVersion.objects.filter(dataset_versions__in=version_ids).distinct()
    }
    frontier = list(found)
    while frontier:
        children = ModelVersion.objects.filter(base_version_id__in=frontier).exclude(
            pk__in=list(found)
        )
        frontier = []
        for child in children:
            found[child.pk] = child
            frontier.append(child.pk)
    return sorted(found.values(), key=lambda mv: mv.pk)


def _flag_models(request: SubjectRequest) -> None:
    from controlplane.datasets.models import DatasetVersion

    old_ids = [entry["old"] for entry in request.progress.get("versions", [])]
    labels = {
        v.pk: f"{v.dataset.slug} v{v.number}"
        for v in DatasetVersion.objects.filter(pk__in=old_ids).select_related("dataset")
    }
    flagged = []
    for model_version in models_trained_on(old_ids):
        used = set(model_version.dataset_versions.values_list("pk", flat=True)) & set(old_ids)
        with transaction.atomic():
            flag, created = ErasedDataFlag.objects.get_or_create(
                model_version=model_version,
                request=request,
                defaults={
                    "dataset_versions": [{"id": i, "label": labels[i]} for i in sorted(used)]
                },
            )
            if created:
                audit_append(
                    project=request.project,
                    actor=None,
                    action="model_version.trained_on_erased",
                    artifact=model_version,
                    payload={
                        "request": request.pk,
                        "subjects": _subjects(request),
                        "dataset_versions": flag.dataset_versions,
                    },
                )
        flagged.append(
            {
                "id": model_version.pk,
                "label": f"{model_version.model.name} v{model_version.number}",
                "dataset_versions": flag.dataset_versions,
            }
        )
    # Recomputed in full by a re-run (the flags are made once): the same list.
    _finish(request, "models_flagged", account={"models_flagged": flagged}, models=len(flagged))


def _residue_scan(request: SubjectRequest) -> dict:
    """The scan's summary (audited with the account by `_finish`)."""
    from controlplane.jobs.models import Job
    from controlplane.storage import object_store
    from workers.storage.residue import scan_objects

    # The project's objects, and what its jobs left under system/ (completion records,
    # which repeat a job's result).
    prefixes = [f"projects/{request.project_id}/"] + [
        f"system/jobs/{pk}/"
        for pk in Job.objects.filter(project=request.project)
        .order_by("pk")
        .values_list("pk", flat=True)
    ]
    needles = [i.value for i in selectors.identifiers_clear(request)]
    report = scan_objects(object_store(), prefixes, needles)
    summary = {
        "clean": report.clean,
        "prefixes": prefixes,
        "object_versions_read": report.objects,
        "bytes_stored": report.bytes_stored,
        "bytes_decoded": report.bytes_decoded,
        "hit_count": report.hit_count,
        # Where, never what: no context (it quotes the text around the identifier).
        "hits": [
            {"key": h.key, "version_id": h.version_id, "line": h.line, "identifier": h.needle}
            for h in report.hits[:MAX_HITS_SHOWN]
        ],
        "errors": [
            {"key": e.get("key"), "error": str(e.get("error", ""))[:200]} for e in report.errors
        ],
    }
    return summary


def _residue_reason(scan: dict) -> str:
    where = ", ".join(
        f"{h['key']} (version {h['version_id']}, line {h['line']})" for h in scan["hits"]
    )
    errors = ", ".join(e["key"] or "?" for e in scan["errors"])
    parts = []
    if scan["hit_count"]:
        parts.append(f"the residue scan found the subject {scan['hit_count']} time(s): {where}")
    if errors:
        parts.append(f"objects that could not be read: {errors}")
    return "; ".join(parts) or "the residue scan was not clean"


def _release_holds(request: SubjectRequest) -> list[int]:
    from controlplane.policies.models import ErasureHold
    from controlplane.policies.waivers import hold_release

    held = ErasureHold.objects.filter(project=request.project, reference=reference_of(request))
    for hold in held.filter(released_at__isnull=True):
        hold_release(hold=hold, actor=request.reviewed_by)
    # Every hold of the request, released by this pass or by one that died before its
    # record: the same list either way.
    return sorted(held.values_list("pk", flat=True))


def certificate_head(request: SubjectRequest) -> dict[str, Any]:
    """What every certificate (erasure or access) says of the request and its review."""
    return {
        "request": {
            "id": request.pk,
            "kind": request.kind,
            "project": request.project_id,
            "subjects": _subjects(request),
            "identifier_types": [row.type for row in request.identifiers.all()],
            "received_at": request.received_at.isoformat(),
            "deadline_at": request.deadline_at.isoformat(),
            "legal_basis": request.legal_basis,
        },
        "reviewer": {
            "id": request.reviewed_by_id,
            "username": request.reviewed_by.username if request.reviewed_by else "",
            "reviewed_at": request.reviewed_at.isoformat() if request.reviewed_at else None,
        },
    }


def certificate_evidence(request: SubjectRequest, events: Q) -> dict[str, Any]:
    """The audit events (those `events` selects) and the chain head at completion."""
    from controlplane.audit.models import AuditChain, AuditEvent

    chain = AuditChain.objects.filter(project=request.project).first()
    found = AuditEvent.objects.filter(project_id=request.project_id).filter(events)
    return {
        "audit_events": sorted(found.values_list("pk", flat=True)),
        "chain_head": {"length": chain.length, "hash": chain.head_hash} if chain else None,
        "completed_at": timezone.now().isoformat(),
    }


def _certificate(request: SubjectRequest) -> dict:
    from controlplane.datasets.models import DatasetFile

    progress = request.progress
    events = Q(payload__request=request.pk) | Q(payload__reference=reference_of(request))
    deleted = progress.get("deleted", {})
    files = {
        f.object_key: f
        for f in DatasetFile.objects.filter(
            version_id__in=[e["old"] for e in progress.get("versions", [])]
        )
    }
    return {
        **certificate_head(request),
        "erasure_job": progress.get("job_id"),
        "searched": progress.get("searched", []),
        "found": [
            {"version": e["old"], "label": e["old_label"], **e["found"]}
            for e in progress.get("versions", [])
        ]
        + [
            {"version": e["id"], "label": e["label"], **e["found"]}
            for e in progress.get("not_affected", [])
        ],
        "found_nowhere": not progress.get("versions")
        and not progress.get("archive", {}).get("records_removed"),
        "rewritten": [
            {
                "old_version": e["old"],
                "old_label": e["old_label"],
                "new_version": e["new"],
                "new_label": e["new_label"],
                "files": [
                    {k: f[k] for k in ("name", "key", "sha256", "size", "status")}
                    for f in e["new_files"]
                ],
                "dropped": e["dropped"],
                "rebuild": e["rebuild"],
                # how the token shards were treated: "cut" (which shards, documents and
                # tokens removed, the tokenizer check) or "rebuild" and why
                "token_shards": e.get("token_shards", {}),
            }
            for e in progress.get("versions", [])
        ],
        "rebuilds": progress.get("rebuilds", []),
        "deleted": [
            {
                "key": key,
                "object_versions": ids,
                "dataset_version": files[key].version_id if key in files else None,
                "name": files[key].name if key in files else "",
                "sha256": files[key].sha256 if key in files else "",
            }
            for key, ids in sorted(deleted.items())
        ],
        "erased_versions": [e["old"] for e in progress.get("versions", [])],
        "archive": progress.get("archive", {}),
        "models_flagged": progress.get("models_flagged", []),
        "residue_scan": progress.get("scan", {}),
        **certificate_evidence(request, events),
    }


def rebuild_finished(job) -> None:
    """A data_pipeline job ended on a version an erasure rewrote: the erasure may go on
    (sent after commit; the beat's pass covers a lost message)."""
    from controlplane.datasets.models import DatasetVersion

    source = (
        DatasetVersion.objects.filter(pk=(job.params or {}).get("dataset_version_id"))
        .select_related("produced_by")
        .first()
    )
    producer = source.produced_by if source is not None else None
    if producer is not None and producer.kind == "erasure":
        request_id = producer.params.get("request_id")
        transaction.on_commit(lambda: advance_soon(request_id), robust=True)


def erasures_advance_all() -> dict[int, str]:
    """The beat's pass: every erasure in progress, as far as each can go, and every
    approved one whose start failed (its hook is logged, not retried, by services)."""
    return advance_all(RequestKind.ERASURE, start=erasure_start, advance=erasure_advance)


def advance_all(kind: str, *, start, advance) -> dict[int, str]:
    """A beat pass over one kind of request: approved ones whose hook failed are started,
    those in progress go as far as they can; one request's error spares the rest."""
    outcome: dict[int, str] = {}
    # Organisation requests run no job: their pass is organisation.parents_advance_all.
    rows = SubjectRequest.objects.filter(kind=kind, scope=RequestScope.PROJECT)
    for request in rows.filter(state=RequestState.APPROVED).order_by("pk"):
        try:
            start(request)
        except Exception as error:  # noqa: BLE001 - reported, retried on the next pass
            logger.exception("%s request %s could not start", kind, request.pk)
            outcome[request.pk] = f"not started: {type(error).__name__}"
    for request in rows.filter(state=RequestState.IN_PROGRESS).order_by("pk"):
        try:
            outcome[request.pk] = advance(request)
        except Exception as error:  # noqa: BLE001 - one request's store error spares the rest
            logger.exception("%s request %s: this pass stopped", kind, request.pk)
            outcome[request.pk] = f"retrying: {type(error).__name__}"
    return outcome
