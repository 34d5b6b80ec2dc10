"""Control-queue tasks of finops: storage snapshots, budget checks, quota releases and
the webhook outbox. Each calls one service; each is idempotent (a message delivered
twice does the same thing once)."""

from __future__ import annotations

from celery import shared_task

from controlplane.finops.alerts import (
    BUDGET_CHECK_TASK,
    BUDGETS_CHECK_ALL_TASK,
    budget_check,
    budgets_check_all,
)
from controlplane.finops.quotas import (
    RELEASE_ALL_TASK,
    RELEASE_TASK,
    quota_release,
    quota_release_all,
)
from controlplane.finops.storage import SNAPSHOT_TASK, storage_snapshot
from controlplane.finops.webhooks import (
    SEND_DUE_TASK,
    SEND_TASK,
    deliveries_send_due,
    delivery_send,
)
from workers.protocol import CONTROL_QUEUE


@shared_task(name=SNAPSHOT_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=1800)
def finops_storage_snapshot() -> int:
    rows = storage_snapshot()
    budgets_check_all()  # the new day's storage cost may cross a threshold
    return rows


@shared_task(name=BUDGET_CHECK_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=120)
def finops_budget_check(project_id: int) -> int:
    return len(budget_check(project_id))


@shared_task(name=BUDGETS_CHECK_ALL_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=600)
def finops_budgets_check_all() -> int:
    return budgets_check_all()


@shared_task(name=RELEASE_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=120)
def finops_quota_release(project_id: int) -> list[int]:
    return quota_release(project_id)


@shared_task(name=RELEASE_ALL_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=600)
def finops_quota_release_all() -> int:
    return quota_release_all()


# A send is bounded by the webhook's timeout; a lost message is sent by the beat's pass.
@shared_task(name=SEND_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=60)
def finops_webhook_send(delivery_id: int) -> str:
    return delivery_send(delivery_id)


@shared_task(name=SEND_DUE_TASK, queue=CONTROL_QUEUE, ignore_result=True, time_limit=900)
def finops_webhooks_send_due() -> dict[str, int]:
    return deliveries_send_due()
