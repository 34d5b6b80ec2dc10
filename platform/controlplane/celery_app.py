"""The platform's Celery app: sends JobSpecs, runs the control queue and the reaper.

Start the control worker with
``celery -A controlplane.celery_app worker -Q control -B`` (``-B`` runs the reaper's beat).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")

app = Celery("controlplane")
app.autodiscover_tasks(
    [
        "controlplane.jobs",
        "controlplane.datasets",
        "controlplane.audit",
        "controlplane.api",
        "controlplane.registry",
        "controlplane.serving",
        "controlplane.policies",
        "controlplane.gdpr",
        "controlplane.finops",
    ]
)
# The MLflow registry mirror's task lives with its reconciliation (registry/mlflow_sync.py).
app.autodiscover_tasks(["controlplane.registry"], related_name="mlflow_sync")


def _configure() -> None:
    from django.conf import settings

    app.conf.update(settings.CELERY)
    app.conf.beat_schedule = settings.CELERY_BEAT_SCHEDULE
    app.conf.beat_schedule_filename = str(settings.DATA_DIR / "celerybeat-schedule")


_configure()
