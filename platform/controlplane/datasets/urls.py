from django.urls import path

from controlplane.datasets import views

urlpatterns = [
    path("projects/<int:project_id>/datasets/", views.dataset_list, name="dataset-list"),
    path(
        "projects/<int:project_id>/datasets/<int:dataset_id>/",
        views.dataset_detail,
        name="dataset-detail",
    ),
    path(
        "projects/<int:project_id>/datasets/<int:dataset_id>/v<int:number>/",
        views.dataset_version,
        name="dataset-version",
    ),
]
