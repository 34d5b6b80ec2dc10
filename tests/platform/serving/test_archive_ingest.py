"""Indexing what replicas archived, reading records back, searching and exporting."""

from __future__ import annotations

import copy
import datetime as dt
import json

import pytest

from tests.platform.serving.archive_helpers import BASE_TIME, archive, make_deployment, record

pytestmark = pytest.mark.django_db


@pytest.fixture
def deployment(team):
    return make_deployment(team.project, team.engineer)


def test_an_index_becomes_one_object_row_and_one_row_per_request(deployment):
    from controlplane.serving.models import ArchiveObject, InferenceRecord

    records = [record(n) for n in range(5)]
    [payload] = archive(deployment, records)

    archived = ArchiveObject.objects.get()
    assert archived.object_key == payload["object_key"]
    assert (archived.deployment, archived.project_id) == (deployment, deployment.project_id)
    assert archived.records == 5 and archived.size == payload["size"]
    assert archived.window_start == dt.datetime.fromtimestamp(BASE_TIME, dt.UTC)
    assert archived.window_end == dt.datetime.fromtimestamp(BASE_TIME + 4, dt.UTC)
    rows = list(InferenceRecord.objects.order_by("created_at"))
    assert [r.request_id for r in rows] == [r["id"] for r in records]
    row = rows[0]
    assert (row.endpoint, row.status, row.token_id, row.user_id) == ("chat.completions", "ok", 3, 4)
    assert (row.prompt_tokens, row.completion_tokens, row.latency_ms) == (5, 7, 12.0)
    assert row.version == deployment.target_version


def test_a_redelivered_index_changes_nothing(deployment):
    from controlplane.serving.archive import ingest_index
    from controlplane.serving.models import ArchiveObject, InferenceRecord

    [payload] = archive(deployment, [record(n) for n in range(3)])

    again = ingest_index(copy.deepcopy(payload))

    assert again == ArchiveObject.objects.get()
    assert InferenceRecord.objects.count() == 3


@pytest.mark.parametrize(
    "change",
    [
        "unknown deployment",
        "another project",
        "key outside the folder",
        "key climbing out of the folder",
        "garbage",
        "bad time",
        "time out of range",
    ],
)
def test_an_index_that_cannot_be_trusted_is_dropped_without_raising(team, deployment, change):
    from controlplane.serving.archive import ingest_index
    from controlplane.serving.models import ArchiveObject

    [payload] = archive(deployment, [record(1)], ingest=False)
    if change == "unknown deployment":
        payload["deployment_id"] = deployment.pk + 1000
    elif change == "another project":
        payload["project_id"] = team.other_project.pk
    elif change == "key outside the folder":
        payload["object_key"] = payload["object_key"].replace(
            f"projects/{deployment.project_id}/", f"projects/{team.other_project.pk}/"
        )
    elif change == "key climbing out of the folder":
        payload["object_key"] = payload["object_key"].replace(
            f"/{deployment.pk}/", f"/{deployment.pk}/../../{team.other_project.pk}/"
        )
    elif change == "garbage":
        payload = {"records": "nope"}
    elif change == "bad time":
        payload["window_start"] = "yesterday"
    elif change == "time out of range":
        payload["window_end"] = 1e20

    assert ingest_index(payload) is None

    assert not ArchiveObject.objects.exists()


def test_malformed_entries_are_dropped_and_the_rest_indexed(deployment):
    from controlplane.serving.archive import ingest_index
    from controlplane.serving.models import InferenceRecord

    [payload] = archive(deployment, [record(n) for n in range(4)], ingest=False)
    payload["records"][0]["status"] = "fabulous"
    payload["records"][1]["length"] = payload["size"] * 2  # past the object's end
    payload["records"][2]["version_id"] = 999_999  # not a version of this model
    payload["records"].append(dict(payload["records"][3]))  # well-formed, kept
    payload["records"][3]["time"] = 1e20  # no datetime holds it
    payload["records"][3]["id"] = "f" * 32

    ingest_index(payload)

    assert list(InferenceRecord.objects.values_list("request_id", flat=True)) == [
        payload["records"][4]["id"]
    ]


def test_read_record_returns_the_full_record(deployment):
    from controlplane.serving.archive import read_record
    from controlplane.serving.models import InferenceRecord

    records = [record(n) for n in range(10)]
    records[6]["response"] = {"data": [{"b64_json": "iVBORw0KGgoAAAANSUhEUg=="}]}
    archive(deployment, records)

    row = InferenceRecord.objects.get(request_id=records[6]["id"])
    full = read_record(row)

    assert full["response"] == records[6]["response"]
    assert full["guardrails"] == records[6]["guardrails"]
    assert full["deployment_id"] == deployment.pk and full["node"] == "node-1"


def test_read_record_on_s3(deployment, s3_platform_store):
    from controlplane.serving.archive import read_record
    from controlplane.serving.models import InferenceRecord

    records = [record(n) for n in range(10)]
    archive(deployment, records, store=s3_platform_store)

    for item in (records[0], records[9]):
        row = InferenceRecord.objects.get(request_id=item["id"])
        assert read_record(row, store=s3_platform_store)["request"] == item["request"]


def test_read_record_of_a_purged_object_says_it_is_gone(deployment):
    from controlplane.serving.archive import RecordUnavailable, read_record
    from controlplane.serving.models import InferenceRecord
    from controlplane.storage import object_store

    [payload] = archive(deployment, [record(1)])
    object_store().delete(payload["object_key"])

    with pytest.raises(RecordUnavailable) as raised:
        read_record(InferenceRecord.objects.get())
    assert raised.value.gone


def test_search_filters_by_time_caller_status_endpoint_and_subject(team, deployment):
    from controlplane.serving.archive import search

    other = make_deployment(team.project, team.engineer, name="other")
    records = [
        record(0, subject="Ann@Example.com "),
        record(1, caller={"token_id": 9, "user_id": None, "username": ""}),
        record(2, status="refused", response=None),
        record(3, endpoint="completions"),
        record(4, subject="bob@example.com"),
        record(5, caller={"token_id": None, "user_id": 77, "username": "carol"}),
    ]
    archive(deployment, records)
    archive(other, [record(10, subject="ann@example.com")])

    def ids(**filters):
        return {r.request_id for r in search(deployment, **filters)}

    def at(n):
        return dt.datetime.fromtimestamp(BASE_TIME + n, dt.UTC)

    assert len(ids()) == 6
    assert ids(subject="ann@example.com") == {records[0]["id"]}
    assert ids(subject="nobody@example.com") == set()
    assert ids(token_id=9) == {records[1]["id"]}
    assert ids(user_id=77) == {records[5]["id"]}
    assert ids(status="refused") == {records[2]["id"]}
    assert ids(endpoint="completions") == {records[3]["id"]}
    assert ids(since=at(2), until=at(4)) == {records[2]["id"], records[3]["id"]}
    assert [r.request_id for r in search(deployment)][0] == records[5]["id"]  # newest first


def test_export_streams_every_record_in_order(deployment):
    from controlplane.serving import archive as archive_module
    from controlplane.serving.archive import export_lines, search

    records = [record(n) for n in range(12)]
    archive(deployment, records[:7], max_object_records=3)  # several objects
    archive(deployment, records[7:])

    lines = list(export_lines(search(deployment)))

    assert [json.loads(line)["id"] for line in lines] == [r["id"] for r in reversed(records)]
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    # Small chunks take the ranged-GET path for objects with one record in the chunk.
    original = archive_module.EXPORT_CHUNK
    archive_module.EXPORT_CHUNK = 1
    try:
        again = list(export_lines(search(deployment, status="ok")))
    finally:
        archive_module.EXPORT_CHUNK = original
    assert again == lines


def test_export_skips_records_whose_object_was_purged_meanwhile(deployment):
    from controlplane.serving.archive import export_lines, search
    from controlplane.storage import object_store

    first = archive(deployment, [record(n) for n in range(3)])
    archive(deployment, [record(n) for n in range(3, 5)])
    object_store().delete(first[0]["object_key"])

    lines = list(export_lines(search(deployment)))

    assert len(lines) == 2
