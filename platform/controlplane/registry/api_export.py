"""API of a version's model card (Markdown) and its export archive (a tar stream).

    GET /api/v1/projects/<id>/models/<name>/versions/<n>/card/     text/markdown
    GET /api/v1/projects/<id>/models/<name>/versions/<n>/archive/  application/x-tar

Any member of the project may read both (VIEW). The archive is refused with 409 in the
API's error shape when the version is not ready or a stored file no longer matches its
sha256 (registry/archive.py; that refusal is audited).
"""

from __future__ import annotations

from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import project_or_404
from controlplane.api.errors import error_body
from controlplane.registry.archive import (
    ArchiveRefused,
    archive_folder,
    prepare_archive,
    tar_response,
)
from controlplane.registry.card import model_card_markdown
from controlplane.registry.models import ModelVersion
from controlplane.registry.selectors import model_in, version_in
from controlplane.storage import object_store


def _version(request, project_id: int, name: str, number: int) -> ModelVersion:
    project = project_or_404(request, project_id)
    model = model_in(project, name)
    if model is None:
        raise NotFound(f"model {name!r} not found in this project")
    version = version_in(model, number)
    if version is None:
        raise NotFound(f"version {number} of {model.name} not found")
    return version


class VersionCard(APIView):
    @extend_schema(
        summary="The version's model card as Markdown",
        responses={(200, "text/markdown"): OpenApiTypes.STR},
    )
    def get(self, request, project_id: int, name: str, number: int):
        version = _version(request, project_id, name, number)
        response = HttpResponse(
            model_card_markdown(version), content_type="text/markdown; charset=utf-8"
        )
        response["Content-Disposition"] = f'inline; filename="{archive_folder(version)}-card.md"'
        return response


class VersionArchive(APIView):
    @extend_schema(
        summary="Download the version: weights, config, tokenizer, MODEL_CARD.md, SHA256SUMS",
        responses={
            (200, "application/x-tar"): OpenApiTypes.BINARY,
            409: OpenApiResponse(description="not ready, or a file no longer matches its sha256"),
        },
    )
    def get(self, request, project_id: int, name: str, number: int):
        version = _version(request, project_id, name, number)
        store = object_store()
        try:
            members = prepare_archive(version, store, actor=request.user)
        except ArchiveRefused as error:
            # A Response, not an exception: the audit event of the refusal is committed
            # already, and the error shape is the API's.
            return Response(error_body(error.status, "conflict", str(error)), status=error.status)
        return tar_response(version, members, store)
