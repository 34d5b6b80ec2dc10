from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException, NotFound, ParseError
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import project_or_404
from controlplane.projects.permissions import Action
from controlplane.uploads.models import Upload
from controlplane.uploads.selectors import upload_in, uploads_for
from controlplane.uploads.services import UploadError, upload_create_from_request


class PayloadTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


class StoreUnavailable(APIException):
    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "store_unavailable"


class UploadOut(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by.username")

    class Meta:
        model = Upload
        fields = [
            "id",
            "filename",
            "size",
            "sha256",
            "content_type",
            "object_key",
            "uploaded_by",
            "created_at",
        ]


class UploadIn(serializers.Serializer):
    file = serializers.FileField()


def reject_oversized_body(request) -> None:
    """Refuse before reading: a 50 GB body must not first land in a temp file."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise ParseError("Content-Length is not a number") from None
    # Multipart framing adds a little on top of the file itself.
    if length > settings.UPLOAD_MAX_BYTES + 64 * 1024:
        raise PayloadTooLarge(
            f"request body is {length} bytes; uploads are limited to {settings.UPLOAD_MAX_BYTES}"
        )


def store_uploaded_file(request, project) -> Upload:
    try:
        return upload_create_from_request(project=project, actor=request.user, files=request.FILES)
    except UploadError as error:
        if error.status == 413:
            raise PayloadTooLarge(str(error)) from None
        if error.status >= 500:
            raise StoreUnavailable(str(error)) from None
        raise serializers.ValidationError({"file": [str(error)]}) from None


class UploadListCreate(generics.GenericAPIView):
    serializer_class = UploadOut
    parser_classes = [MultiPartParser]

    @extend_schema(responses=UploadOut(many=True))
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        page = self.paginate_queryset(uploads_for(project))
        return self.get_paginated_response(UploadOut(page, many=True).data)

    @extend_schema(request={"multipart/form-data": UploadIn}, responses={201: UploadOut})
    def post(self, request, project_id: int):
        reject_oversized_body(request)
        project = project_or_404(request, project_id, Action.RUN)
        upload = store_uploaded_file(request, project)
        return Response(UploadOut(upload).data, status=status.HTTP_201_CREATED)


class UploadDetail(APIView):
    @extend_schema(responses=UploadOut)
    def get(self, request, project_id: int, upload_id: int):
        project = project_or_404(request, project_id)
        upload = upload_in(project, upload_id)
        if upload is None:
            raise NotFound(f"upload {upload_id} not found in this project")
        return Response(UploadOut(upload).data)
