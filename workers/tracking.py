"""MLflow runs for jobs: every job gets one, its metrics follow it there.

The worker opens (or, on a later attempt, reopens) the run named in the JobSpec's
`tracking` block, logs the job's parameters once, forwards every metric the job reports,
and closes the run with the job's outcome. Tracking is a side channel: when the tracking
server cannot be reached the job still runs, and says so in its log.

    tracker = start_tracking(spec)          # NullTracker when tracking is off or down
    tracker.log_metrics(step, {"train/loss": 2.1})
    tracker.finish("FINISHED")              # or "FAILED", "KILLED"
"""

from __future__ import annotations

import logging
import time
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


class MlflowTracker(NullTracker):
    def __init__(self, spec: JobSpec, uri: str) -> None:
        from mlflow.tracking import MlflowClient

        tracking = spec.tracking or {}
        self.uri = uri
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

    def log_metrics(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(key, float(value), now, int(step)) for key, value in values.items()]
        try:
            self.client.log_batch(self.run_id, metrics=metrics)
        except Exception as error:  # noqa: BLE001 - a tracking hiccup must not fail training
            log.warning(
                "MLflow run %s: metrics at step %s not logged: %s", self.run_id, step, error
            )

    def log_text(self, text: str, name: str) -> None:
        try:
            self.client.log_text(self.run_id, text, name)
        except Exception as error:  # noqa: BLE001
            log.warning("MLflow run %s: %s not logged: %s", self.run_id, name, error)

    def finish(self, status: str) -> None:
        try:
            self.client.set_terminated(self.run_id, status=status)
        except Exception as error:  # noqa: BLE001
            log.warning("MLflow run %s could not be closed: %s", self.run_id, error)


def start_tracking(spec: JobSpec) -> NullTracker:
    if spec.tracking is None:
        return NullTracker()
    uri = mlflow_tracking_uri()
    if uri.lower() in ("", "off", "none"):
        return NullTracker()
    try:
        return MlflowTracker(spec, uri)
    except Exception as error:  # noqa: BLE001 - the job runs even when tracking is down
        log.warning("job %s runs without MLflow tracking: %s", spec.job_id, error)
        tracker = NullTracker()
        tracker.problem = f"MLflow tracking unavailable ({uri}): {error}"
        return tracker
