"""Bad declarations are 400s naming the field, and leave nothing: no row, no open upload."""

import hashlib

import pytest

pytestmark = pytest.mark.django_db

SHA = hashlib.sha256(b"x").hexdigest()


@pytest.fixture
def dataset(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project, actor=team.engineer, name="Plays", slug="plays", kind="text"
    )


def _url(team, dataset):
    return f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/"


def _nothing_created():
    from controlplane.datasets.models import DatasetFile, DatasetVersion
    from controlplane.storage import object_store

    store = object_store()
    assert not DatasetVersion.objects.exists() and not DatasetFile.objects.exists()
    assert list(store.multipart_list()) == []
    assert not (store.bucket_dir / ".multipart").exists()


@pytest.mark.parametrize(
    "part_size",
    [9223372036854775808, 2**40, -1, 0, 1024, 5.5, 5242880.0, "5242880", True, None, [], {}],
)
def test_out_of_range_or_non_integer_part_size_is_refused(team, api, dataset, part_size):
    response = api(team.engineer).post(
        _url(team, dataset),
        {"files": [{"name": "a.txt", "size": 1, "sha256": SHA}], "part_size": part_size},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert "part_size" in response.json()["error"]["fields"]
    _nothing_created()


@pytest.mark.parametrize("size", [9223372036854775808, -5, 0, 1.5, "10", True, None])
def test_out_of_range_or_non_integer_file_size_is_refused(team, api, dataset, size):
    response = api(team.engineer).post(
        _url(team, dataset),
        {"files": [{"name": "a.txt", "size": size, "sha256": SHA}]},
        format="json",
    )
    assert response.status_code == 400, response.content
    assert list(response.json()["error"]["fields"]) == ["files.0.size"]
    _nothing_created()


def test_the_service_checks_part_size_before_the_store(team, dataset):
    """Callers other than the API (the dashboard, the demo) get the same protection."""
    from controlplane.datasets.services import DatasetError, DeclaredFile, dataset_version_start

    for part_size in (9223372036854775808, True, 5 * 1024**3 + 1, 2.5):
        with pytest.raises(DatasetError) as refused:
            dataset_version_start(
                dataset=dataset,
                actor=team.engineer,
                files=[DeclaredFile("a.txt", 1, SHA)],
                part_size=part_size,
            )
        assert "part_size" in refused.value.fields
    _nothing_created()


def test_a_failure_after_the_store_opened_uploads_aborts_them(team, dataset, monkeypatch):
    from controlplane.datasets.services import DeclaredFile, dataset_version_start
    from controlplane.storage import object_store

    store = object_store()
    calls = {"n": 0}
    original = store.presigned_part_url

    def fails_on_the_second_file(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("signing failed")
        return original(*args, **kwargs)

    monkeypatch.setattr(store, "presigned_part_url", fails_on_the_second_file)
    with pytest.raises(RuntimeError):
        dataset_version_start(
            dataset=dataset,
            actor=team.engineer,
            files=[DeclaredFile("a.txt", 1, SHA), DeclaredFile("b.txt", 1, SHA)],
        )
    _nothing_created()
    dataset.refresh_from_db()
    assert dataset.last_version_number == 0  # rolled back with the version


@pytest.mark.parametrize(
    ("name", "code_point"),
    [
        ("\u202egnp.exe", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("report\u2066.txt", "U+2066 LEFT-TO-RIGHT ISOLATE"),
        ("a\u200bb.txt", "U+200B ZERO WIDTH SPACE"),
        ("\ufeffdata.csv", "U+FEFF ZERO WIDTH NO-BREAK SPACE"),
        ("tab\there.txt", "U+0009"),
        ("cafe\u0301.txt", "U+0301 COMBINING ACUTE ACCENT"),
    ],
)
def test_file_names_that_display_as_something_else_are_refused(
    team, api, dataset, name, code_point
):
    response = api(team.engineer).post(
        _url(team, dataset), {"files": [{"name": name, "size": 1, "sha256": SHA}]}, format="json"
    )
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert list(error["fields"]) == ["files.0.name"]
    assert code_point in str(error["fields"]["files.0.name"])
    _nothing_created()


def test_dataset_names_are_checked_too(team, api):
    from controlplane.datasets.models import Dataset

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/datasets/",
        {"name": "Plays\u202e", "slug": "plays2", "kind": "text"},
        format="json",
    )
    assert response.status_code == 400
    assert "U+202E" in str(response.json()["error"]["fields"]["name"])
    assert not Dataset.objects.filter(slug="plays2").exists()
