from django.urls import path

from controlplane.audit import views

urlpatterns = [
    path("projects/<int:project_id>/audit/", views.audit_timeline, name="audit-timeline"),
    path("projects/<int:project_id>/audit/export/", views.audit_export, name="audit-export"),
]
