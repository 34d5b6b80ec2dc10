"""The MLflow registry mirror: MLflow's Model Registry reconciled with ours, one model at a time.

    request_mlflow_sync(model)     # in the transaction that changed the model: PENDING + a nudge
    sync_model(model.pk)           # the control worker: MLflow made equal to our rows

`sync_model` reads what the registry says now and makes MLflow say the same; it never
replays a history of changes, so a retry, a duplicate message or a sync that runs after
several changes all converge on the same result:

- the registered model: the same name, our description, tags `controlplane.project`,
  `controlplane.model_id` (a model of that name claimed by another of our models is an
  error, never merged);
- every READY version: found in MLflow by its tag `controlplane.version_id`, so a version
  created by an attempt that failed later is found, never created twice; a missing one is
  logged as a pyfunc model (workers/mlflow_pyfunc.py: the version's files, read back from
  the object store and checked against their sha256, with the engine behind `predict`) in
  a run of the experiment `<project slug>/registry`, then registered with tags linking
  back to the project, source job, dataset versions and the weights' sha256;
- versions deleted (or refused) here: deleted there; versions without our tag are a
  user's own and left alone;
- aliases: set to the MLflow version of the one we point at; aliases we do not have, deleted.

The outcome is recorded on the model (`mlflow_state` synced / failed with `mlflow_error`,
`mlflow_synced_at`, `mlflow_attempts`, `mlflow_next_attempt_at`) and each version's MLflow
number in `ModelVersion.mlflow_version`. Nothing raises into the caller: MLflow
unreachable (or any other failure) leaves the model FAILED with the error, and the beat
(`control.registry_sync_mlflow`) retries it with exponential backoff capped at
MLFLOW_SYNC_MAX_BACKOFF_SECONDS. Runs in the control worker (it downloads the version's
files); the web process only calls `request_mlflow_sync`, which imports no mlflow.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path

from celery import shared_task
from django.conf import settings
from django.db import connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from controlplane.registry.models import (
    FileRole,
    ModelAlias,
    ModelVersion,
    RegisteredModel,
    SyncState,
    VersionState,
)
from workers.protocol import CONTROL_QUEUE

logger = logging.getLogger(__name__)

SYNC_TASK = "control.registry_sync_mlflow"
TAG = "controlplane."
VERSION_ID_TAG = "controlplane.version_id"
MODEL_ID_TAG = "controlplane.model_id"
PROJECT_TAG = "controlplane.project"
ARTIFACT_PATH = "model"  # where the pyfunc model lies in its run's artifacts
MAX_PASSES = 3  # reconcile again while the model changed under a pass, at most this often
MAX_ERROR_CHARS = 2000
CHUNK_BYTES = 4 * 1024 * 1024
LOCK_NAMESPACE = 0x4D4C  # pg advisory lock (namespace, model id): one sync per model at a time
# Operators may set these (mlflow reads them per request); without them a dead server
# would hold a sync for minutes of urllib3 retries.
MLFLOW_HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


class SyncError(Exception):
    """Why MLflow could not be made equal to the registry; recorded as `mlflow_error`."""


# -- the web side: mark and nudge -----------------------------------------------------------


def request_mlflow_sync(model: RegisteredModel) -> None:
    """Mark `model` PENDING now and ask the control worker to sync it once this commits.

    Call it inside the transaction that changes the model, its versions or aliases: the
    mark commits with the change (the beat syncs PENDING models even if the nudge is
    lost), and a sync that is running meanwhile sees the mark and goes round again.
    """
    RegisteredModel.objects.filter(pk=model.pk).update(
        mlflow_state=SyncState.PENDING, mlflow_attempts=0, mlflow_next_attempt_at=None
    )
    model.mlflow_state = SyncState.PENDING
    transaction.on_commit(partial(_send_nudge, model.pk), robust=True)


def _send_nudge(model_id: int) -> None:
    from controlplane.celery_app import app

    try:
        # retry=False: a broker outage must not stall the request; the beat syncs later.
        app.send_task(SYNC_TASK, args=[model_id], queue=CONTROL_QUEUE, retry=False)
    except Exception as error:  # noqa: BLE001 - any broker failure; the beat catches up
        logger.warning("MLflow sync of model %s not requested: %s", model_id, error)


def backoff_seconds(attempts: int) -> int:
    """10 s, 20 s, 40 s, ... after the 1st, 2nd, 3rd failure, capped."""
    return min(settings.MLFLOW_SYNC_MAX_BACKOFF_SECONDS, 10 * 2 ** max(0, attempts - 1))


def due_models(now=None, limit: int = 100):
    """Models the beat syncs: PENDING ones, and FAILED ones whose next attempt is due."""
    now = now or timezone.now()
    due = Q(mlflow_state=SyncState.PENDING) | Q(
        mlflow_state=SyncState.FAILED, mlflow_next_attempt_at__lte=now
    )
    # PENDING (no next attempt) first: a change waits for no retry of another model.
    order = F("mlflow_next_attempt_at").asc(nulls_first=True)
    return RegisteredModel.objects.filter(due).order_by(order, "pk")[:limit]


# -- the control worker: the task and the reconciliation --------------------------------------


@shared_task(name=SYNC_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=3600)
def registry_sync_mlflow(model_id: int | None = None) -> dict[str, str]:
    """One model (a nudge), or every due model (the beat), within a time budget."""
    if model_id is not None:
        return {str(model_id): sync_model(model_id)}
    outcomes: dict[str, str] = {}
    started = time.monotonic()
    for pk in list(due_models().values_list("pk", flat=True)):
        if time.monotonic() - started > settings.MLFLOW_SYNC_BEAT_BUDGET_SECONDS:
            break  # the next beat goes on; no pile-up of overlapping passes
        outcomes[str(pk)] = sync_model(pk)
    return outcomes


def sync_model(model_id: int) -> str:
    """Reconcile MLflow with one model; returns "synced", "failed", "busy" or "gone".

    Never raises for an MLflow, store or network failure: it is recorded on the model.
    """
    with _model_lock(model_id) as locked:
        if not locked:
            return "busy"  # another sync of this model runs; it goes round again if needed
        model = RegisteredModel.objects.select_related("project").filter(pk=model_id).first()
        if model is None:
            return "gone"
        for _ in range(MAX_PASSES):
            wanted = _fingerprint(model)
            try:
                _reconcile(model)
            except Exception as error:  # noqa: BLE001 - every failure is recorded and retried
                _record_failure(model, error)
                return SyncState.FAILED.value
            if _record_success_if_unchanged(model, wanted):
                return SyncState.SYNCED.value
            model.refresh_from_db()
        # Changed under every pass: PENDING, so the next beat picks it up again.
        RegisteredModel.objects.filter(pk=model_id).update(
            mlflow_state=SyncState.PENDING, mlflow_next_attempt_at=None
        )
        return SyncState.PENDING.value


def _fingerprint(model: RegisteredModel) -> tuple:
    """What MLflow must mirror; a change of it during a pass means one more pass."""
    fresh = RegisteredModel.objects.get(pk=model.pk)
    versions = tuple(
        ModelVersion.objects.filter(model_id=model.pk)
        .order_by("pk")
        .values_list("pk", "state", "description")
    )
    aliases = tuple(
        ModelAlias.objects.filter(model_id=model.pk)
        .order_by("name")
        .values_list("name", "version_id")
    )
    return (fresh.name, fresh.description, versions, aliases)


def _record_success_if_unchanged(model: RegisteredModel, wanted: tuple) -> bool:
    # The row lock orders us with request_mlflow_sync: a change that committed before it is
    # in the fingerprint (one more pass); one after it sets PENDING after our SYNCED.
    with transaction.atomic():
        RegisteredModel.objects.select_for_update().filter(pk=model.pk).first()
        if _fingerprint(model) != wanted:
            return False
        RegisteredModel.objects.filter(pk=model.pk).update(
            mlflow_state=SyncState.SYNCED,
            mlflow_error="",
            mlflow_synced_at=timezone.now(),
            mlflow_attempts=0,
            mlflow_next_attempt_at=None,
        )
    return True


def _record_failure(model: RegisteredModel, error: Exception) -> None:
    message = _describe(error)
    attempts = RegisteredModel.objects.get(pk=model.pk).mlflow_attempts + 1
    RegisteredModel.objects.filter(pk=model.pk).update(
        mlflow_state=SyncState.FAILED,
        mlflow_error=message,
        mlflow_attempts=attempts,
        mlflow_next_attempt_at=timezone.now() + timedelta(seconds=backoff_seconds(attempts)),
    )
    logger.warning(
        "MLflow sync of model %s (%s) failed (attempt %s): %s",
        model.pk,
        model.name,
        attempts,
        message,
    )


def _describe(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    if not isinstance(error, SyncError):
        text = f"{type(error).__name__}: {text}"
    return text[:MAX_ERROR_CHARS]


@contextmanager
def _model_lock(model_id: int):
    """A session-level advisory lock: no row stays locked while MLflow is slow."""
    if connection.vendor != "postgresql":
        yield True
        return
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", [LOCK_NAMESPACE, model_id])
        locked = cursor.fetchone()[0]
    try:
        yield locked
    finally:
        if locked:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [LOCK_NAMESPACE, model_id])


def _tracking_uri() -> str:
    from workers.config import mlflow_tracking_uri

    return mlflow_tracking_uri()


def _check_reachable(uri: str) -> None:
    """A quick look at an HTTP tracking server before the client's slower retries."""
    if not uri.startswith(("http://", "https://")):
        return  # a local store (the embedded default: SQLite under the data dir)
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=5) as response:
            response.read(64)
    except urllib.error.HTTPError as error:
        if error.code >= 500:
            raise SyncError(f"MLflow at {uri} answers {error.code} {error.reason}") from None
    except OSError as error:
        reason = getattr(error, "reason", error)
        raise SyncError(f"MLflow at {uri} is unreachable: {reason}") from None


def _reconcile(model: RegisteredModel) -> None:
    for name, value in MLFLOW_HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)
    uri = _tracking_uri()
    _check_reachable(uri)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    Mirror(client, uri, model).reconcile()


class Mirror:
    """One pass of making MLflow's registered model `model.name` equal to `model`."""

    def __init__(self, client, uri: str, model: RegisteredModel):
        self.client = client
        self.uri = uri
        self.model = model
        self.name = model.name

    def reconcile(self) -> None:
        self.ensure_registered_model()
        theirs = self.tagged_versions()  # our version id -> MLflow ModelVersion
        versions = list(
            ModelVersion.objects.filter(model_id=self.model.pk)
            .select_related("model__project")
            .order_by("number")
        )
        numbers: dict[int, str] = {}
        for version in versions:
            if version.state != VersionState.READY:
                continue
            found = theirs.get(str(version.pk))
            number = str(found.version) if found else self.create_version(version)
            if found:
                self.ensure_version_tags(version, found)
            numbers[version.pk] = number
            if version.mlflow_version != number:
                ModelVersion.objects.filter(pk=version.pk).update(mlflow_version=number)
        self.reconcile_aliases(numbers)
        for version_id, mlflow_version in theirs.items():
            if int(version_id) not in numbers:  # deleted or refused here, or not ours any more
                self.client.delete_model_version(self.name, str(mlflow_version.version))

    # -- the registered model --------------------------------------------------------------
    def model_tags(self) -> dict[str, str]:
        project = self.model.project
        return {
            PROJECT_TAG: project.slug,
            "controlplane.project_id": str(project.pk),
            MODEL_ID_TAG: str(self.model.pk),
            "controlplane.task": self.model.task,
        }

    def ensure_registered_model(self) -> None:
        from mlflow.exceptions import MlflowException

        tags = self.model_tags()
        try:
            theirs = self.client.get_registered_model(self.name)
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                self.name, tags=tags, description=self.model.description
            )
            return
        owner = theirs.tags.get(MODEL_ID_TAG)
        if owner is not None and owner != str(self.model.pk):
            raise SyncError(
                f"MLflow's registry already has a model named {self.name!r} mirrored from "
                f"another model (id {owner}, project {theirs.tags.get(PROJECT_TAG, '?')}); "
                "MLflow names are global, so one of them needs another name"
            )
        if (theirs.description or "") != self.model.description:
            self.client.update_registered_model(self.name, description=self.model.description)
        for key, value in tags.items():
            if theirs.tags.get(key) != value:
                self.client.set_registered_model_tag(self.name, key, value)

    # -- versions ------------------------------------------------------------------------------
    def tagged_versions(self) -> dict[str, object]:
        """MLflow's versions of this model that carry our version id tag, by that id (of
        two with the same id, the older is kept and the other deleted)."""
        found: dict[str, object] = {}
        token = None
        while True:
            page = self.client.search_model_versions(
                f"name = '{self.name}'", max_results=1000, page_token=token
            )
            for mlflow_version in page:
                version_id = (mlflow_version.tags or {}).get(VERSION_ID_TAG)
                if not (version_id and version_id.isdigit()):
                    continue
                kept = found.setdefault(version_id, mlflow_version)
                if kept is not mlflow_version:  # two with one id (made outside this lock)
                    first, extra = sorted((kept, mlflow_version), key=lambda v: int(v.version))
                    found[version_id] = first
                    self.client.delete_model_version(self.name, str(extra.version))
            token = getattr(page, "token", None)
            if not token:
                return found

    def version_tags(self, version: ModelVersion) -> dict[str, str]:
        files = {f.name: f.sha256 for f in version.files.all()}
        weights = [
            f.sha256
            for f in version.files.all()
            if f.role in (FileRole.WEIGHTS, FileRole.CHECKPOINT)
        ]
        dataset_ids = sorted(version.dataset_versions.values_list("pk", flat=True))
        tags = {
            **self.model_tags(),
            VERSION_ID_TAG: str(version.pk),
            "controlplane.version_number": str(version.number),
            "controlplane.source_job_id": str(version.source_job_id),
            "controlplane.source_attempt": str(version.source_attempt),
            "controlplane.dataset_version_ids": ",".join(str(pk) for pk in dataset_ids),
            "controlplane.weights_sha256": ",".join(weights),
            "controlplane.files": json.dumps(files, sort_keys=True)[:5000],
        }
        if version.base_version_id:
            tags["controlplane.base_version_id"] = str(version.base_version_id)
        return tags

    def ensure_version_tags(self, version: ModelVersion, mlflow_version) -> None:
        theirs = mlflow_version.tags or {}
        for key, value in self.version_tags(version).items():
            if theirs.get(key) != value:
                self.client.set_model_version_tag(self.name, mlflow_version.version, key, value)
        if (mlflow_version.description or "") != version.description:
            self.client.update_model_version(
                self.name, mlflow_version.version, description=version.description
            )

    def create_version(self, version: ModelVersion) -> str:
        tags = self.version_tags(version)
        run_id, source = self.logged_run(version, tags)
        created = self.client.create_model_version(
            self.name, source, run_id=run_id, tags=tags, description=version.description
        )
        logger.info("model %s v%s is MLflow version %s", self.name, version.number, created.version)
        return str(created.version)

    def logged_run(self, version: ModelVersion, tags: dict[str, str]) -> tuple[str, str]:
        """(run id, artifact URI of the pyfunc model): a finished run an earlier attempt
        logged for this version, else a new one."""
        experiment_id = self.experiment_id(f"{self.model.project.slug}/registry")
        run_name = f"{self.name}-v{version.number}"
        earlier = self.client.search_runs(
            [experiment_id],
            f"tags.`{VERSION_ID_TAG}` = '{version.pk}' and tags.`mlflow.runName` = '{run_name}' "
            "and attributes.status = 'FINISHED'",
            max_results=1,
        )
        if earlier and self.client.list_artifacts(earlier[0].info.run_id, ARTIFACT_PATH):
            run = earlier[0]
            return run.info.run_id, f"{run.info.artifact_uri}/{ARTIFACT_PATH}"
        run_tags = {**tags, "mlflow.runName": run_name}
        run = self.client.create_run(experiment_id, tags=run_tags)
        run_id = run.info.run_id
        try:
            self.log_version(run_id, version)
        except BaseException:
            self.client.set_terminated(run_id, status="FAILED")
            raise
        self.client.set_terminated(run_id, status="FINISHED")
        return run_id, f"{run.info.artifact_uri}/{ARTIFACT_PATH}"

    def log_version(self, run_id: str, version: ModelVersion) -> None:
        from mlflow.entities import Metric

        from workers.mlflow_pyfunc import save_version_model

        now_ms = int(time.time() * 1000)
        metrics = [
            Metric(key, float(value), now_ms, 0)
            for key, value in sorted((version.metrics or {}).items())
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics[:1000])
        with tempfile.TemporaryDirectory(prefix=f"mlflow-v{version.pk}-") as tmp:
            files = download_files(version, Path(tmp) / "files")
            pyfunc = save_version_model(
                files,
                task=self.model.task,
                path=Path(tmp) / ARTIFACT_PATH,
                metadata={"controlplane_version_id": version.pk, "name": self.name},
            )
            self.client.log_artifacts(run_id, str(pyfunc), ARTIFACT_PATH)

    def experiment_id(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=self.artifact_location(name)
            )
        except Exception:  # noqa: BLE001 - created meanwhile by another worker
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    def artifact_location(self, name: str) -> str | None:
        """Local stores keep artifacts under the data dir (as workers/tracking.py does);
        a tracking server decides for itself."""
        if self.uri.startswith(("http://", "https://", "databricks")):
            return None
        from workers.config import data_dir

        return (data_dir() / "mlflow-artifacts" / name.replace("/", "_")).as_uri()

    # -- aliases -------------------------------------------------------------------------------
    def reconcile_aliases(self, numbers: dict[int, str]) -> None:
        wanted = {
            alias.name: numbers[alias.version_id]
            for alias in ModelAlias.objects.filter(model_id=self.model.pk)
            if alias.version_id in numbers
        }
        current = self.client.get_registered_model(self.name).aliases or {}
        if not isinstance(current, dict):  # older clients: a list of (alias, version)
            current = {getattr(a, "alias", a[0]): getattr(a, "version", a[1]) for a in current}
        for alias, number in wanted.items():
            if str(current.get(alias)) != number:
                self.client.set_registered_model_alias(self.name, alias, number)
        for alias in current:
            if alias not in wanted:
                self.client.delete_registered_model_alias(self.name, alias)


def download_files(version: ModelVersion, folder: Path) -> Path:
    """The version's files from the object store into `folder`, each checked against the
    sha256 and size recorded at registration (a rotted object is never mirrored)."""
    from controlplane.storage import object_store

    store = object_store()
    folder.mkdir(parents=True, exist_ok=True)
    files = list(version.files.all())
    if not files:
        raise SyncError(f"{version} has no files to mirror")
    for record in files:
        name = Path(record.name).name  # flat: the names an export folder has
        digest, size = hashlib.sha256(), 0
        with (folder / name).open("wb") as out:
            for chunk in store.iter_chunks(record.object_key, CHUNK_BYTES):
                digest.update(chunk)
                size += len(chunk)
                out.write(chunk)
        if size != record.size or digest.hexdigest() != record.sha256:
            shutil.rmtree(folder, ignore_errors=True)
            raise SyncError(
                f"{record.object_key} of {version} no longer matches its record "
                f"({size} bytes, sha256 {digest.hexdigest()}; recorded {record.size} bytes, "
                f"{record.sha256}): not mirrored"
            )
    return folder
