"""The serving pages: the deployments list (and its deploy form), a deployment's page
(replicas polled by htmx, usage of the last hour, latest requests, the playground), and
the stop / start / scale buttons.

Reads go through page_selectors; writes through the serving services (the ones the API
calls), so a page can do nothing the API would refuse, and a service's refusal
(ServingError) is shown on the page, never as an error page. The playground posts to
`deployment_playground`, which relays a serve node's answer (playground.py).
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from controlplane.dashboard.access import ProjectRequest, found_or_404, project_page
from controlplane.finops.serving_usage import deployment_serving_totals
from controlplane.policies.errors import PolicyDenied
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action
from controlplane.registry.models import ModelTask
from controlplane.serving import page_selectors as pages
from controlplane.serving import playground, selectors
from controlplane.serving.forms import (
    DeployForm,
    ImagePlaygroundForm,
    ScaleForm,
    StopForm,
    TextPlaygroundForm,
)
from controlplane.serving.models import Deployment, DeploymentState
from workers.serve.protocol import BASE_PATH, GuardrailConfig


def deployment_or_404(project: Project, name: str) -> Deployment:
    return found_or_404(
        selectors.deployment_in(project, name), f"deployment {name!r} not found in this project"
    )


def to_deployment_page(project: Project, deployment: Deployment) -> HttpResponse:
    return redirect("serving-deployment", project_id=project.pk, name=deployment.name)


def _services():
    """The serving services and their error, imported when a button is pressed (the
    pages import nothing of the write path until they write)."""
    from controlplane.serving import services
    from controlplane.serving.errors import ServingError

    return services, ServingError


def _fields_text(fields: dict) -> str:
    """ "field: problem problem; other: problem": field errors as one message."""
    return "; ".join(f"{k}: {' '.join(map(str, v))}" for k, v in fields.items())


def _error_text(error: Exception) -> str:
    return _fields_text(getattr(error, "fields", None) or {}) or str(error)


@project_page()
def deployment_list(request: ProjectRequest, project: Project) -> HttpResponse:
    """The project's deployments (htmx polls the rows) and the "Deploy a model" form."""
    if request.htmx:
        context = {"project": project, "rows": pages.deployments_page(project)}
        return render(request, "serving/_deployment_rows.html", context)
    form = DeployForm(request.POST or None, models=pages.deployable_models(project))
    status = 200
    if request.method == "POST":
        if not request.can["run"]:
            raise PermissionDenied("only engineers and owners deploy models")
        deployment = _deploy(request, project, form)
        if deployment is not None:
            return to_deployment_page(project, deployment)
        status = 409 if getattr(form, "policy_denied", None) else 400
    context = {
        "project": project,
        "rows": pages.deployments_page(project),
        "form": form,
        "denied": getattr(form, "policy_denied", None),
    }
    return render(request, "serving/deployment_list.html", context, status=status)


def _deploy(request: ProjectRequest, project: Project, form: DeployForm) -> Deployment | None:
    """Create the deployment the form describes, or put the refusal into the form."""
    if not form.is_valid():
        return None
    data = form.cleaned_data
    model, version = pages.deploy_target(project, data["model_name"], data["version_number"])
    if model is None or (data["version_number"] is not None and version is None):
        form.add_error("source", "that model or version is not in this project any more")
        return None
    services, ServingError = _services()
    try:
        deployment = services.deployment_create(
            project=project,
            actor=request.user,
            name=data["name"],
            model=model,
            version=version,
            alias=data["alias"],
            replicas=data["replicas"],
            device=data["device"],
            max_batch=data["max_batch"],
            max_queue=data["max_queue"],
            guardrails=data["guardrails"],
            rate_limit_per_minute=data["rate_limit_per_minute"],
            archive_requests=data["archive_requests"],
        )
    except ServingError as error:
        form.add_error(None, str(error))
        for key, problems in (getattr(error, "fields", None) or {}).items():
            key = key.removeprefix("guardrails.")
            if key in form.fields:
                form.add_error(key, " ".join(map(str, problems)))
        return None
    except PolicyDenied as error:
        form.policy_denied = error.body()  # shown as the policy banner above the form
        return None
    messages.success(
        request,
        f"{deployment.name} deployed ({model.name} {deployment.follows}): its replicas start "
        "on the serve nodes; the page shows them as they become ready.",
    )
    return deployment


@project_page()
def deployment_detail(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    """A deployment's page; htmx polls its replicas fragment."""
    deployment = deployment_or_404(project, name)
    context = {
        "project": project,
        "deployment": deployment,
        "replicas": pages.replicas_of(deployment),
        "served": pages.served_versions(deployment),
    }
    if request.htmx:
        return render(request, "serving/_replicas.html", context)
    usage = pages.deployment_usage(deployment)
    image = deployment.model.task == ModelTask.IMAGE_GENERATION
    context.update(
        {
            "base_url": selectors.base_url(deployment)
            or pages.NODE_PLACEHOLDER
            + BASE_PATH.format(project=project.slug, deployment=deployment.name),
            "guardrails": GuardrailConfig.from_dict(deployment.guardrails),
            "lineage": pages.version_lineage(deployment.target_version),
            "usage": usage,
            "usage_charts": usage.charts(),
            "served_totals": deployment_serving_totals(deployment, timezone.now()),
            "latest": pages.latest_requests(deployment),
            "image": image,
            "scale_form": ScaleForm(initial={"replicas": deployment.replicas}),
            "stop_form": StopForm(),
        }
    )
    if request.can["run"]:
        context["playground_form"] = ImagePlaygroundForm() if image else TextPlaygroundForm()
    return render(request, "serving/deployment_detail.html", context)


@project_page(Action.RUN)
@require_POST
def deployment_stop(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    deployment = deployment_or_404(project, name)
    form = StopForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Tick the box to confirm the stop.")
        return to_deployment_page(project, deployment)
    services, ServingError = _services()
    try:
        services.deployment_stop(
            deployment=deployment, actor=request.user, reason=form.cleaned_data["reason"]
        )
    except ServingError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(request, f"{deployment.name} stopped: its replicas drain and stop.")
    return to_deployment_page(project, deployment)


@project_page(Action.RUN)
@require_POST
def deployment_start(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    deployment = deployment_or_404(project, name)
    services, ServingError = _services()
    try:
        services.deployment_start(deployment=deployment, actor=request.user)
    except ServingError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(request, f"{deployment.name} started: its replicas are being placed.")
    return to_deployment_page(project, deployment)


@project_page(Action.RUN)
@require_POST
def deployment_scale(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    deployment = deployment_or_404(project, name)
    form = ScaleForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(e for errs in form.errors.values() for e in errs))
        return to_deployment_page(project, deployment)
    services, ServingError = _services()
    try:
        services.deployment_scale(
            deployment=deployment, actor=request.user, replicas=form.cleaned_data["replicas"]
        )
    except ServingError as error:
        messages.error(request, _error_text(error))
    else:
        messages.success(
            request, f"{deployment.name} scaled to {form.cleaned_data['replicas']} replicas."
        )
    return to_deployment_page(project, deployment)


@project_page(Action.RUN)
@require_POST
def deployment_playground(request: ProjectRequest, project: Project, name: str) -> HttpResponse:
    """One playground request: text is streamed (text/event-stream), images come back as
    JSON; a refusal before the first byte is the JSON error shape with its status."""
    deployment = deployment_or_404(project, name)
    image = deployment.model.task == ModelTask.IMAGE_GENERATION
    form = (ImagePlaygroundForm if image else TextPlaygroundForm)(request.POST)
    try:
        if not form.is_valid():
            raise playground.PlaygroundError(
                400,
                "invalid_value",
                _fields_text(form.errors),
                fields={k: list(v) for k, v in form.errors.items()},
            )
        if deployment.state != DeploymentState.RUNNING:
            raise playground.PlaygroundError(
                503,
                "deployment_stopped",
                f"{deployment.name} is {deployment.state}"
                + (f": {deployment.reason}" if deployment.reason else "")
                + ". Start it to use the playground.",
            )
        node_url = pages.ready_node_url(deployment)
        if not node_url:
            raise playground.PlaygroundError(
                503,
                "no_replica",
                f"No replica of {deployment.name} is ready yet; the replicas table above shows "
                "them loading. Try again once one is ready.",
            )
        call = playground.NodeCall(
            node_url=node_url,
            project_slug=project.slug,
            deployment=deployment.name,
            user_id=request.user.pk,
            username=request.user.get_username(),
            secret=playground.node_secret(),
        )
        endpoint, body = form.body(deployment.name)
        if image:
            answer, request_id = playground.call_json(call, endpoint, body)
            return JsonResponse(
                {
                    "request_id": request_id,
                    "images": [d.get("b64_json", "") for d in answer.get("data", [])],
                    "x_guardrails": answer.get("x_guardrails"),
                }
            )
        upstream = call.post(endpoint, body)
    except playground.PlaygroundError as error:
        return JsonResponse(error.body(), status=error.status)
    response = StreamingHttpResponse(playground.relay(upstream), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"  # a proxy in front must not hold the chunks back
    return response
