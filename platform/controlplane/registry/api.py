"""REST API of the model registry: models, versions, aliases, promotion requests, settings.

Roles: viewers read; engineers (RUN) create models, register versions, move unprotected
aliases, request promotions and edit a version's texts; owners and compliance officers
(REVIEW) approve or reject promotions, edit thresholds and protected aliases. Another
project's models are 404, like the project itself.
"""

from __future__ import annotations

import re

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_field,
)
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.errors import Conflict as ApiConflict
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param
from controlplane.jobs.models import Job
from controlplane.projects.permissions import Action
from controlplane.registry import services
from controlplane.registry.errors import RegistryError
from controlplane.registry.models import (
    ALIAS_PATTERN,
    MODEL_NAME_PATTERN,
    ModelAlias,
    ModelTask,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    VersionState,
)
from controlplane.registry.selectors import (
    aliases_of,
    latest_evaluation,
    model_in,
    models_of,
    promotion_in,
    promotions_of,
    protected_aliases,
    version_in,
    versions_of,
)

MAX_BIGINT = 2**63 - 1
MAX_TEXT = 20_000


def raise_registry_error(error: RegistryError):
    if error.fields and error.status == 400:
        raise serializers.ValidationError(error.fields) from None
    classes = {
        403: exceptions.PermissionDenied,
        404: exceptions.NotFound,
        409: ApiConflict,
    }
    if error.status in classes:
        raise classes[error.status](str(error)) from None
    exc = exceptions.APIException(str(error), code="invalid")
    exc.status_code = error.status
    raise exc from None


class JSONIntegerField(serializers.IntegerField):
    """A JSON integer and nothing else: no "12" strings, 12.0 floats or true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


# -- output ----------------------------------------------------------------------------


class RegisteredModelOut(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    version_count = serializers.IntegerField(read_only=True)  # annotated by models_of
    latest_version = serializers.IntegerField(source="latest_number", allow_null=True)
    aliases = serializers.SerializerMethodField()

    class Meta:
        model = RegisteredModel
        fields = [
            "id",
            "project_id",
            "name",
            "task",
            "description",
            "promotion_thresholds",
            "last_version_number",
            "version_count",
            "latest_version",
            "aliases",
            "created_by",
            "created_at",
            "updated_at",
            "mlflow_state",
            "mlflow_error",
            "mlflow_synced_at",
        ]

    def get_aliases(self, model) -> dict[str, int]:
        return {alias.name: alias.version.number for alias in model.aliases.all()}


class ModelFileOut(serializers.Serializer):
    name = serializers.CharField()
    role = serializers.CharField()
    object_key = serializers.CharField()
    sha256 = serializers.CharField()
    size = serializers.IntegerField()
    verified_at = serializers.DateTimeField(allow_null=True)


class ModelEvaluationOut(serializers.Serializer):
    id = serializers.IntegerField()
    job_id = serializers.IntegerField()
    metrics = serializers.JSONField()
    finished_at = serializers.DateTimeField(allow_null=True)


class ModelVersionOut(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    created_by = serializers.CharField(source="created_by.username")
    source_job_id = serializers.IntegerField()
    base_version = serializers.SerializerMethodField()
    files = ModelFileOut(many=True, read_only=True)
    aliases = serializers.SerializerMethodField()
    dataset_versions = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    lineage_jobs = serializers.PrimaryKeyRelatedField(many=True, read_only=True)
    latest_evaluation = serializers.SerializerMethodField()

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "model",
            "number",
            "state",
            "source_job_id",
            "source_attempt",
            "base_version",
            "metrics",
            "params",
            "architecture",
            "parameter_count",
            "description",
            "intended_use",
            "limitations",
            "files",
            "aliases",
            "dataset_versions",
            "lineage_jobs",
            "lineage",
            "latest_evaluation",
            "created_by",
            "created_at",
            "ready_at",
            "refused_reason",
            "deleted_at",
            "mlflow_version",
        ]

    def get_base_version(self, version) -> dict | None:
        base = version.base_version
        if base is None:
            return None
        return {"id": base.pk, "model": base.model.name, "number": base.number}

    def get_aliases(self, version) -> list[str]:
        return sorted(alias.name for alias in version.aliases.all())

    @extend_schema_field(ModelEvaluationOut(allow_null=True))
    def get_latest_evaluation(self, version) -> dict | None:
        evaluation = latest_evaluation(version)
        return ModelEvaluationOut(evaluation).data if evaluation is not None else None


class ModelAliasOut(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="version.number")
    previous_version = serializers.IntegerField(
        source="previous_version.number", allow_null=True, default=None
    )
    moved_by = serializers.CharField(source="moved_by.username")

    class Meta:
        model = ModelAlias
        fields = ["model", "name", "version", "previous_version", "moved_by", "moved_at"]


class PromotionRequestOut(serializers.ModelSerializer):
    model = serializers.CharField(source="model.name")
    version = serializers.IntegerField(source="version.number")
    from_version = serializers.IntegerField(
        source="from_version.number", allow_null=True, default=None
    )
    requested_by = serializers.CharField(source="requested_by.username")
    decided_by = serializers.CharField(source="decided_by.username", allow_null=True, default=None)
    evaluation_id = serializers.IntegerField(allow_null=True)

    class Meta:
        model = PromotionRequest
        fields = [
            "id",
            "model",
            "alias",
            "version",
            "from_version",
            "is_rollback",
            "reason",
            "evaluation_id",
            "state",
            "requested_by",
            "requested_at",
            "decided_by",
            "decided_at",
            "decision_reason",
        ]


class RegistrySettingsOut(serializers.Serializer):
    protected_aliases = serializers.ListField(child=serializers.CharField())


# -- input -----------------------------------------------------------------------------


class RegisteredModelIn(StrictSerializer):
    name = serializers.CharField(max_length=100)
    task = serializers.ChoiceField(choices=ModelTask.values)
    description = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=MAX_TEXT
    )


class RegisteredModelPatch(StrictSerializer):
    description = serializers.CharField(required=False, allow_blank=True, max_length=MAX_TEXT)
    promotion_thresholds = serializers.JSONField(
        required=False, help_text='[{"metric": "val_loss", "op": "<=", "value": 2.0}, ...]'
    )


class ModelVersionRegisterIn(StrictSerializer):
    job_id = JSONIntegerField(min_value=1, max_value=MAX_BIGINT)
    description = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=MAX_TEXT
    )
    create_model = serializers.BooleanField(
        required=False, default=False, help_text="create the model when it does not exist"
    )


class ModelVersionPatch(StrictSerializer):
    intended_use = serializers.CharField(required=False, allow_blank=True, max_length=MAX_TEXT)
    limitations = serializers.CharField(required=False, allow_blank=True, max_length=MAX_TEXT)
    description = serializers.CharField(required=False, allow_blank=True, max_length=MAX_TEXT)


class ModelAliasIn(StrictSerializer):
    version = JSONIntegerField(min_value=1, max_value=MAX_BIGINT)
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class PromotionReasonIn(StrictSerializer):
    reason = serializers.CharField(required=False, allow_blank=True, default="", max_length=2000)


class RegistrySettingsIn(StrictSerializer):
    protected_aliases = serializers.ListField(child=serializers.CharField(max_length=64))


# -- lookups ---------------------------------------------------------------------------


def model_or_404(request, project_id: int, name: str, action: Action = Action.VIEW):
    project = project_or_404(request, project_id, action)
    # A name no model can have (a NUL, a slash...) never reaches the database.
    model = model_in(project, name) if re.fullmatch(MODEL_NAME_PATTERN, name) else None
    if model is None:
        raise exceptions.NotFound(f"no model named '{name}' in this project")
    return model


def _model_out(model: RegisteredModel) -> dict:
    return RegisteredModelOut(
        models_of(model.project).prefetch_related("aliases__version").get(pk=model.pk)
    ).data


def version_or_404(request, project_id, name, number, action: Action = Action.VIEW):
    model = model_or_404(request, project_id, name, action)
    version = version_in(model, number)
    if version is None:
        raise exceptions.NotFound(f"{name} has no version {number}")
    return version


def _version_out(version: ModelVersion) -> dict:
    fresh = (
        versions_of(version.model)
        .prefetch_related("aliases", "dataset_versions", "lineage_jobs")
        .get(pk=version.pk)
    )
    return ModelVersionOut(fresh).data


def _alias_or_promotion(result) -> Response:
    if isinstance(result, PromotionRequest):
        return Response(PromotionRequestOut(result).data, status=status.HTTP_202_ACCEPTED)
    return Response(ModelAliasOut(result).data)


# -- views -----------------------------------------------------------------------------


class ModelListCreate(generics.GenericAPIView):
    serializer_class = RegisteredModelOut

    @extend_schema(responses=RegisteredModelOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(models_of(project).prefetch_related("aliases__version"))
        return self.get_paginated_response(RegisteredModelOut(page, many=True).data)

    @extend_schema(request=RegisteredModelIn, responses={201: RegisteredModelOut})
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.RUN)
        body = RegisteredModelIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            model = services.model_create(
                project=project, actor=request.user, **body.validated_data
            )
        except RegistryError as error:
            raise_registry_error(error)
        return Response(_model_out(model), status=status.HTTP_201_CREATED)


class ModelDetail(APIView):
    @extend_schema(responses=RegisteredModelOut)
    def get(self, request, project_id: int, name: str):
        return Response(_model_out(model_or_404(request, project_id, name)))

    @extend_schema(request=RegisteredModelPatch, responses=RegisteredModelOut)
    def patch(self, request, project_id: int, name: str):
        """Description (engineers); promotion thresholds (owners and compliance officers)."""
        body = RegisteredModelPatch(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        action = Action.REVIEW if "promotion_thresholds" in data else Action.RUN
        model = model_or_404(request, project_id, name, action)
        try:
            model = services.model_update(
                model=model,
                actor=request.user,
                description=data.get("description"),
                promotion_thresholds=data.get("promotion_thresholds"),
            )
        except RegistryError as error:
            raise_registry_error(error)
        return Response(_model_out(model))


class VersionListRegister(generics.GenericAPIView):
    serializer_class = ModelVersionOut

    @extend_schema(
        parameters=[OpenApiParameter("state", enum=VersionState.values)],
        responses=ModelVersionOut(many=True),
    )
    def get(self, request, project_id: int, name: str):
        model = model_or_404(request, project_id, name)
        state = choice_param(request, "state", VersionState.values)
        versions = versions_of(model).prefetch_related(
            "aliases", "dataset_versions", "lineage_jobs"
        )
        if state:
            versions = versions.filter(state=state)
        page = self.paginate_queryset(versions)
        return self.get_paginated_response(ModelVersionOut(page, many=True).data)

    @idempotent
    @extend_schema(
        request=ModelVersionRegisterIn,
        responses={201: ModelVersionOut},
        description="Register a succeeded job's model as the next version (state "
        "`registering`; the control worker copies and verifies its files, then `ready`).",
    )
    def post(self, request, project_id: int, name: str):
        project = project_or_404(request, project_id, Action.RUN)
        body = ModelVersionRegisterIn(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        job = Job.objects.filter(project=project, pk=data["job_id"]).first()
        if job is None:
            raise exceptions.NotFound(f"job {data['job_id']} not found in this project")
        try:
            version = services.version_register(
                project=project,
                actor=request.user,
                job=job,
                model_name=name,
                create_model=data["create_model"],
                description=data["description"],
            )
        except RegistryError as error:
            raise_registry_error(error)
        return Response(_version_out(version), status=status.HTTP_201_CREATED)


class VersionDetail(APIView):
    @extend_schema(responses=ModelVersionOut)
    def get(self, request, project_id: int, name: str, number: int):
        return Response(_version_out(version_or_404(request, project_id, name, number)))

    @extend_schema(request=ModelVersionPatch, responses=ModelVersionOut)
    def patch(self, request, project_id: int, name: str, number: int):
        """The model card's editable texts: intended use, known limits, description."""
        version = version_or_404(request, project_id, name, number, Action.RUN)
        body = ModelVersionPatch(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            version = services.version_update(
                version=version, actor=request.user, **body.validated_data
            )
        except RegistryError as error:
            raise_registry_error(error)
        return Response(_version_out(version))

    @extend_schema(
        responses={200: ModelVersionOut, 409: OpenApiResponse(description="an alias points at it")}
    )
    def delete(self, request, project_id: int, name: str, number: int):
        """Delete a version: its objects go, its row stays as a `deleted` tombstone."""
        version = version_or_404(request, project_id, name, number, Action.RUN)
        try:
            version = services.version_delete(version=version, actor=request.user)
        except RegistryError as error:
            raise_registry_error(error)
        return Response(_version_out(version))


def _alias_of(model, alias: str) -> ModelAlias:
    found = aliases_of(model).filter(name=alias).first() if _alias_like(alias) else None
    if found is None:
        raise exceptions.NotFound(f"{model.name} has no alias @{alias}")
    return found


def _alias_like(alias: str) -> bool:
    return re.fullmatch(ALIAS_PATTERN, alias) is not None


class AliasDetail(APIView):
    @extend_schema(responses=ModelAliasOut)
    def get(self, request, project_id: int, name: str, alias: str):
        return Response(
            ModelAliasOut(_alias_of(model_or_404(request, project_id, name), alias)).data
        )

    @extend_schema(
        request=ModelAliasIn,
        responses={
            200: OpenApiResponse(ModelAliasOut, description="moved (an unprotected alias)"),
            202: OpenApiResponse(
                PromotionRequestOut, description="a protected alias: a promotion request was opened"
            ),
            409: OpenApiResponse(description="the version has no passing evaluation"),
        },
    )
    def put(self, request, project_id: int, name: str, alias: str):
        """Point the alias at a version. A protected alias (`production` by default) needs
        a passing evaluation and a second member's approval: 202 with the request."""
        model = model_or_404(request, project_id, name, Action.RUN)
        body = ModelAliasIn(data=request.data)
        body.is_valid(raise_exception=True)
        version = version_in(model, body.validated_data["version"])
        if version is None:
            raise exceptions.NotFound(f"{name} has no version {body.validated_data['version']}")
        try:
            result = services.alias_set(
                model=model,
                actor=request.user,
                alias=alias,
                version=version,
                reason=body.validated_data["reason"],
            )
        except RegistryError as error:
            raise_registry_error(error)
        return _alias_or_promotion(result)

    @extend_schema(responses={204: None})
    def delete(self, request, project_id: int, name: str, alias: str):
        model = model_or_404(request, project_id, name, Action.RUN)
        _alias_of(model, alias)  # 404 for an alias it does not have
        try:
            services.alias_delete(model=model, actor=request.user, alias=alias)
        except RegistryError as error:
            raise_registry_error(error)
        return Response(status=status.HTTP_204_NO_CONTENT)


class AliasRollback(APIView):
    @extend_schema(
        request=PromotionReasonIn,
        responses={
            200: OpenApiResponse(ModelAliasOut, description="moved back"),
            202: OpenApiResponse(
                PromotionRequestOut, description="a protected alias: request opened"
            ),
        },
    )
    def post(self, request, project_id: int, name: str, alias: str):
        """Point the alias back at its previous version (same rules as a move)."""
        model = model_or_404(request, project_id, name, Action.RUN)
        _alias_of(model, alias)
        body = PromotionReasonIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            result = services.alias_rollback(
                model=model, actor=request.user, alias=alias, reason=body.validated_data["reason"]
            )
        except RegistryError as error:
            raise_registry_error(error)
        return _alias_or_promotion(result)


class PromotionList(generics.GenericAPIView):
    serializer_class = PromotionRequestOut

    @extend_schema(
        parameters=[OpenApiParameter("state", enum=PromotionState.values)],
        responses=PromotionRequestOut(many=True),
    )
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        state = choice_param(request, "state", PromotionState.values)
        page = self.paginate_queryset(promotions_of(project, state=state))
        return self.get_paginated_response(PromotionRequestOut(page, many=True).data)


def promotion_or_404(request, project_id: int, request_id: int) -> PromotionRequest:
    project = project_or_404(request, project_id)
    found = promotion_in(project, request_id)
    if found is None:
        raise exceptions.NotFound(f"promotion request {request_id} not found in this project")
    return found


class _Decision(APIView):
    decide = None

    @extend_schema(request=PromotionReasonIn, responses=PromotionRequestOut)
    def post(self, request, project_id: int, request_id: int):
        promotion = promotion_or_404(request, project_id, request_id)
        body = PromotionReasonIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            promotion = type(self).decide(
                request=promotion, actor=request.user, reason=body.validated_data["reason"]
            )
        except RegistryError as error:
            raise_registry_error(error)
        return Response(PromotionRequestOut(promotion).data)


class PromotionApprove(_Decision):
    """Approve (owner or compliance officer, not the requester): the alias moves."""

    decide = staticmethod(services.promotion_approve)


class PromotionReject(_Decision):
    """Reject (owner or compliance officer, not the requester), with a reason."""

    decide = staticmethod(services.promotion_reject)


class PromotionWithdraw(APIView):
    @extend_schema(request=None, responses=PromotionRequestOut)
    def post(self, request, project_id: int, request_id: int):
        """The requester takes their request back."""
        promotion = promotion_or_404(request, project_id, request_id)
        try:
            promotion = services.promotion_withdraw(request=promotion, actor=request.user)
        except RegistryError as error:
            raise_registry_error(error)
        return Response(PromotionRequestOut(promotion).data)


class RegistrySettingsView(APIView):
    @extend_schema(responses=RegistrySettingsOut)
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        return Response({"protected_aliases": protected_aliases(project)})

    @extend_schema(request=RegistrySettingsIn, responses=RegistrySettingsOut)
    def put(self, request, project_id: int):
        """Which aliases need a promotion request (owners and compliance officers)."""
        project = project_or_404(request, project_id, Action.REVIEW)
        body = RegistrySettingsIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            row = services.registry_settings_update(
                project=project,
                actor=request.user,
                protected_aliases=body.validated_data["protected_aliases"],
            )
        except RegistryError as error:
            raise_registry_error(error)
        return Response({"protected_aliases": row.protected_aliases})
