"""A training job's `resources` (devices, nodes, strategy): stored normalised, refused
with a 400 naming the field where the value, the kind or the installation cannot do it,
and counted devices x nodes by the GPU quota and the compute policy."""

from __future__ import annotations

import pytest

from controlplane.jobs.models import Job

pytestmark = pytest.mark.django_db


def post(api, team, kind: str, params: dict):
    return api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/jobs/", {"kind": kind, "params": params}, format="json"
    )


@pytest.fixture
def cpu(settings):
    settings.TRAINING_QUEUE = "cpu"


def test_a_training_job_stores_its_resources_with_the_defaults_filled(api, team, cpu):
    answer = post(api, team, "vae", {"resources": {"devices": 1}})

    assert answer.status_code == 201, answer.content
    assert answer.json()["params"]["resources"] == {"devices": 1, "nodes": 1, "strategy": "ddp"}


@pytest.mark.parametrize(
    "resources, field, message",
    [
        ({"devices": 0}, "resources.devices", "must be between 1 and 64"),
        ({"devices": 65}, "resources.devices", "must be between 1 and 64"),
        ({"devices": "2"}, "resources.devices", "must be an integer"),
        ({"devices": 1.5}, "resources.devices", "must be an integer"),
        ({"nodes": 0}, "resources.nodes", "must be between 1 and 64"),
        ({"strategy": "zero3"}, "resources.strategy", "use ddp or fsdp"),
        ({"gpus": 2}, "resources", "unknown key(s) gpus; use devices, nodes, strategy"),
        ("8", "resources", "must be an object"),
    ],
)
def test_bad_resources_are_refused_naming_the_field(api, team, cpu, resources, field, message):
    answer = post(api, team, "vae", {"resources": resources})

    assert answer.status_code == 400, answer.content
    assert answer.json()["error"]["fields"][f"params.{field}"] == [message]
    assert not Job.objects.exists()


def test_fsdp_for_a_kind_that_cannot_shard_names_the_kind(api, team, cpu):
    answer = post(api, team, "diffusion", {"resources": {"strategy": "fsdp"}})

    assert answer.status_code == 400
    (message,) = answer.json()["error"]["fields"]["params.resources.strategy"]
    assert (
        message == "diffusion jobs cannot shard their model (fsdp); use ddp (fsdp: pretrain jobs)"
    )


def test_several_devices_for_a_one_process_kind_are_refused(api, team, cpu):
    answer = post(api, team, "gan", {"resources": {"devices": 2}})

    assert answer.status_code == 400
    assert answer.json()["error"]["fields"]["params.resources.devices"] == [
        "gan jobs train in one process: devices and nodes must be 1 (asked 2 x 1)"
    ]


def test_several_nodes_on_the_embedded_default_need_a_broker(settings, token_version, api, team):
    settings.CELERY = {**settings.CELERY, "broker_url": "filesystem://localhost/"}
    params = {"dataset_version_id": token_version.pk, "resources": {"nodes": 2}}

    answer = post(api, team, "pretrain", params)

    assert answer.status_code == 400
    (message,) = answer.json()["error"]["fields"]["params.resources.nodes"]
    assert "several nodes need a broker" in message and "gpu workers" in message
    settings.CELERY = {**settings.CELERY, "broker_url": "redis://127.0.0.1:6379/9"}
    answer = post(api, team, "pretrain", {**params, "resources": {"nodes": 2, "devices": 2}})
    assert answer.status_code == 201, answer.content
    assert answer.json()["params"]["resources"] == {"devices": 2, "nodes": 2, "strategy": "ddp"}


# --- the GPU quota and the compute policy count devices x nodes -----------------------------


def test_the_quota_counts_devices_times_nodes(team, make_user):
    from controlplane.finops.errors import GpuJobRefused
    from controlplane.finops.quotas import gpu_job_gate, quota_admit
    from controlplane.finops.selectors import gpus_of
    from controlplane.finops.services import quota_set
    from controlplane.orgs.models import OrgMembership, OrgRole

    assert gpus_of({"resources": {"devices": 4, "nodes": 2, "strategy": "ddp"}}) == 8
    assert gpus_of({}) == 1
    admin = make_user("orgadmin")
    OrgMembership.objects.create(
        organisation=team.project.organisation, user=admin, role=OrgRole.ADMIN
    )
    quota_set(project=team.project, actor=admin, max_concurrent_gpu_jobs=None, max_gpus=8)
    with pytest.raises(GpuJobRefused, match="needs 16 GPUs .* at most 8") as refused:
        gpu_job_gate(
            project=team.project, queue="gpu", params={"resources": {"devices": 8, "nodes": 2}}
        )
    assert refused.value.code == "gpu_quota_too_small"

    def job(devices: int, nodes: int) -> Job:
        return Job.objects.create(
            project=team.project,
            kind="pretrain",
            queue="gpu",
            params={"resources": {"devices": devices, "nodes": nodes, "strategy": "ddp"}},
            created_by=team.engineer,
        )

    assert quota_admit(job(2, 2))  # 4 of 8
    held_for_capacity = job(2, 1)
    assert quota_admit(held_for_capacity)  # 6 of 8
    # Waiting for a worker with enough devices still holds its GPUs against the quota.
    Job.objects.filter(pk=held_for_capacity.pk).update(held_for="capacity")
    over = job(2, 2)
    assert not quota_admit(over)  # 10 > 8: waits for the quota
    assert Job.objects.get(pk=over.pk).held_for == "quota"


def test_the_compute_policy_counts_devices_times_nodes_on_the_gpu_queue():
    from controlplane.policies.plans import gpu_count

    resources = {"resources": {"devices": 4, "nodes": 2, "strategy": "ddp"}}
    assert gpu_count("gpu", resources) == 8
    assert gpu_count("cpu", resources) == 0  # CPU processes are no GPUs


def test_a_policy_refuses_more_gpus_than_it_allows_per_job(settings, token_version, api, team):
    from controlplane.policies.selectors import current_number
    from controlplane.policies.services import policy_update

    policy_update(
        project=team.project,
        actor=team.compliance,
        changes={"compute": {"enabled": True, "max_gpus_per_job": 4}},
        reason="tests",
        base_version=current_number(team.project),
    )
    settings.TRAINING_QUEUE = "gpu"
    params = {"dataset_version_id": token_version.pk, "resources": {"devices": 4, "nodes": 2}}

    answer = post(api, team, "pretrain", params)

    assert answer.status_code == 409, answer.content
    (denial,) = answer.json()["error"]["denials"]
    assert denial["reason"] == "the job asks for 8 GPU(s); the policy allows 4 per job"
    answer = post(api, team, "pretrain", {**params, "resources": {"devices": 4}})
    assert answer.status_code == 201, answer.content
