from django.urls import path

from controlplane.jobs import new_views, views

urlpatterns = [
    path("projects/<int:project_id>/jobs/", views.job_list, name="job-list"),
    path("projects/<int:project_id>/jobs/new/", new_views.job_new, name="job-new"),
    path(
        "projects/<int:project_id>/jobs/new/<str:kind>/",
        new_views.job_new_kind,
        name="job-new-kind",
    ),
    path("projects/<int:project_id>/jobs/<int:job_id>/", views.job_detail, name="job-detail"),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/charts.json",
        views.job_charts_data,
        name="job-charts",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/artifacts/<int:artifact_id>/",
        views.job_artifact,
        name="job-artifact",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/resume/",
        views.job_resume_view,
        name="job-resume",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/posttrain/",
        views.job_posttrain,
        name="job-posttrain",
    ),
    path(
        "projects/<int:project_id>/jobs/<int:job_id>/cancel/",
        views.job_cancel_view,
        name="job-cancel",
    ),
    path(
        "projects/<int:project_id>/experiments/",
        views.experiment_compare,
        name="experiment-compare",
    ),
]
