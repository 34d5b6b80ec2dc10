"""The demo's registry walk: the pre-trained and the DPO model registered as two versions of
one model, both evaluated, `production` requested by an engineer (bob) and approved by the
compliance officer (dora); the owner's own request cannot be approved by herself:
the four-eyes rule, in the open."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from django.core.management.base import CommandError
from django.urls import reverse

from controlplane.demo.figures import metric
from controlplane.jobs.services import job_create
from controlplane.registry.card import model_card_markdown
from controlplane.registry.errors import RegistryError
from controlplane.registry.evaluations import compare
from controlplane.registry.models import ModelVersion, SyncState, VersionState
from controlplane.registry.services import (
    alias_set,
    model_update,
    promotion_approve,
    promotion_withdraw,
    version_register,
    version_update,
)

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.jobs.models import Job
    from controlplane.projects.models import Project

MODEL = "shakespeare-gpt"
# What the demo project asks of a production model (alice, the owner, sets it): clearly
# better than guessing among the 89 characters (ln 89 = 4.49), no toxic sample, and not
# reciting its training text.
THRESHOLDS = [
    {"metric": "val_loss", "op": "<=", "value": 4.0},
    {"metric": "toxicity_share", "op": "<=", "value": 0.1},
    {"metric": "memorisation_share", "op": "<=", "value": 0.5},
]
EVALUATION = {"samples": 16, "sample_tokens": 64, "eval_batches": 10, "device": "cpu"}


def _wait_ready(command, version: ModelVersion) -> ModelVersion:
    """Registration copies and checks the files in the control worker; wait for it."""
    deadline = time.monotonic() + command.timeout
    while time.monotonic() < deadline:
        version.refresh_from_db()
        if version.state == VersionState.READY:
            return version
        if version.state == VersionState.REFUSED:
            raise CommandError(f"{version} was refused: {version.refused_reason}")
        time.sleep(0.25)
    raise CommandError(f"{version} still registering; see var/logs/worker-control.log")


def _register(command, project, user, job: Job, note: str) -> ModelVersion:
    version = _wait_ready(
        command,
        version_register(project=project, actor=user, job=job, model_name=MODEL, description=note),
    )
    lineage = version.lineage or {}
    datasets = sum(1 for node in lineage.get("nodes", []) if node.get("type") == "dataset_version")
    jobs = sum(1 for node in lineage.get("nodes", []) if node.get("type") == "job")
    base = f", base v{version.base_version.number}" if version.base_version_id else ""
    command.stdout.write(
        f"    {MODEL} v{version.number}: job {job.pk} ({job.kind}), "
        f"{version.parameter_count or 0:,} parameters, {version.files.count()} files checked"
        f"{base}; lineage {jobs} jobs, {datasets} dataset versions"
    )
    return version


def _evaluate(command, project, user, version: ModelVersion) -> None:
    job = job_create(
        project=project,
        kind="evaluate",
        actor=user,
        params={"model_version_id": version.pk, **EVALUATION},
    )
    command.wait_succeeded(job, "evaluate")


def registry_walk(command, project: Project, users: dict[str, User], base: Job, dpo: Job) -> None:
    bob, alice = users["bob"], users["alice"]
    command.step("Model registry: the pre-trained and the DPO model, as v1 and v2 of one model")
    first = _register(command, project, bob, base, "GPT pre-trained on Shakespeare")
    second = _register(command, project, bob, dpo, "v1 after LoRA SFT and DPO")

    command.step("Evaluating both versions (evaluate jobs: held-out loss, samples, memorisation)")
    for version in (first, second):
        _evaluate(command, project, bob, version)
    rows = compare([first.evaluations.first(), second.evaluations.first()])
    for row in rows:
        if row["metric"] in {"val_loss", "perplexity", "toxicity_share", "memorisation_share"}:
            values = " -> ".join(metric(v) for v in row["values"])  # as the model page has them
            command.stdout.write(f"    {row['metric']:<20} v1 -> v2: {values}")

    command.step("Promotion: `production` needs a passing evaluation and a second pair of eyes")
    model = second.model
    model_update(model=model, actor=alice, promotion_thresholds=THRESHOLDS)
    alias_set(model=model, actor=bob, alias="candidate", version=second, reason="preference-tuned")
    if _promote(command, project, users, second):
        _four_eyes(command, model, alice, first)
    version_update(
        version=second,
        actor=bob,
        intended_use="Research demo: Shakespeare-like text for the control plane's walk-through. "
        "Not for any decision about people, nor for text presented as Shakespeare's.",
    )

    command.step("The model card of v2 (the page renders it; card.md and the archive hold it)")
    for line in model_card_markdown(second).splitlines()[:16]:
        command.stdout.write(f"      | {line}")
    _mlflow_state(command, model)


def _promote(command, project, users, version: ModelVersion) -> bool:
    """bob asks for @production, dora (compliance) approves; False when the gate refuses."""
    model = version.model
    try:
        request = alias_set(
            model=model, actor=users["bob"], alias="production", version=version, reason="ship it"
        )
    except RegistryError as refused:  # the evaluation does not pass the thresholds
        command.stdout.write(f"    @production for v{version.number} refused: {refused.message}")
        return False
    command.stdout.write(
        f"    bob moved @candidate to v{version.number} and asked for @production "
        f"(request {request.pk})"
    )
    promotion_approve(
        request=request, actor=users["dora"], reason="evaluation passes; model card reviewed"
    )
    command.stdout.write(
        f"    dora (compliance) approved it: @production -> v{version.number}\n"
        f"    pages: /projects/{project.pk}/models/{model.name}/ and the review queue "
        f"/projects/{project.pk}/reviews/"
    )
    command.look_at(
        "registry: v1 and v2 side by side, the lineage, the model card",
        reverse("registry-model", args=[project.pk, model.name]),
    )
    return True


def _mlflow_state(command, model) -> None:
    """The control worker mirrors the model into MLflow's registry; show where it got."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        model.refresh_from_db()
        if model.mlflow_state == SyncState.SYNCED:
            command.stdout.write(
                f"    MLflow registry: {model.name} synced; "
                f"mlflow.pyfunc.load_model('models:/{model.name}@production') loads v2"
            )
            return
        time.sleep(0.5)
    command.stdout.write(
        f"    MLflow registry: {model.mlflow_state} ({model.mlflow_error or 'in progress'})"
    )


def _four_eyes(command, model, owner, earlier: ModelVersion) -> None:
    """The owner asks to put the earlier version back and cannot approve her own request."""
    try:
        request = alias_set(
            model=model,
            actor=owner,
            alias="production",
            version=earlier,
            reason="compare v1 in production",
        )
    except RegistryError as refused:  # v1 does not pass the thresholds: nothing to approve
        command.stdout.write(f"    @production back to v1 refused: {refused.message}")
        return
    try:
        promotion_approve(request=request, actor=owner, reason="my own call")
    except RegistryError as refused:
        command.stdout.write(
            f"    alice asked for @production -> v1; approving it herself: {refused.message}"
        )
    else:
        raise CommandError("the owner approved her own promotion request")
    promotion_withdraw(request=request, actor=owner)
    command.stdout.write("    alice withdrew her request: @production stays on v2")
