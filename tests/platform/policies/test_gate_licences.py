"""Rule 1 (licences and sources) at the dataset gates and at job creation."""

import hashlib

import pytest

from tests.platform.policies.conftest import PAIRS

pytestmark = pytest.mark.django_db

MIT_ONLY = {"enabled": True, "allowed_licences": ["MIT", "CC0-1.0"]}


def _declared():
    from controlplane.datasets.services import DeclaredFile

    return [DeclaredFile("pairs.jsonl", len(PAIRS), hashlib.sha256(PAIRS).hexdigest())]


def test_an_upload_with_an_allowed_licence_starts(team, set_policy, make_dataset, uploaded):
    set_policy(licences=MIT_ONLY)
    version = uploaded(make_dataset(licence="MIT"))

    assert version.state == "ready"


def test_an_upload_with_another_licence_is_refused_before_anything_is_written(
    team, set_policy, make_dataset, decisions
):
    from controlplane.datasets.models import DatasetVersion
    from controlplane.datasets.services import dataset_version_start
    from controlplane.policies.errors import PolicyDenied

    set_policy(licences=MIT_ONLY)
    dataset = make_dataset(licence="GPL-3.0-only")

    with pytest.raises(PolicyDenied) as refused:
        dataset_version_start(dataset=dataset, actor=team.engineer, files=_declared())

    (denial,) = refused.value.decision.denials
    assert denial.rule == "licences"
    assert "GPL-3.0-only is not among the allowed licences" in denial.reason
    assert "CC0-1.0, MIT" in denial.fix
    assert not DatasetVersion.objects.filter(dataset=dataset).exists()
    dataset.refresh_from_db()
    assert dataset.last_version_number == 0  # no number spent on a refused upload
    (event,) = decisions("policy.denied", dataset)
    assert event.payload["policy"] == "project v1"
    assert event.payload["gate"] == "dataset.upload"
    assert event.payload["denials"][0]["rule"] == "licences"


def test_an_unparsable_licence_is_refused_with_a_reason_not_a_crash(team, set_policy, make_dataset):
    from controlplane.datasets.services import dataset_version_start
    from controlplane.policies.errors import PolicyDenied

    set_policy(licences=MIT_ONLY)
    dataset = make_dataset(licence="public domain (probably)")

    with pytest.raises(PolicyDenied, match="not an SPDX licence expression"):
        dataset_version_start(dataset=dataset, actor=team.engineer, files=_declared())


def test_a_source_outside_the_allowed_patterns_is_refused(team, set_policy, make_dataset):
    from controlplane.datasets.services import dataset_version_start
    from controlplane.policies.errors import PolicyDenied

    set_policy(licences={**MIT_ONLY, "allowed_sources": ["https://www.gutenberg.org/*"]})
    dataset = make_dataset(licence="MIT", source="https://pirate.example/dump")

    with pytest.raises(PolicyDenied) as refused:
        dataset_version_start(dataset=dataset, actor=team.engineer, files=_declared())
    assert "matches none of the allowed sources" in refused.value.decision.denials[0].reason


def test_the_api_answers_409_with_the_rule_reason_and_fix(team, api, set_policy, make_dataset):
    set_policy(licences=MIT_ONLY)
    dataset = make_dataset(licence="GPL-3.0-only")

    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/datasets/{dataset.pk}/versions/",
        {
            "files": [
                {
                    "name": "pairs.jsonl",
                    "size": len(PAIRS),
                    "sha256": hashlib.sha256(PAIRS).hexdigest(),
                }
            ]
        },
        format="json",
    )

    assert response.status_code == 409, response.content
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    assert error["policy"] == "project v1" and error["gate"] == "dataset.upload"
    (denial,) = error["denials"]
    assert denial["rule"] == "licences" and denial["rule_number"] == 1
    assert "GPL-3.0-only" in denial["reason"]
    assert denial["fix"]
    assert denial["subject"] == {
        "type": "dataset_version",
        "id": None,
        "label": "plays (new version)",
    }


def _upload_in_two_steps(team, dataset, between):
    """Start an upload, run `between()`, then send the parts and complete it."""
    import io

    from controlplane.datasets.services import dataset_version_complete, dataset_version_start
    from controlplane.storage import object_store

    version, (upload,) = dataset_version_start(
        dataset=dataset, actor=team.engineer, files=_declared()
    )
    between()
    etag = object_store().upload_part(
        upload.file.object_key, upload.file.upload_id, 1, io.BytesIO(PAIRS), len(PAIRS)
    )
    return dataset_version_complete(
        version=version, actor=team.engineer, parts={upload.file.pk: [(1, etag)]}
    )


def test_a_licence_tightened_while_uploading_makes_the_ready_version_a_violation(
    team, set_policy, make_dataset, decisions, client
):
    """The bytes are checked by then: the version is ready, but the refusal is audited on
    it, opened as a violation, and its page shows it."""
    from controlplane.policies.models import Violation

    dataset = make_dataset(licence="GPL-3.0-only")
    set_policy(residency={"enabled": True})  # a policy, but nothing about licences yet

    version = _upload_in_two_steps(team, dataset, lambda: set_policy(licences=MIT_ONLY))

    assert version.state == "ready"
    (event,) = decisions("policy.denied", version)
    assert event.payload["gate"] == "dataset_version.ready"
    assert event.payload["policy"] == "project v2"
    (violation,) = Violation.objects.filter(subject_id=version.pk)
    assert violation.rule == "licences" and violation.state == "open"
    assert violation.subject_type == "dataset_version"
    assert violation.policy_version == "project v2"

    client.force_login(team.viewer)
    page = client.get(f"/projects/{team.project.pk}/datasets/{dataset.pk}/v{version.number}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert "This version violates the policy" in html
    assert "Rule 1: Licences and sources" in html
    assert "GPL-3.0-only is not among the allowed licences" in html


def test_a_version_the_policy_allows_is_ready_with_the_allowance_on_its_timeline(
    team, set_policy, make_dataset, decisions, uploaded
):
    from controlplane.policies.models import Violation

    set_policy(licences=MIT_ONLY)
    version = uploaded(make_dataset(licence="MIT OR GPL-3.0-only"))

    (event,) = decisions("policy.allowed", version)
    assert event.payload["gate"] == "dataset_version.ready"
    assert event.payload["policy"] == "project v1"
    assert event.payload["rules"] == ["licences"]
    assert not Violation.objects.exists()


def test_training_on_data_under_a_licence_the_policy_refuses_is_refused(
    team, set_policy, make_dataset, uploaded, derived, pretrain
):
    from controlplane.datasets.services import dataset_update
    from controlplane.policies.errors import PolicyDenied

    dataset = make_dataset(licence="MIT")
    tokens = derived(uploaded(dataset))
    set_policy(licences=MIT_ONLY)
    assert pretrain(tokens).kind == "pretrain"

    dataset_update(dataset=dataset, actor=team.owner, license="CC-BY-NC-4.0")
    with pytest.raises(PolicyDenied) as refused:
        pretrain(tokens)

    (denial,) = refused.value.decision.denials
    assert denial.rule == "licences" and denial.subject.id == tokens.pk
    assert "CC-BY-NC-4.0" in denial.reason
