"""Queueing finops' control tasks from wherever usage changes (a request, an event, the
scheduler's sync): like the jobs' dispatch, one quick try and never an error, since each
task has a beat pass behind it that does the same work minutes later."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def send_control_task(name: str, args: list[Any], **options: Any) -> bool:
    """Queue a control task; False (logged) when the broker did not take it."""
    from controlplane.celery_app import app
    from controlplane.jobs.dispatch import PUBLISH_RETRY_POLICY, broker_recently_failed
    from workers.protocol import CONTROL_QUEUE

    if broker_recently_failed():
        log.info("broker down a moment ago: %s%s left to the beat", name, args)
        return False
    try:
        app.send_task(
            name,
            args=args,
            queue=CONTROL_QUEUE,
            retry=True,
            retry_policy=PUBLISH_RETRY_POLICY,
            **options,
        )
    except Exception:  # noqa: BLE001 - the beat does the same work later
        log.warning("%s%s not queued; the beat will do it", name, args)
        return False
    return True
