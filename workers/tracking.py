"""MLflow runs for jobs: every job gets one, its metrics follow it there.

The worker opens (or, on a later attempt, reopens) the run named in the JobSpec's
`tracking` block, logs the job's parameters once, forwards every metric the job reports,
and closes the run with the job's outcome. Tracking is a side channel: when the tracking
server cannot be reached the job still runs, and says so in its log.

    tracker = start_tracking(spec, is_current=ctx.is_current_attempt)  # NullTracker if off/down
    tracker.log_metrics(step, {"train/loss": 2.1})
    tracker.finish("FINISHED")              # or "FAILED", "KILLED"

Two rules keep the run equal to the platform's record when attempts overlap:
- A later attempt continues the run and resumes from a checkpoint, so it replays steps
  the run already has: the tracker reads the highest logged step of each metric key when
  it continues a run and skips steps at or below it (MLflow would keep both points).
- A superseded attempt (its worker was presumed dead, then woke up) must not touch the
  run the current attempt owns: `is_current` is asked before every write, and a stale
  attempt neither logs nor closes the run.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from workers.config import data_dir, mlflow_tracking_uri
from workers.protocol import JobSpec

log = logging.getLogger(__name__)

MAX_PARAM_CHARS = 6000  # MLflow's limit for one parameter value


class NullTracker:
    run_id: str | None = None
    problem: str | None = None

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        pass

    def log_text(self, text: str, name: str) -> None:
        pass

    def finish(self, status: str) -> None:
        pass


def _flatten(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = str(value)[:MAX_PARAM_CHARS]
    return flat


def _always_current() -> bool:
    return True


class MlflowTracker(NullTracker):
    def __init__(
        self, spec: JobSpec, uri: str, is_current: Callable[[], bool] = _always_current
    ) -> None:
        from mlflow.tracking import MlflowClient

        tracking = spec.tracking or {}
        self.uri = uri
        self.job_id = spec.job_id
        self._is_current = is_current
        # metric key -> highest step the run holds; a step at or below it is a replay.
        self.logged_steps: dict[str, int] = {}
        self.client = MlflowClient(tracking_uri=uri)
        experiment_id = self._experiment(
            str(tracking.get("experiment") or f"project-{spec.project_id}")
        )
        self.run_id = spec.tracking_run_id or self._existing_run(experiment_id, spec.job_id)
        if self.run_id is None:
            tags = {str(k): str(v) for k, v in (tracking.get("tags") or {}).items()}
            tags.update(
                {
                    "controlplane.job_id": str(spec.job_id),
                    "controlplane.kind": str(spec.kind),
                    "mlflow.runName": str(tracking.get("run_name") or f"job-{spec.job_id}"),
                }
            )
            run = self.client.create_run(experiment_id, tags=tags)
            self.run_id = run.info.run_id
            self._log_params(tracking.get("params") or spec.params)
        else:
            self.logged_steps = self._highest_logged_steps()
            self.client.update_run(self.run_id, status="RUNNING")
        self.client.set_tag(self.run_id, "controlplane.attempt", str(spec.attempt))

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return self.client.create_experiment(
                name, artifact_location=self._artifact_location(name)
            )
        except Exception:  # noqa: BLE001 - another worker created it first
            return self.client.get_experiment_by_name(name).experiment_id

    def _artifact_location(self, name: str) -> str | None:
        """Local tracking stores keep artifacts under var/, not in the worker's working
        directory (MLflow's default, ./mlruns); a tracking server decides for itself."""
        if not self.uri.startswith(("sqlite:", "file:", "/")):
            return None
        folder = data_dir() / "mlflow-artifacts" / name.replace("/", "_")
        return folder.as_uri()

    def _existing_run(self, experiment_id: str, job_id: int) -> str | None:
        """A run an earlier attempt opened before the platform learnt its id."""
        runs = self.client.search_runs(
            [experiment_id], f"tags.`controlplane.job_id` = '{job_id}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def _log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        flat = list(_flatten(params).items())
        for start in range(0, len(flat), 100):  # MLflow takes at most 100 params a batch
            self.client.log_batch(
                self.run_id, params=[Param(k, v) for k, v in flat[start : start + 100]]
            )

    def _highest_logged_steps(self) -> dict[str, int]:
        """What an earlier attempt logged: the highest step of each metric key of the run."""
        keys = self.client.get_run(self.run_id).data.metrics.keys()
        highest = {}
        for key in keys:
            steps = [m.step for m in self.client.get_metric_history(self.run_id, key)]
            if steps:
                highest[key] = max(steps)
        return highest

    def _may_write(self, what: str) -> bool:
        if self._is_current():
            return True
        log.info(
            "job %s: attempt superseded, %s not sent to MLflow run %s",
            self.job_id,
            what,
            self.run_id,
        )
        return False

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        step = int(step)
        fresh = {k: v for k, v in values.items() if step > self.logged_steps.get(k, -1)}
        if not fresh or not self._may_write(f"metrics at step {step}"):
            return
        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, step) for key, value in fresh.items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as error:  # noqa: BLE001 - a tracking hiccup must not fail training
            log.warning(
                "MLflow run %s: metrics at step %s not logged: %s", self.run_id, step, error
            )
            return
        for key in fresh:
            self.logged_steps[key] = step

    def log_text(self, text: str, name: str) -> None:
        if not self._may_write(name):
            return
        try:
            self.client.log_text(self.run_id, text, name)
        except Exception as error:  # noqa: BLE001
            log.warning("MLflow run %s: %s not logged: %s", self.run_id, name, error)

    def finish(self, status: str) -> None:
        if not self._may_write(f"status {status}"):
            return
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as error:  # noqa: BLE001
            log.warning("MLflow run %s could not be closed: %s", self.run_id, error)


def start_tracking(spec: JobSpec, is_current: Callable[[], bool] = _always_current) -> NullTracker:
    """The job's tracker; `is_current` says whether this attempt still owns the job."""
    if spec.tracking is None:
        return NullTracker()
    uri = mlflow_tracking_uri()
    if uri.lower() in ("", "off", "none"):
        return NullTracker()
    try:
        return MlflowTracker(spec, uri, is_current)
    except Exception as error:  # noqa: BLE001 - the job runs even when tracking is down
        log.warning("job %s runs without MLflow tracking: %s", spec.job_id, error)
        tracker = NullTracker()
        tracker.problem = f"MLflow tracking unavailable ({uri}): {error}"
        return tracker
