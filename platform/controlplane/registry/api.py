"""REST API of the model registry: models, versions, aliases, promotion requests, settings.

Roles: viewers read; engineers (RUN) create models, register versions, move unprotected
aliases, request promotions and edit a version's texts; owners and compliance officers
(REVIEW) approve or reject promotions, edit thresholds and protected aliases. Another
project's models are 404, like the project itself.
"""

from __future__ import annotations

from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import project_or_404
from controlplane.api.errors import Conflict as ApiConflict
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param
from controlplane.finops.model_cost import model_version_costs
from controlplane.jobs.selectors import job_in
from controlplane.projects.permissions import Action
from controlplane.registry import services
from controlplane.registry.errors import RegistryError
from controlplane.registry.models import (
    ModelAlias,
    ModelVersion,
    PromotionRequest,
    PromotionState,
    RegisteredModel,
    VersionState,
)
from controlplane.registry.selectors import (
    alias_in,
    model_in,
    models_of,
    promotion_in,
    promotions_of,
    registry_protected_aliases,
    version_in,
    versions_detailed,
)
from controlplane.registry.serializers import (
    ModelAliasIn,
    ModelAliasOut,
    ModelVersionOut,
    ModelVersionPatch,
    ModelVersionRegisterIn,
    PromotionReasonIn,
    PromotionRequestOut,
    RegisteredModelIn,
    RegisteredModelOut,
    RegisteredModelPatch,
    RegistrySettingsIn,
    RegistrySettingsOut,
)


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


# -- lookups ---------------------------------------------------------------------------


def model_or_404(request, project_id: int, name: str, action: Action = Action.VIEW):
    project = project_or_404(request, project_id, action)
    model = model_in(project, name)  # None too for a name no model can have
    if model is None:
        raise exceptions.NotFound(f"no model named '{name}' in this project")
    return model


def _model_out(model: RegisteredModel) -> dict:
    return RegisteredModelOut(models_of(model.project).get(pk=model.pk)).data


def version_or_404(request, project_id, name, number, action: Action = Action.VIEW):
    model = model_or_404(request, project_id, name, action)
    version = version_in(model, number)
    if version is None:
        raise exceptions.NotFound(f"{name} has no version {number}")
    return version


def _version_out(version: ModelVersion) -> dict:
    fresh = versions_detailed(version.model).get(pk=version.pk)
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
        page = self.paginate_queryset(models_of(project))
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
        versions = versions_detailed(model, state=state)
        page = self.paginate_queryset(versions)
        costs = model_version_costs(page)
        return self.get_paginated_response(
            ModelVersionOut(page, many=True, context={"costs": costs}).data
        )

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
        job = job_in(project, data["job_id"])
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
    found = alias_in(model, alias)
    if found is None:
        raise exceptions.NotFound(f"{model.name} has no alias @{alias}")
    return found


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
        # The setting as edited (what a PUT replaces); the policy's promotion rule may
        # protect more (GET .../policy/).
        return Response({"protected_aliases": registry_protected_aliases(project)})

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
