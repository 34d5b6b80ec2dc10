"""Engineers and owners correct a dataset's description, source and licence; each change audited."""

import pytest

pytestmark = pytest.mark.django_db


@pytest.fixture
def dataset(team):
    from controlplane.datasets.services import dataset_create

    return dataset_create(
        project=team.project,
        actor=team.engineer,
        name="Plays",
        slug="plays",
        kind="text",
        source="Project Gutenberg",
        license="CC-BY-4.0",
    )


def _url(project, dataset_id) -> str:
    return f"/api/v1/projects/{project.pk}/datasets/{dataset_id}/"


def _updates(dataset) -> list[dict]:
    from controlplane.audit.models import AuditEvent

    events = AuditEvent.objects.filter(
        action="dataset.updated", artifact_type="dataset", artifact_id=str(dataset.pk)
    ).order_by("seq")
    return [event.payload for event in events]


def test_engineer_corrects_the_licence_and_only_that_change_is_audited(team, dataset, api):
    response = api(team.engineer).patch(
        _url(team.project, dataset.pk),
        {"license": "CC0-1.0", "source": "Project Gutenberg"},
        format="json",
    )

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["license"] == "CC0-1.0" and body["source"] == "Project Gutenberg"
    assert _updates(dataset) == [{"license": {"before": "CC-BY-4.0", "after": "CC0-1.0"}}]
    dataset.refresh_from_db()
    assert dataset.license == "CC0-1.0"


def test_owner_may_edit_and_a_change_to_nothing_records_nothing(team, dataset, api):
    client = api(team.owner)

    same = client.patch(_url(team.project, dataset.pk), {"license": "CC-BY-4.0"}, format="json")
    described = client.patch(
        _url(team.project, dataset.pk), {"description": "Three comedies"}, format="json"
    )

    assert same.status_code == 200 and described.status_code == 200
    assert _updates(dataset) == [{"description": {"before": "", "after": "Three comedies"}}]


def test_fields_that_cannot_change_are_refused(team, dataset, api):
    client = api(team.engineer)

    for body, field in (
        ({"slug": "other", "license": "MIT"}, "slug"),
        ({"colour": "red"}, "colour"),
        ({"source": "x" * 501}, "source"),
    ):
        response = client.patch(_url(team.project, dataset.pk), body, format="json")
        assert response.status_code == 400, response.content
        assert field in response.json()["error"]["fields"]
    dataset.refresh_from_db()
    assert (dataset.slug, dataset.license, dataset.source) == (
        "plays",
        "CC-BY-4.0",
        "Project Gutenberg",
    )
    assert _updates(dataset) == []


@pytest.mark.parametrize("role", ["viewer", "compliance"])
def test_viewers_and_compliance_cannot_edit(team, dataset, api, role):
    response = api(getattr(team, role)).patch(
        _url(team.project, dataset.pk), {"license": "MIT"}, format="json"
    )

    assert response.status_code == 403, response.content
    dataset.refresh_from_db()
    assert dataset.license == "CC-BY-4.0" and _updates(dataset) == []


def test_another_projects_dataset_is_not_found(team, dataset, api):
    from controlplane.datasets.services import dataset_create

    theirs = dataset_create(
        project=team.other_project, actor=team.outsider, name="Theirs", slug="theirs", kind="text"
    )

    # Through our project (where it is not), and through theirs (where we are no member).
    for url in (_url(team.project, theirs.pk), _url(team.other_project, theirs.pk)):
        response = api(team.engineer).patch(url, {"license": "MIT"}, format="json")
        assert response.status_code == 404, response.content
    theirs.refresh_from_db()
    assert theirs.license == ""


def test_the_service_refuses_unknown_fields_by_name(team, dataset):
    from controlplane.datasets.services import DatasetError, dataset_update

    with pytest.raises(DatasetError, match="kind cannot be changed") as refused:
        dataset_update(dataset=dataset, actor=team.engineer, kind="images", license="MIT")

    assert refused.value.status == 400 and "kind" in refused.value.fields
    dataset.refresh_from_db()
    assert dataset.license == "CC-BY-4.0"


# -- the dataset page ------------------------------------------------------------------


def _page(project, dataset) -> str:
    return f"/projects/{project.pk}/datasets/{dataset.pk}/"


def test_engineer_edits_the_dataset_on_its_page(team, dataset, client):
    client.force_login(team.engineer)
    page = client.get(_page(team.project, dataset)).content.decode()
    assert "Edit description, source and licence" in page and 'value="CC-BY-4.0"' in page

    response = client.post(
        _page(team.project, dataset),
        {"description": "", "source": "Folger Shakespeare Library", "license": "CC-BY-NC-3.0"},
    )

    assert response.status_code == 302
    shown = client.get(response["Location"]).content.decode()
    assert "Folger Shakespeare Library" in shown and "CC-BY-NC-3.0" in shown
    assert _updates(dataset) == [
        {
            "source": {"before": "Project Gutenberg", "after": "Folger Shakespeare Library"},
            "license": {"before": "CC-BY-4.0", "after": "CC-BY-NC-3.0"},
        }
    ]


def test_a_bad_edit_shows_its_reason_on_the_page(team, dataset, client):
    client.force_login(team.owner)

    response = client.post(
        _page(team.project, dataset), {"description": "", "source": "", "license": "x" * 121}
    )

    assert response.status_code == 200
    assert "at most 120 characters" in response.content.decode()
    dataset.refresh_from_db()
    assert dataset.license == "CC-BY-4.0"


@pytest.mark.parametrize("role", ["viewer", "compliance"])
def test_viewers_and_compliance_see_no_edit_form_and_cannot_post(team, dataset, client, role):
    client.force_login(getattr(team, role))

    page = client.get(_page(team.project, dataset)).content.decode()
    response = client.post(
        _page(team.project, dataset), {"description": "", "source": "", "license": "MIT"}
    )

    assert "CC-BY-4.0" in page and "Edit description" not in page
    assert response.status_code == 403
    dataset.refresh_from_db()
    assert dataset.license == "CC-BY-4.0"
