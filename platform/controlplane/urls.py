from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from controlplane.accounts import views as account_pages
from controlplane.dashboard import experiment_views as experiment_pages
from controlplane.dashboard import posttrain_views as posttrain_pages
from controlplane.dashboard import storage_views
from controlplane.dashboard import views as pages

urlpatterns = [
    path("healthz", pages.healthz, name="healthz"),
    path("readyz", pages.readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/v1/", include("controlplane.api.urls")),
    path("login/", account_pages.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("storage/local/<str:token>", storage_views.local_presigned, name="storage-local"),
    path("", pages.overview, name="overview"),
    path("account/tokens/", account_pages.token_list, name="token-list"),
    path("account/tokens/<int:token_id>/revoke/", account_pages.token_revoke, name="token-revoke"),
    path("", include("controlplane.projects.urls")),
    path("", include("controlplane.uploads.urls")),
    path("", include("controlplane.datasets.urls")),
    path(
        "projects/<int:project_id>/experiments/",
        experiment_pages.experiment_compare,
        name="experiment-compare",
    ),
    path("projects/<int:project_id>/jobs/", pages.job_list, name="job-list"),
    path("projects/<int:project_id>/jobs/<int:job_id>/", pages.job_detail, name="job-detail"),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/artifacts/<int:artifact_id>/",
        pages.job_artifact,
        name="job-artifact",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/resume/",
        pages.job_resume_view,
        name="job-resume",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/posttrain/",
        posttrain_pages.job_posttrain,
        name="job-posttrain",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/cancel/",
        pages.job_cancel_view,
        name="job-cancel",
    ),
    path("projects/<int:project_id>/audit/", pages.audit_timeline, name="audit-timeline"),
]

# Under /api/ these answer in the API's JSON error shape; pages keep Django's HTML pages.
handler400 = "controlplane.api.handlers.bad_request"
handler403 = "controlplane.api.handlers.permission_denied"
handler404 = "controlplane.api.handlers.page_not_found"
handler500 = "controlplane.api.handlers.server_error"
