from django.urls import path

from controlplane.serving import views

DEPLOYMENT = "projects/<int:project_id>/deployments/<str:name>/"

# The archive's pages (DEPLOYMENT + "requests/...") are in the archive's own urlpatterns.
urlpatterns = [
    path(
        "projects/<int:project_id>/deployments/", views.deployment_list, name="serving-deployments"
    ),
    path(DEPLOYMENT, views.deployment_detail, name="serving-deployment"),
    path(DEPLOYMENT + "stop/", views.deployment_stop, name="serving-deployment-stop"),
    path(DEPLOYMENT + "start/", views.deployment_start, name="serving-deployment-start"),
    path(DEPLOYMENT + "scale/", views.deployment_scale, name="serving-deployment-scale"),
    path(DEPLOYMENT + "playground/", views.deployment_playground, name="serving-playground"),
]
