from django.urls import path

from controlplane.uploads import views

urlpatterns = [
    path("projects/<int:project_id>/uploads/", views.upload_file, name="upload-file"),
    path(
        "projects/<int:project_id>/uploads/<int:upload_id>/inspect/",
        views.inspect_job_start,
        name="inspect-start",
    ),
]
