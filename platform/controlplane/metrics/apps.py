import os

from django.apps import AppConfig


class MetricsConfig(AppConfig):
    name = "controlplane.metrics"
    label = "metrics"
    verbose_name = "Operations signals (Prometheus)"

    def ready(self) -> None:
        # prometheus_client writes each process's counts into this folder and fails when it
        # is missing: gunicorn_conf.py creates it, `runserver` or a test run may not.
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if folder:
            os.makedirs(folder, exist_ok=True)
