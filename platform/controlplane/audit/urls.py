from django.urls import path

from controlplane.audit import views

urlpatterns = [
    path("projects/<int:project_id>/audit/", views.audit_timeline, name="audit-timeline"),
    path("projects/<int:project_id>/audit/badge/", views.audit_badge, name="audit-badge"),
    path("projects/<int:project_id>/audit/verify/", views.audit_verify_now, name="audit-verify"),
    path("projects/<int:project_id>/audit/export/", views.audit_export, name="audit-export"),
    path(
        "projects/<int:project_id>/audit/events.<str:export_format>",
        views.audit_events_export,
        name="audit-events-export",
    ),
]
