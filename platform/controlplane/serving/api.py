"""REST API of serving: a project's deployments.

    GET/POST  /api/v1/projects/<id>/deployments/
    GET/PATCH /api/v1/projects/<id>/deployments/<name>/
    POST      /api/v1/projects/<id>/deployments/<name>/stop|start|scale/

Roles: viewers and compliance officers read; owners and engineers (RUN) deploy, change,
scale, stop and start. Another project's deployments are 404, like the project itself.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.errors import Conflict as ApiConflict
from controlplane.api.idempotency import idempotent
from controlplane.projects.permissions import Action
from controlplane.registry.selectors import model_in
from controlplane.registry.serializers import JSONIntegerField
from controlplane.serving import services
from controlplane.serving.errors import ServingError
from controlplane.serving.models import Deployment, Device
from controlplane.serving.selectors import (
    base_url,
    deployment_in,
    deployments_of,
    live_nodes,
    replicas_shown,
    served_version,
)


def raise_serving_error(error: ServingError):
    if error.fields and error.status == 400:
        raise serializers.ValidationError(error.fields) from None
    classes = {403: exceptions.PermissionDenied, 404: exceptions.NotFound, 409: ApiConflict}
    if error.status in classes:
        raise classes[error.status](str(error)) from None
    exc = exceptions.APIException(str(error), code="invalid")
    exc.status_code = error.status
    raise exc from None


# -- serializers -------------------------------------------------------------------------


class ReplicaOut(serializers.Serializer):
    id = serializers.CharField()
    state = serializers.CharField()
    node = serializers.CharField(source="node.name", allow_null=True, default=None)
    version = serializers.IntegerField(source="version.number")
    pid = serializers.IntegerField(allow_null=True)
    restarts = serializers.IntegerField()
    error = serializers.CharField()
    health = serializers.JSONField()
    created_at = serializers.DateTimeField()
    ready_at = serializers.DateTimeField(allow_null=True)
    ended_at = serializers.DateTimeField(allow_null=True)


class GuardrailsOut(serializers.Serializer):
    pii = serializers.CharField()
    pii_types = serializers.ListField(child=serializers.CharField())
    pii_output = serializers.CharField()
    toxicity = serializers.CharField()
    toxicity_threshold = serializers.FloatField()
    source = serializers.CharField()


class DeploymentOut(serializers.ModelSerializer):
    project_id = serializers.IntegerField()
    model = serializers.CharField(source="model.name")
    task = serializers.CharField(source="model.task")
    follows = serializers.CharField()
    pinned_version = serializers.IntegerField(source="pinned_version.number", allow_null=True)
    target_version = serializers.IntegerField(source="target_version.number")
    served_version = serializers.SerializerMethodField()
    guardrails = GuardrailsOut()
    base_url = serializers.SerializerMethodField()
    replica_set = serializers.SerializerMethodField()
    created_by = serializers.CharField(source="created_by.username")

    class Meta:
        model = Deployment
        fields = [
            "id",
            "project_id",
            "name",
            "model",
            "task",
            "follows",
            "alias",
            "pinned_version",
            "target_version",
            "served_version",
            "state",
            "reason",
            "replicas",
            "device",
            "max_batch",
            "max_queue",
            "guardrails",
            "rate_limit_per_minute",
            "archive_requests",
            "base_url",
            "replica_set",
            "created_by",
            "created_at",
            "updated_at",
            "stopped_at",
        ]

    def get_served_version(self, deployment) -> int:
        return served_version(deployment).number

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_base_url(self, deployment) -> str | None:
        nodes = self.context.get("nodes")
        return base_url(deployment, nodes)

    @extend_schema_field(ReplicaOut(many=True))
    def get_replica_set(self, deployment) -> list[dict]:
        return ReplicaOut(replicas_shown(deployment), many=True).data


def _limited(name: str, **options) -> JSONIntegerField:
    """An integer field with the range (and, for a create, the default) the model owns."""
    low, high = services.LIMITS[name]
    return JSONIntegerField(min_value=low, max_value=high, **options)


def _default(name: str):
    return Deployment._meta.get_field(name).default


class JSONBooleanField(serializers.BooleanField):
    """A JSON true or false and nothing else: DRF's BooleanField would take "false", 0 or
    "no", and a compliance setting must not flip on a guess."""

    default_error_messages = {"invalid": "Must be true or false."}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


ARCHIVE_HELP = "Archive every request and its answer (default true); false records nothing."


class DeploymentIn(StrictSerializer):
    name = serializers.CharField(max_length=63)
    model = serializers.CharField(max_length=100)
    version = JSONIntegerField(required=False, min_value=1, max_value=2**31 - 1)
    alias = serializers.CharField(required=False, max_length=65)
    replicas = _limited("replicas", required=False, default=_default("replicas"))
    device = serializers.ChoiceField(
        choices=Device.values, required=False, default=_default("device")
    )
    max_batch = _limited("max_batch", required=False, default=_default("max_batch"))
    max_queue = _limited("max_queue", required=False, default=_default("max_queue"))
    guardrails = serializers.DictField(required=False)
    rate_limit_per_minute = _limited(
        "rate_limit_per_minute", required=False, default=_default("rate_limit_per_minute")
    )
    archive_requests = JSONBooleanField(
        required=False, default=_default("archive_requests"), help_text=ARCHIVE_HELP
    )


class DeploymentPatch(StrictSerializer):
    guardrails = serializers.DictField(required=False)
    rate_limit_per_minute = _limited("rate_limit_per_minute", required=False)
    archive_requests = JSONBooleanField(required=False, help_text=ARCHIVE_HELP)


class ScaleIn(StrictSerializer):
    replicas = _limited("replicas")


class StopIn(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=2000, default="")


# -- views -------------------------------------------------------------------------------


def deployment_or_404(request, project_id: int, name: str, action: Action = Action.VIEW):
    project = project_or_404(request, project_id, action)
    deployment = deployment_in(project, name)
    if deployment is None:
        raise exceptions.NotFound(f"no deployment named '{name}' in this project")
    return deployment


def _out(deployment: Deployment) -> dict:
    fresh = deployments_of(deployment.project).get(pk=deployment.pk)
    return DeploymentOut(fresh, context={"nodes": list(live_nodes())}).data


class DeploymentListCreate(generics.GenericAPIView):
    serializer_class = DeploymentOut

    @extend_schema(responses=DeploymentOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(deployments_of(project))
        context = {"nodes": list(live_nodes())}
        return self.get_paginated_response(DeploymentOut(page, many=True, context=context).data)

    @idempotent
    @extend_schema(
        request=DeploymentIn,
        responses={201: DeploymentOut},
        description="Deploy a ready version (`version`) or follow an alias (`alias`: the "
        "deployment switches when the alias moves). Guardrails default to the pipeline "
        "settings of the data the model was trained on; `guardrails` overrides some. "
        "`archive_requests: false` deploys without an inference archive.",
    )
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.RUN)
        body = DeploymentIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = dict(body.validated_data)
        model = model_in(project, data.pop("model"))
        if model is None:
            raise serializers.ValidationError({"model": ["no model of that name in this project"]})
        try:
            deployment = services.deployment_create(
                project=project, actor=request.user, model=model, **data
            )
        except ServingError as error:
            raise_serving_error(error)
        return Response(_out(deployment), status=status.HTTP_201_CREATED)


class DeploymentDetail(APIView):
    @extend_schema(responses=DeploymentOut)
    def get(self, request, project_id: int, name: str):
        return Response(_out(deployment_or_404(request, project_id, name)))

    @extend_schema(request=DeploymentPatch, responses=DeploymentOut)
    def patch(self, request, project_id: int, name: str):
        """Guardrails (the fields given; the others keep their value), the per-token
        rate limit and `archive_requests` (replicas started after the change follow it)."""
        return _changed(request, project_id, name, services.deployment_update, DeploymentPatch)


class DeploymentStop(APIView):
    @extend_schema(request=StopIn, responses=DeploymentOut)
    def post(self, request, project_id: int, name: str):
        """Stop: replicas drain (requests in flight finish); calls answer 503 with the reason."""
        return _changed(request, project_id, name, services.deployment_stop, StopIn)


class DeploymentStart(APIView):
    @extend_schema(request=None, responses=DeploymentOut)
    def post(self, request, project_id: int, name: str):
        """Start a stopped or failed deployment again."""
        return _changed(request, project_id, name, services.deployment_start)


class DeploymentScale(APIView):
    @extend_schema(request=ScaleIn, responses=DeploymentOut)
    def post(self, request, project_id: int, name: str):
        return _changed(request, project_id, name, services.deployment_scale, ScaleIn)


def _changed(request, project_id: int, name: str, change, body_class=None) -> Response:
    """One change of a deployment by an owner or engineer: the body's fields are the
    service's arguments; the answer is the deployment as it now is."""
    deployment = deployment_or_404(request, project_id, name, Action.RUN)
    fields = {}
    if body_class is not None:
        body = body_class(data=request.data)
        body.is_valid(raise_exception=True)
        fields = body.validated_data
    try:
        deployment = change(deployment=deployment, actor=request.user, **fields)
    except ServingError as error:
        raise_serving_error(error)
    return Response(_out(deployment))
