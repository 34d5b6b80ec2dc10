"""Erasing a data subject from the inference archive: the subject's records leave the
objects (rewritten), every old object version and the index; every other record still
reads back; a run killed anywhere is finished by the next one."""

from __future__ import annotations

import pytest

from tests.platform.serving.archive_helpers import archive, make_deployment, record
from workers.storage import StorageError

pytestmark = pytest.mark.django_db

ANN = "ann.lee@example.com"


@pytest.fixture
def deployment(team):
    return make_deployment(team.project, team.engineer)


def ann(n: int) -> dict:
    return record(
        n,
        subject=ANN,
        request={"messages": [{"role": "user", "content": f"I am {ANN}, question {n}"}]},
    )


def archived_by_id(deployment) -> dict[str, dict]:
    """Every indexed record of the deployment, read back through the normal read path."""
    from controlplane.serving.archive import read_record
    from controlplane.serving.models import InferenceRecord

    rows = InferenceRecord.objects.filter(deployment=deployment).select_related("archive_object")
    return {row.request_id: read_record(row) for row in rows}


def erase(project, **kwargs):
    from controlplane.serving.archive import hash_subject
    from controlplane.serving.erasure import archive_erase_subject

    return archive_erase_subject(project=project, subject_hash=hash_subject(project, ANN), **kwargs)


def scan_clean(deployment) -> bool:
    from controlplane.serving.archive import archive_prefix
    from controlplane.storage import object_store
    from workers.storage.residue import scan_objects

    prefix = archive_prefix(deployment.project_id, deployment.pk)
    return scan_objects(object_store(), [prefix], [ANN]).clean


def test_the_subject_leaves_every_object_and_the_index_and_the_rest_reads_back(team, deployment):
    from controlplane.serving.models import ArchiveObject, InferenceRecord
    from controlplane.storage import object_store

    archive(deployment, [record(0), ann(1), record(2), ann(3)], max_object_records=4)
    archive(deployment, [ann(4), ann(5)], max_object_records=4)
    archive(deployment, [record(6), record(7)], max_object_records=4)
    before = archived_by_id(deployment)
    old_keys = list(ArchiveObject.objects.order_by("pk").values_list("object_key", flat=True))
    assert not scan_clean(deployment)

    report = erase(team.project)

    assert report.records_removed == 4
    assert report.objects_rewritten == 1 and len(report.objects) == 2
    mixed, only_ann = report.objects
    assert (mixed.key, mixed.records_kept, mixed.records_removed) == (old_keys[0], 2, 2)
    assert mixed.new_key and mixed.new_key.startswith(old_keys[0].rsplit("/", 1)[0] + "/")
    assert mixed.new_key.endswith(".jsonl.gz") and mixed.deleted_versions == ["null"]
    assert (only_ann.key, only_ann.new_key, only_ann.records_kept) == (old_keys[1], None, 0)
    # Every other record reads back unchanged; the subject's are in no row and no object.
    after = archived_by_id(deployment)
    assert after == {rid: rec for rid, rec in before.items() if rec.get("subject") != ANN}
    assert len(after) == 4
    assert not InferenceRecord.objects.filter(subject_hash=report_hash(team.project)).exists()
    store = object_store()
    assert not store.exists(old_keys[0]) and not store.exists(old_keys[1])
    assert store.exists(old_keys[2])
    new = ArchiveObject.objects.get(object_key=mixed.new_key)
    assert (new.records, new.size) == (2, mixed.new_size)
    assert store.stat(mixed.new_key).sha256 == mixed.new_sha256
    assert scan_clean(deployment)
    # Nothing left to do: a second run changes nothing.
    again = erase(team.project)
    assert again.records_removed == 0 and again.objects == []
    assert archived_by_id(deployment) == after


def report_hash(project) -> str:
    from controlplane.serving.archive import hash_subject

    return hash_subject(project, ANN)


@pytest.mark.parametrize("step", ["_repoint", "delete_all_versions"])
def test_a_run_killed_mid_way_leaves_a_readable_index_and_the_next_run_finishes(
    team, deployment, monkeypatch, step
):
    from controlplane.serving import erasure
    from controlplane.serving.models import ArchiveObject
    from controlplane.storage import object_store

    archive(deployment, [record(0), ann(1), record(2), ann(3)], max_object_records=4)
    before = archived_by_id(deployment)
    [old_key] = ArchiveObject.objects.values_list("object_key", flat=True)
    store = object_store()

    def crash(*args, **kwargs):
        raise StorageError("killed here")

    if step == "_repoint":  # after the new object is written, before the index moves
        monkeypatch.setattr(erasure, "_repoint", crash)
    else:  # after the index moved, while the old object's versions are deleted
        real = store.delete_all_versions
        monkeypatch.setattr(
            store, "delete_all_versions", lambda key: crash() if key == old_key else real(key)
        )
    with pytest.raises(StorageError, match="killed here"):
        erase(team.project, store=store)

    # Whatever the step, every indexed record still reads back its own bytes.
    assert archived_by_id(deployment) == before
    monkeypatch.undo()

    report = erase(team.project, store=store)

    assert archived_by_id(deployment) == {
        rid: rec for rid, rec in before.items() if rec.get("subject") != ANN
    }
    assert report.records_removed == 2
    assert not store.exists(old_key)
    # The rewritten object is the only one left in the deployment's folder.
    [remaining] = ArchiveObject.objects.values_list("object_key", flat=True)
    from controlplane.serving.archive import archive_prefix

    listed = [i.key for i in store.list(archive_prefix(team.project.pk, deployment.pk))]
    assert listed == [remaining]
    assert scan_clean(deployment)


def test_on_a_versioned_bucket_every_old_version_goes(team, deployment, s3_platform_store):
    from controlplane.serving.models import ArchiveObject

    store = s3_platform_store
    archive(deployment, [record(0), ann(1)], store=store, max_object_records=4)
    [old_key] = ArchiveObject.objects.values_list("object_key", flat=True)
    old_versions = [v.version_id for v in store.list_versions(old_key)]

    report = erase(team.project, store=store)

    [done] = report.objects
    assert done.deleted_versions == old_versions and old_versions != ["null"]
    assert store.list_versions(old_key) == []
    assert [v.version_id for v in store.list_versions(done.new_key)] == [done.new_version_id]
    assert list(archived_by_id(deployment).values())[0]["subject"] is None
    assert scan_clean(deployment)


def test_a_malformed_subject_hash_is_refused(team):
    from controlplane.serving.erasure import archive_erase_subject

    with pytest.raises(ValueError, match="64 lower-case hex"):
        archive_erase_subject(project=team.project, subject_hash=ANN)
