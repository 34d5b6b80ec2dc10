"""The request pages, under a project."""

from django.urls import path

from controlplane.gdpr import views

REQUESTS = "projects/<int:project_id>/subject-requests/"
ONE = REQUESTS + "<int:subject_request_id>/"

urlpatterns = [
    path(REQUESTS, views.request_list, name="gdpr-requests"),
    path(REQUESTS + "new/", views.request_file, name="gdpr-request-file"),
    path(REQUESTS + "review/", views.review_queue, name="gdpr-review-queue"),
    path(ONE, views.request_detail, name="gdpr-request"),
    path(ONE + "review/", views.request_review, name="gdpr-request-review"),
    path(ONE + "extend/", views.request_extend, name="gdpr-request-extend"),
    path(ONE + "export/", views.request_export, name="gdpr-request-export"),
    path(ONE + "certificate/", views.request_certificate, name="gdpr-request-certificate"),
    path(
        ONE + "certificate.json",
        views.request_certificate_json,
        name="gdpr-request-certificate-json",
    ),
]
