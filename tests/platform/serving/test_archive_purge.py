"""Purging the inference archive past each project's retention: objects (every stored
version), then rows, one audit event per project; repeatable and crash-safe."""

from __future__ import annotations

import datetime as dt
import time

import pytest

from tests.platform.serving.archive_helpers import BASE_TIME, archive, make_deployment, record

pytestmark = pytest.mark.django_db

DAY = 86_400


def at(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


@pytest.fixture
def deployment(team):
    return make_deployment(team.project, team.engineer)


def purge_events(project):
    from controlplane.audit.models import AuditEvent

    return list(
        AuditEvent.objects.filter(project_id=project.pk, action="serving_archive.purged").order_by(
            "seq"
        )
    )


def test_records_past_the_retention_are_purged_with_their_objects(team, deployment):
    from controlplane.serving.archive import purge_expired
    from controlplane.serving.models import ArchiveObject, InferenceRecord
    from controlplane.storage import object_store

    old = archive(deployment, [record(n) for n in range(4)], max_object_records=2)
    recent = archive(deployment, [record(n + 20 * DAY) for n in range(3)])

    # 30 days (the default) after the old records, 10 after the recent ones.
    done = purge_expired(now=at(BASE_TIME + 30 * DAY + 60))

    assert done[team.project.pk].objects == 2 and done[team.project.pk].records == 4
    assert [o.object_key for o in ArchiveObject.objects.all()] == [recent[0]["object_key"]]
    assert InferenceRecord.objects.count() == 3
    store = object_store()
    assert not any(store.exists(p["object_key"]) for p in old)
    assert store.exists(recent[0]["object_key"])
    [event] = purge_events(team.project)
    assert event.actor_id is None
    assert event.payload["objects"] == 2 and event.payload["records"] == 4
    assert event.payload["retention_days"] == 30


def test_purge_is_repeatable_and_writes_no_empty_events(team, deployment):
    from controlplane.serving.archive import purge_expired

    archive(deployment, [record(1)])
    now = at(BASE_TIME + 31 * DAY)
    purge_expired(now=now)

    assert purge_expired(now=now) == {}
    assert len(purge_events(team.project)) == 1


def test_each_project_keeps_its_own_retention(team, deployment):
    from controlplane.serving.archive import purge_expired, serving_settings_update
    from controlplane.serving.models import InferenceRecord

    other = make_deployment(team.other_project, team.outsider, name="chat")
    archive(deployment, [record(1)])
    archive(other, [record(2)])
    serving_settings_update(project=team.project, actor=team.owner, retention_days=90)

    purge_expired(now=at(BASE_TIME + 40 * DAY))

    assert list(InferenceRecord.objects.values_list("deployment_id", flat=True)) == [deployment.pk]
    assert purge_events(team.project) == []
    assert len(purge_events(team.other_project)) == 1


def test_rows_whose_object_is_already_gone_are_purged(team, deployment):
    """A purge that crashed after deleting the object and before its rows: the next run
    finishes the job."""
    from controlplane.serving.archive import purge_expired
    from controlplane.serving.models import ArchiveObject
    from controlplane.storage import object_store

    [payload] = archive(deployment, [record(1), record(2)])
    object_store().delete(payload["object_key"])

    done = purge_expired(now=at(BASE_TIME + 31 * DAY))

    assert done[team.project.pk].records == 2 and done[team.project.pk].versions == 0
    assert not ArchiveObject.objects.exists()


def test_objects_no_index_points_at_are_swept_from_old_day_folders(team, deployment):
    from controlplane.serving.archive import purge_expired
    from controlplane.storage import object_store

    [lost] = archive(deployment, [record(1)], ingest=False)  # its index never arrived
    [kept] = archive(deployment, [record(2 + 30 * DAY)], ingest=False)  # too recent to sweep

    done = purge_expired(now=at(BASE_TIME + 33 * DAY))

    assert done[team.project.pk].orphans == 1
    assert not object_store().exists(lost["object_key"])
    assert object_store().exists(kept["object_key"])
    [event] = purge_events(team.project)
    assert event.payload["unindexed_objects"] == 1


def test_purge_on_s3_deletes_every_version_of_the_objects(team, deployment, s3_platform_store):
    import boto3

    from controlplane.serving.archive import purge_expired
    from controlplane.serving.models import InferenceRecord
    from tests.s3server import ACCESS_KEY, REGION, SECRET_KEY

    payloads = archive(deployment, [record(n) for n in range(4)], max_object_records=2)
    client = boto3.client(
        "s3",
        endpoint_url=f"http://{s3_platform_store.endpoint}",
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name=REGION,
    )
    bucket = s3_platform_store.bucket
    # An older version of one key (a rewrite the versioned bucket kept): erasure must take it.
    client.put_object(Bucket=bucket, Key=payloads[0]["object_key"], Body=b"another version")

    def versions():
        listing = client.list_object_versions(Bucket=bucket)
        return listing.get("Versions", []) + listing.get("DeleteMarkers", [])

    assert len(versions()) == 3

    done = purge_expired(now=at(BASE_TIME + 31 * DAY), store=s3_platform_store)

    assert versions() == []
    assert done[team.project.pk].versions == 3
    assert not InferenceRecord.objects.exists()
    [event] = purge_events(team.project)
    assert event.payload["object_versions"] == 3


def test_the_control_tasks_ingest_and_purge(team, deployment):
    from controlplane.serving.models import InferenceRecord
    from controlplane.serving.tasks import serve_archive_index, serve_purge_archive

    today = time.time()
    [payload] = archive(deployment, [record(1, time=today), record(2, time=today)], ingest=False)

    assert serve_archive_index(payload) == 2
    assert serve_archive_index(payload) == 2  # redelivered: nothing new
    assert serve_archive_index({"what": "garbage"}) == 0
    assert InferenceRecord.objects.count() == 2
    assert serve_purge_archive() == {}  # today's records are within the retention


def test_the_tasks_are_registered_and_the_purge_is_on_the_beat():
    from django.conf import settings

    from controlplane.celery_app import app
    from workers.serve.protocol import ARCHIVE_INDEX_TASK

    app.loader.import_default_modules()
    assert ARCHIVE_INDEX_TASK in app.tasks
    assert "control.serve_purge_archive" in app.tasks
    entry = settings.CELERY_BEAT_SCHEDULE["serving-purge-archive"]
    assert entry["task"] == "control.serve_purge_archive"
    assert entry["schedule"] == 3600.0 and entry["options"]["expires"] <= 3600


def test_a_store_outage_stops_one_projects_purge_not_the_others(team, deployment):
    from controlplane.serving.archive import purge_expired
    from controlplane.serving.models import InferenceRecord
    from controlplane.storage import object_store
    from workers.storage import StorageError

    other = make_deployment(team.other_project, team.outsider, name="chat")
    archive(deployment, [record(1)])
    archive(other, [record(2)])
    store = object_store()
    real_delete = store.delete

    def delete(key):
        if key.startswith(f"projects/{team.project.pk}/"):
            raise StorageError("connection refused (test)")
        return real_delete(key)

    store.delete = delete
    try:
        done = purge_expired(now=at(BASE_TIME + 31 * DAY))
    finally:
        del store.delete

    assert list(done) == [team.other_project.pk]
    assert list(InferenceRecord.objects.values_list("deployment_id", flat=True)) == [deployment.pk]
    assert purge_events(team.project) == []
