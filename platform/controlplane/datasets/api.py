"""REST API of datasets and versions, including the presigned multipart upload."""

from __future__ import annotations

from django.core.validators import validate_slug
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param
from controlplane.datasets.models import Dataset, DatasetFile, DatasetKind, DatasetVersion
from controlplane.datasets.selectors import (
    dataset_in,
    datasets_for,
    version_exists,
    version_file_ids,
    version_numbered,
    versions_of,
)
from controlplane.datasets.services import (
    MAX_PART_SIZE,
    MIN_PART_SIZE,
    DatasetError,
    DeclaredFile,
    dataset_create,
    dataset_update,
    dataset_version_abort,
    dataset_version_complete,
    dataset_version_start,
)
from controlplane.names import validate_name
from controlplane.projects.permissions import Action

# PostgreSQL's bigint: a size beyond it could never be stored (and is no real file).
MAX_BIGINT = 2**63 - 1


def raise_dataset_error(error: DatasetError):
    if error.fields:
        raise serializers.ValidationError(error.fields) from None
    exc = APIException(str(error))
    exc.status_code = error.status
    raise exc from None


class JSONIntegerField(serializers.IntegerField):
    """A JSON integer and nothing else: no "12" strings, 12.0 floats or true."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class DatasetOut(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    version_count = serializers.IntegerField(read_only=True)  # annotated by datasets_for

    class Meta:
        model = Dataset
        fields = [
            "id",
            "project_id",
            "name",
            "slug",
            "kind",
            "description",
            "source",
            "license",
            "subject_field",
            "created_by",
            "created_at",
            "version_count",
        ]


class DatasetIn(StrictSerializer):
    name = serializers.CharField(max_length=120, validators=[validate_name])
    slug = serializers.CharField(max_length=63, validators=[validate_slug])
    kind = serializers.ChoiceField(choices=DatasetKind.choices)
    description = serializers.CharField(required=False, allow_blank=True, default="")
    source = serializers.CharField(required=False, allow_blank=True, default="", max_length=500)
    license = serializers.CharField(required=False, allow_blank=True, default="", max_length=120)
    subject_field = serializers.CharField(
        required=False, allow_blank=True, default="", max_length=120
    )


class DatasetPatch(StrictSerializer):
    """The descriptive fields (services.EDITABLE_FIELDS); any other field is refused.

    Their lengths are checked by the service, against the model's columns.
    """

    description = serializers.CharField(required=False, allow_blank=True)
    source = serializers.CharField(required=False, allow_blank=True)
    license = serializers.CharField(required=False, allow_blank=True)


class FileOut(serializers.ModelSerializer):
    class Meta:
        model = DatasetFile
        fields = ["id", "name", "role", "object_key", "size", "sha256", "record_count"]


class StorageOut(serializers.Serializer):
    """Where the version's objects are stored; blank for versions made before it was kept."""

    bucket = serializers.CharField(source="storage_bucket")
    region = serializers.CharField(source="storage_region")


class VersionOut(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    storage = StorageOut(source="*", read_only=True)
    files = FileOut(many=True, read_only=True)
    produced_by_job = serializers.IntegerField(source="produced_by_id", allow_null=True)
    parents = serializers.PrimaryKeyRelatedField(many=True, read_only=True)

    class Meta:
        model = DatasetVersion
        fields = [
            "id",
            "dataset_id",
            "number",
            "state",
            "byte_count",
            "record_count",
            "note",
            "produced_by_job",
            "parents",
            "files",
            "created_by",
            "created_at",
            "ready_at",
            "upload_expires_at",
            "storage",
        ]


class DeclaredFileIn(StrictSerializer):
    name = serializers.CharField(max_length=255, validators=[validate_name])
    size = JSONIntegerField(min_value=1, max_value=MAX_BIGINT)
    sha256 = serializers.RegexField(
        r"^[0-9a-fA-F]{64}$", error_messages={"invalid": "64 hex digits"}
    )


class VersionStartIn(StrictSerializer):
    files = DeclaredFileIn(many=True, allow_empty=False)
    part_size = JSONIntegerField(required=False, min_value=MIN_PART_SIZE, max_value=MAX_PART_SIZE)
    note = serializers.CharField(required=False, allow_blank=True, default="", max_length=300)


class PartIn(StrictSerializer):
    part_number = JSONIntegerField(min_value=1, max_value=10_000)
    etag = serializers.CharField(max_length=200)


class CompletedFileIn(StrictSerializer):
    file_id = JSONIntegerField(min_value=1, max_value=MAX_BIGINT)
    parts = PartIn(many=True, allow_empty=False)


class VersionCompleteIn(StrictSerializer):
    files = CompletedFileIn(many=True, allow_empty=False)


def dataset_or_404(
    request, project_id: int, dataset_id: int, action: Action = Action.VIEW
) -> Dataset:
    project = project_or_404(request, project_id, action)
    dataset = dataset_in(project, dataset_id)
    if dataset is None:
        raise NotFound(f"dataset {dataset_id} not found in this project")
    return dataset


def version_or_404(
    request, project_id, dataset_id, number, action: Action = Action.VIEW
) -> DatasetVersion:
    dataset = dataset_or_404(request, project_id, dataset_id, action)
    version = version_numbered(dataset, number)
    if version is None:
        raise NotFound(f"version {number} of dataset '{dataset.slug}' not found")
    return version


class DatasetListCreate(generics.GenericAPIView):
    serializer_class = DatasetOut

    @extend_schema(
        parameters=[OpenApiParameter("kind", enum=DatasetKind.values)],
        responses=DatasetOut(many=True),
    )
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        kind = choice_param(request, "kind", DatasetKind.values)
        page = self.paginate_queryset(datasets_for(project, kind=kind))
        return self.get_paginated_response(DatasetOut(page, many=True).data)

    @extend_schema(request=DatasetIn, responses={201: DatasetOut})
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.RUN)
        body = DatasetIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            dataset = dataset_create(project=project, actor=request.user, **body.validated_data)
        except DatasetError as error:
            raise_dataset_error(error)
        dataset = datasets_for(project).get(pk=dataset.pk)  # with its version_count
        return Response(DatasetOut(dataset).data, status=status.HTTP_201_CREATED)


class DatasetDetail(APIView):
    @extend_schema(responses=DatasetOut)
    def get(self, request, project_id: int, dataset_id: int):
        dataset = dataset_or_404(request, project_id, dataset_id)
        return Response(DatasetOut(datasets_for(dataset.project).get(pk=dataset.pk)).data)

    @extend_schema(request=DatasetPatch, responses=DatasetOut)
    def patch(self, request, project_id: int, dataset_id: int):
        """Correct the description, source or licence (engineers and owners)."""
        dataset = dataset_or_404(request, project_id, dataset_id, Action.RUN)
        body = DatasetPatch(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            dataset_update(dataset=dataset, actor=request.user, **body.validated_data)
        except DatasetError as error:
            raise_dataset_error(error)
        return Response(DatasetOut(datasets_for(dataset.project).get(pk=dataset.pk)).data)


class VersionListStart(generics.GenericAPIView):
    serializer_class = VersionOut

    @extend_schema(responses=VersionOut(many=True))
    def get(self, request, project_id: int, dataset_id: int):
        dataset = dataset_or_404(request, project_id, dataset_id)
        page = self.paginate_queryset(versions_of(dataset))
        return self.get_paginated_response(VersionOut(page, many=True).data)

    @idempotent
    @extend_schema(request=VersionStartIn, responses={201: dict})
    def post(self, request, project_id: int, dataset_id: int):
        """Start an upload: declare the files, get presigned part URLs back."""
        dataset = dataset_or_404(request, project_id, dataset_id, Action.RUN)
        body = VersionStartIn(data=request.data)
        body.is_valid(raise_exception=True)
        files = [
            DeclaredFile(f["name"], f["size"], f["sha256"].lower())
            for f in body.validated_data["files"]
        ]
        try:
            version, uploads = dataset_version_start(
                dataset=dataset,
                actor=request.user,
                files=files,
                part_size=body.validated_data.get("part_size"),
                note=body.validated_data["note"],
            )
        except DatasetError as error:
            raise_dataset_error(error)
        data = VersionOut(version).data
        data["uploads"] = [
            {
                "file_id": u.file.pk,
                "name": u.file.name,
                "size": u.file.size,
                "part_size": u.part_size,
                "parts": [{"part_number": i + 1, "url": url} for i, url in enumerate(u.urls)],
            }
            for u in uploads
        ]
        return Response(data, status=status.HTTP_201_CREATED)


class VersionDetail(APIView):
    @extend_schema(responses=VersionOut)
    def get(self, request, project_id: int, dataset_id: int, number: int):
        return Response(VersionOut(version_or_404(request, project_id, dataset_id, number)).data)

    @extend_schema(responses={204: None})
    def delete(self, request, project_id: int, dataset_id: int, number: int):
        """Abort an upload in progress: its parts and objects are removed."""
        version = version_or_404(request, project_id, dataset_id, number, Action.RUN)
        try:
            dataset_version_abort(version=version, actor=request.user)
        except DatasetError as error:
            raise_dataset_error(error)
        return Response(status=status.HTTP_204_NO_CONTENT)


class VersionComplete(APIView):
    @extend_schema(request=VersionCompleteIn, responses=VersionOut)
    def post(self, request, project_id: int, dataset_id: int, number: int):
        """Close the upload: the store assembles the parts, the server checks size and sha256."""
        version = version_or_404(request, project_id, dataset_id, number, Action.RUN)
        body = VersionCompleteIn(data=request.data)
        body.is_valid(raise_exception=True)
        parts = {
            f["file_id"]: [(p["part_number"], p["etag"]) for p in f["parts"]]
            for f in body.validated_data["files"]
        }
        unknown = set(parts) - version_file_ids(version)
        if unknown and not version_exists(version):
            # The reaper removed the expired upload between our lookup and this check.
            raise NotFound(f"version {number} was removed: its upload expired")
        if unknown:
            raise serializers.ValidationError(
                {"files": [f"file {i} is not part of this version" for i in sorted(unknown)]}
            )
        try:
            version = dataset_version_complete(version=version, actor=request.user, parts=parts)
        except DatasetError as error:
            raise_dataset_error(error)
        return Response(VersionOut(versions_of(version.dataset).get(pk=version.pk)).data)
