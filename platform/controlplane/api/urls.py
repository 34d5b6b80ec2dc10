from django.urls import include, path

from controlplane.accounts import api as accounts
from controlplane.api.docs import ApiDocsView, ApiSchemaView
from controlplane.api.root import ApiRoot
from controlplane.audit import api as audit
from controlplane.datasets import api as datasets
from controlplane.gdpr import api as gdpr
from controlplane.jobs import api as jobs
from controlplane.orgs import api as orgs
from controlplane.projects import api as projects
from controlplane.registry import api as registry
from controlplane.registry import api_export as registry_export
from controlplane.serving import api_archive as serving_archive
from controlplane.uploads import api as uploads

urlpatterns = [
    path("", ApiRoot.as_view(), name="api-root"),
    path("", include("controlplane.policies.api_urls")),
    path("", include("controlplane.finops.api")),
    path("", include("controlplane.finops.overview_api")),
    path("schema/", ApiSchemaView.as_view(), name="api-schema"),
    path("docs/", ApiDocsView.as_view(url_name="api-schema"), name="api-docs"),
    path("tokens/", accounts.TokenListCreate.as_view(), name="api-tokens"),
    path("tokens/<int:token_id>/", accounts.TokenRevoke.as_view(), name="api-token"),
    path("projects/", projects.ProjectListCreate.as_view(), name="api-projects"),
    path("projects/<int:project_id>/", projects.ProjectDetail.as_view(), name="api-project"),
    path(
        "projects/<int:project_id>/subject-key/",
        projects.SubjectKeyDetail.as_view(),
        name="api-subject-key",
    ),
    path(
        "projects/<int:project_id>/subject-key/rotate/",
        projects.SubjectKeyRotate.as_view(),
        name="api-subject-key-rotate",
    ),
    path(
        "projects/<int:project_id>/members/",
        projects.MemberListCreate.as_view(),
        name="api-members",
    ),
    path(
        "projects/<int:project_id>/members/<int:user_id>/",
        projects.MemberDetail.as_view(),
        name="api-member",
    ),
    path(
        "projects/<int:project_id>/uploads/", uploads.UploadListCreate.as_view(), name="api-uploads"
    ),
    path(
        "projects/<int:project_id>/uploads/<int:upload_id>/",
        uploads.UploadDetail.as_view(),
        name="api-upload",
    ),
    path("projects/<int:project_id>/jobs/", jobs.JobListCreate.as_view(), name="api-jobs"),
    path("projects/<int:project_id>/jobs/<int:job_id>/", jobs.JobDetail.as_view(), name="api-job"),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/cancel/",
        jobs.JobCancel.as_view(),
        name="api-job-cancel",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/resume/",
        jobs.JobResume.as_view(),
        name="api-job-resume",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/events/",
        jobs.JobEvents.as_view(),
        name="api-job-events",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/metrics/",
        jobs.JobMetrics.as_view(),
        name="api-job-metrics",
    ),
    path(
        "projects/<int:project_id>/datasets/",
        datasets.DatasetListCreate.as_view(),
        name="api-datasets",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:dataset_id>/",
        datasets.DatasetDetail.as_view(),
        name="api-dataset",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:dataset_id>/versions/",
        datasets.VersionListStart.as_view(),
        name="api-dataset-versions",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:dataset_id>/versions/<int:number>/",
        datasets.VersionDetail.as_view(),
        name="api-dataset-version",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:dataset_id>/versions/<int:number>/complete/",
        datasets.VersionComplete.as_view(),
        name="api-dataset-version-complete",
    ),
    path(
        "projects/<int:project_id>/models/",
        registry.ModelListCreate.as_view(),
        name="api-models",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/",
        registry.ModelDetail.as_view(),
        name="api-model",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/versions/",
        registry.VersionListRegister.as_view(),
        name="api-model-versions",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/versions/<int:number>/",
        registry.VersionDetail.as_view(),
        name="api-model-version",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/aliases/<str:alias>/",
        registry.AliasDetail.as_view(),
        name="api-model-alias",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/aliases/<str:alias>/rollback/",
        registry.AliasRollback.as_view(),
        name="api-model-alias-rollback",
    ),
    path(
        "projects/<int:project_id>/promotion-requests/",
        registry.PromotionList.as_view(),
        name="api-promotion-requests",
    ),
    path(
        "projects/<int:project_id>/promotion-requests/<int:request_id>/approve/",
        registry.PromotionApprove.as_view(),
        name="api-promotion-approve",
    ),
    path(
        "projects/<int:project_id>/promotion-requests/<int:request_id>/reject/",
        registry.PromotionReject.as_view(),
        name="api-promotion-reject",
    ),
    path(
        "projects/<int:project_id>/promotion-requests/<int:request_id>/withdraw/",
        registry.PromotionWithdraw.as_view(),
        name="api-promotion-withdraw",
    ),
    path(
        "projects/<int:project_id>/registry-settings/",
        registry.RegistrySettingsView.as_view(),
        name="api-registry-settings",
    ),
    path("projects/<int:project_id>/audit/", audit.AuditEventList.as_view(), name="api-audit"),
    path(
        "projects/<int:project_id>/audit/verify/",
        audit.AuditVerify.as_view(),
        name="api-audit-verify",
    ),
    path(
        "projects/<int:project_id>/audit/export/",
        audit.AuditExport.as_view(),
        name="api-audit-export",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/versions/<int:number>/card/",
        registry_export.VersionCard.as_view(),
        name="api-model-version-card",
    ),
    path(
        "projects/<int:project_id>/models/<str:name>/versions/<int:number>/archive/",
        registry_export.VersionArchive.as_view(),
        name="api-model-version-archive",
    ),
    path("", include("controlplane.serving.api_urls")),
    *serving_archive.urlpatterns,
    *gdpr.urlpatterns,
    *orgs.urlpatterns,
]
