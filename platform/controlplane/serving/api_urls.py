"""Serving's API URLs, included under /api/v1/ by controlplane/api/urls.py."""

from django.urls import path

from controlplane.serving import api

urlpatterns = [
    path(
        "projects/<int:project_id>/deployments/",
        api.DeploymentListCreate.as_view(),
        name="api-deployments",
    ),
    path(
        "projects/<int:project_id>/deployments/<str:name>/",
        api.DeploymentDetail.as_view(),
        name="api-deployment",
    ),
    path(
        "projects/<int:project_id>/deployments/<str:name>/stop/",
        api.DeploymentStop.as_view(),
        name="api-deployment-stop",
    ),
    path(
        "projects/<int:project_id>/deployments/<str:name>/start/",
        api.DeploymentStart.as_view(),
        name="api-deployment-start",
    ),
    path(
        "projects/<int:project_id>/deployments/<str:name>/scale/",
        api.DeploymentScale.as_view(),
        name="api-deployment-scale",
    ),
]
