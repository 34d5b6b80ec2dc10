from django.urls import path

from controlplane.projects import views

urlpatterns = [
    path("projects/", views.project_list, name="project-list"),
    path("projects/<int:project_id>/", views.project_detail, name="project-detail"),
    path("projects/<int:project_id>/members/", views.member_list, name="member-list"),
    path(
        "projects/<int:project_id>/members/<int:user_id>/",
        views.member_change,
        name="member-change",
    ),
]
