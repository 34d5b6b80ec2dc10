from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import project_or_404
from controlplane.api.params import text_param
from controlplane.audit.export import export_response
from controlplane.audit.models import AuditEvent
from controlplane.audit.selectors import audit_events_for
from controlplane.audit.services import audit_verify
from controlplane.projects.permissions import Action


class AuditEventOut(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = [
            "seq",
            "actor_id",
            "action",
            "artifact_type",
            "artifact_id",
            "payload",
            "created_at",
            "prev_hash",
            "hash",
        ]


class VerificationOut(serializers.Serializer):
    ok = serializers.BooleanField()
    events_checked = serializers.IntegerField()
    first_bad_seq = serializers.IntegerField(allow_null=True)
    message = serializers.CharField()


class AuditEventList(generics.GenericAPIView):
    serializer_class = AuditEventOut

    @extend_schema(
        parameters=[
            OpenApiParameter("artifact_type", str),
            OpenApiParameter("artifact_id", str),
            OpenApiParameter("action", str),
        ],
        responses=AuditEventOut(many=True),
    )
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        events = audit_events_for(
            project,
            artifact_type=text_param(request, "artifact_type"),
            artifact_id=text_param(request, "artifact_id"),
            action=text_param(request, "action"),
        )
        page = self.paginate_queryset(events)
        return self.get_paginated_response(AuditEventOut(page, many=True).data)


class AuditVerify(APIView):
    @extend_schema(responses=VerificationOut)
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        results = audit_verify(project)
        if not results:
            return Response(
                {"ok": True, "events_checked": 0, "first_bad_seq": None, "message": "no events yet"}
            )
        result = results[0]
        return Response(
            {
                "ok": result.ok,
                "events_checked": result.events_checked,
                "first_bad_seq": result.first_bad_seq,
                "message": result.describe(),
            }
        )


class AuditExport(APIView):
    @extend_schema(responses={(200, "application/x-ndjson"): str})
    def get(self, request, project_id: int):
        """The project's whole chain as JSONL, for `python -m controlplane.audit.verify`
        (streamed; audited as audit.exported). Owners and compliance officers."""
        project = project_or_404(request, project_id, Action.REVIEW)
        return export_response(project, request.user)
