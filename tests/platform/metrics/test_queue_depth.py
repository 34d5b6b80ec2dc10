"""Queue depths read from the broker itself: Redis (with priority sub-queues), the embedded
filesystem broker, and any broker answering a passive declare; a broker down is a gauge."""

from __future__ import annotations

import pytest
from django.conf import settings
from django.test import override_settings

from tests.platform.metrics.conftest import sample

pytestmark = pytest.mark.django_db

QUEUES = ("cpu", "gpu", "control")


@pytest.fixture
def redis_broker():
    """The configured Redis broker (this run's own database), its queues emptied."""
    url = settings.CELERY["broker_url"]
    if not url.startswith("redis://"):
        pytest.skip("needs CELERY_BROKER_URL=redis://... (make test sets one)")
    import redis

    client = redis.Redis.from_url(url)
    keys = [f"{q}\x06\x16{step}" for q in QUEUES for step in (3, 6, 9)] + list(QUEUES)
    client.delete(*keys)
    yield client
    client.delete(*keys)
    client.close()


@pytest.mark.broker
def test_redis_depth_counts_the_messages_the_platform_sent(scrape, redis_broker):
    from controlplane.celery_app import app
    from workers.protocol import RUN_JOB_TASK

    for _ in range(3):
        app.send_task(RUN_JOB_TASK, args=[{}], queue="gpu")
    # A prioritised message lands in kombu's sub-queue `gpu\x06\x169`: still waiting.
    app.send_task(RUN_JOB_TASK, args=[{}], queue="gpu", priority=9)
    app.send_task(RUN_JOB_TASK, args=[{}], queue="cpu")
    assert redis_broker.llen("gpu\x06\x169") == 1

    families = scrape()
    assert sample(families, "controlplane_broker_up", transport="redis") == 1
    assert sample(families, "controlplane_queue_messages", queue="gpu") == 4
    assert sample(families, "controlplane_queue_messages", queue="cpu") == 1
    assert sample(families, "controlplane_queue_messages", queue="control") == 0

    redis_broker.lpop("gpu")  # a worker takes one
    assert sample(scrape(), "controlplane_queue_messages", queue="gpu") == 3


def test_filesystem_depth_counts_whole_message_files(scrape, tmp_path):
    from kombu import Connection

    from workers.filesystem_broker import install

    install()
    folders = {name: tmp_path / name for name in ("queue", "processed", "control")}
    for folder in folders.values():
        folder.mkdir()
    options = {
        "data_folder_in": str(folders["queue"]),
        "data_folder_out": str(folders["queue"]),
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        "store_processed": False,
    }
    with Connection("filesystem://localhost/", transport_options=options) as connection:
        queue = connection.SimpleQueue("gpu")
        queue.put({"job": 1})
        queue.put({"job": 2})
        queue.close()
    # A message still being written (workers/filesystem_broker.py) is not there yet.
    (folders["queue"] / "1_abc.gpu.msg.partial").write_bytes(b"")

    celery = {**settings.CELERY, "broker_url": "filesystem://localhost/"}
    celery["broker_transport_options"] = options
    with override_settings(CELERY=celery):
        families = scrape()
    assert sample(families, "controlplane_broker_up", transport="filesystem") == 1
    assert sample(families, "controlplane_queue_messages", queue="gpu") == 2
    assert sample(families, "controlplane_queue_messages", queue="cpu") == 0


def test_other_brokers_answer_by_passive_declare(scrape):
    # kombu's in-memory transport stands in for RabbitMQ: the same queue_declare path.
    from kombu import Connection

    with Connection("memory://") as connection:
        queue = connection.SimpleQueue("cpu")
        for n in range(3):
            queue.put({"job": n})
        celery = {**settings.CELERY, "broker_url": "memory://", "broker_transport_options": {}}
        with override_settings(CELERY=celery):
            families = scrape()
        queue.clear()
        queue.close()
    assert sample(families, "controlplane_broker_up", transport="memory") == 1
    assert sample(families, "controlplane_queue_messages", queue="cpu") == 3
    assert sample(families, "controlplane_queue_messages", queue="gpu") == 0  # never declared


def test_a_broker_down_is_a_gauge_not_an_error(scrape):
    celery = {**settings.CELERY, "broker_url": "redis://127.0.0.1:1/0"}
    celery["broker_transport_options"] = {}
    with override_settings(CELERY=celery):
        families = scrape()
    assert sample(families, "controlplane_broker_up", transport="redis") == 0
    # No depth at all rather than zeros: an autoscaler must not scale workers to nothing.
    assert "controlplane_queue_messages" not in families
    assert sample(families, "controlplane_metrics_source_up", source="database") == 1
