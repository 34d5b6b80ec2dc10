"""The registry API's serializers: what a model, version, alias and request look like,
and the bodies the API accepts (unknown fields refused)."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from controlplane.api.access import StrictSerializer
from controlplane.finops.model_cost import cost_as_json, model_version_cost
from controlplane.registry.models import (
    ModelAlias,
    ModelTask,
    ModelVersion,
    PromotionRequest,
    RegisteredModel,
)
from controlplane.registry.selectors import latest_evaluation

MAX_BIGINT = 2**63 - 1
MAX_TEXT = 20_000


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
    cost = serializers.SerializerMethodField()

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
            "cost",
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

    @extend_schema_field(serializers.DictField())
    def get_cost(self, version) -> dict:
        """The priced usage of every job of its lineage (finops.model_cost); a list passes
        the costs of its page in the context (two queries for the whole page)."""
        costs = self.context.get("costs")
        cost = costs[version.pk] if costs is not None else model_version_cost(version)
        return cost_as_json(cost)

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
