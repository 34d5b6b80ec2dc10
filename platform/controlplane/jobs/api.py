from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema, extend_schema_field
from rest_framework import generics, serializers, status
from rest_framework.exceptions import APIException, NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.api.access import StrictSerializer, project_or_404
from controlplane.api.idempotency import idempotent
from controlplane.api.params import choice_param, text_param
from controlplane.finops.selectors import job_usage_as_dict
from controlplane.jobs.models import Job, JobEventRecord, JobMetric, JobState
from controlplane.jobs.requests import JobRequestError
from controlplane.jobs.selectors import job_artifact_of, job_events, job_in, job_metrics, jobs_for
from controlplane.jobs.services import JobError, job_cancel, job_create, job_resume
from controlplane.names import validate_name
from controlplane.projects.permissions import Action
from workers.protocol import JobKind


class JobOut(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username")
    tracking_url = serializers.CharField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "project_id",
            "kind",
            "queue",
            "state",
            "held_for",
            "held_reason",
            "params",
            "inputs",
            "created_by",
            "created_at",
            "started_at",
            "finished_at",
            "attempt",
            "worker",
            "progress",
            "progress_message",
            "cancel_requested_at",
            "result",
            "error",
            "experiment",
            "tracking_run_id",
            "tracking_url",
        ]


class JobDetailOut(JobOut):
    """A job with what it used: the sum over its attempts and each attempt's figures."""

    usage = serializers.SerializerMethodField()

    class Meta(JobOut.Meta):
        fields = [*JobOut.Meta.fields, "usage"]

    # null until a worker reported what the job used (a queued job, an old worker)
    @extend_schema_field({"type": "object", "additionalProperties": {}, "nullable": True})
    def get_usage(self, job: Job) -> dict | None:
        return job_usage_as_dict(job)


class JobIn(StrictSerializer):
    # An enum in the schema, so clients (and the fuzzer) see the kinds; kinds.py still
    # checks it for callers that bypass the API.
    kind = serializers.ChoiceField(
        choices=[kind.value for kind in JobKind],
        error_messages={
            "invalid_choice": "unknown job kind '{input}'; use one of "
            + ", ".join(kind.value for kind in JobKind)
        },
    )
    params = serializers.JSONField(default=dict)
    experiment = serializers.RegexField(
        r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        max_length=100,
        required=False,
        default="",
        validators=[validate_name],
        error_messages={"invalid": "letters, digits, '.', '_' and '-' only"},
    )


class EventOut(serializers.ModelSerializer):
    class Meta:
        model = JobEventRecord
        fields = ["attempt", "seq", "type", "payload", "emitted_at", "applied_at"]


class MetricOut(serializers.ModelSerializer):
    class Meta:
        model = JobMetric
        fields = ["key", "step", "value", "recorded_at"]


def job_or_404(request, project_id: int, job_id: int, action: Action = Action.VIEW) -> Job:
    project = project_or_404(request, project_id, action)
    job = job_in(project, job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found in this project")
    return job


def raise_job_error(error: JobError):
    if getattr(error, "code", None):
        raise error  # a refusal with a code (a spent budget): answered with it, errors.py
    exc = APIException(str(error))
    exc.status_code = error.status
    raise exc from None


class JobListCreate(generics.GenericAPIView):
    serializer_class = JobOut

    @extend_schema(
        parameters=[
            OpenApiParameter("state", enum=JobState.values),
            OpenApiParameter("kind", enum=[kind.value for kind in JobKind]),
        ],
        responses=JobOut(many=True),
    )
    def get(self, request, project_id: int):
        project = project_or_404(request, project_id)
        state = choice_param(request, "state", JobState.values)
        kind = choice_param(request, "kind", [k.value for k in JobKind])
        page = self.paginate_queryset(jobs_for(project, state=state, kind=kind))
        return self.get_paginated_response(JobOut(page, many=True).data)

    @idempotent
    @extend_schema(request=JobIn, responses={201: JobOut})
    def post(self, request, project_id: int):
        project = project_or_404(request, project_id, Action.RUN)
        body = JobIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            job = job_create(project=project, actor=request.user, **body.validated_data)
        except JobRequestError as error:
            fields = {
                ("params." + k if k not in ("kind", "params") else k): v
                for k, v in error.errors.items()
            }
            raise serializers.ValidationError(fields) from None
        return Response(JobOut(job).data, status=status.HTTP_201_CREATED)


class JobDetail(APIView):
    @extend_schema(responses=JobDetailOut)
    def get(self, request, project_id: int, job_id: int):
        return Response(JobDetailOut(job_or_404(request, project_id, job_id)).data)


class JobCancel(APIView):
    @extend_schema(request=None, responses=JobOut)
    def post(self, request, project_id: int, job_id: int):
        job = job_or_404(request, project_id, job_id, Action.RUN)
        try:
            job = job_cancel(job=job, actor=request.user)
        except JobError as error:
            raise_job_error(error)
        return Response(JobOut(job).data)


class ResumeIn(StrictSerializer):
    checkpoint_id = serializers.IntegerField()


class JobResume(APIView):
    @extend_schema(request=ResumeIn, responses=JobOut)
    def post(self, request, project_id: int, job_id: int):
        """Run a failed training job again from one of its checkpoints."""
        job = job_or_404(request, project_id, job_id, Action.RUN)
        body = ResumeIn(data=request.data)
        body.is_valid(raise_exception=True)
        # Any artifact of the job: job_resume refuses one that is not a checkpoint.
        checkpoint = job_artifact_of(job, body.validated_data["checkpoint_id"])
        if checkpoint is None:
            raise serializers.ValidationError(
                {"checkpoint_id": [f"not a checkpoint of job {job.pk}"]}
            )
        try:
            job = job_resume(job=job, checkpoint=checkpoint, actor=request.user)
        except JobError as error:
            raise_job_error(error)
        return Response(JobOut(job).data)


class JobEvents(generics.GenericAPIView):
    serializer_class = EventOut

    @extend_schema(responses=EventOut(many=True))
    def get(self, request, project_id: int, job_id: int):
        job = job_or_404(request, project_id, job_id)
        page = self.paginate_queryset(job_events(job))
        return self.get_paginated_response(EventOut(page, many=True).data)


class JobMetrics(generics.GenericAPIView):
    serializer_class = MetricOut

    @extend_schema(parameters=[OpenApiParameter("key", str)], responses=MetricOut(many=True))
    def get(self, request, project_id: int, job_id: int):
        job = job_or_404(request, project_id, job_id)
        page = self.paginate_queryset(job_metrics(job, key=text_param(request, "key")))
        return self.get_paginated_response(MetricOut(page, many=True).data)
