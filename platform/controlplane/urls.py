"""The site's URLs: the shell (dashboard), each app's pages from its own urls.py, the API
and the admin. Paths and names are what templates and tests `{% url %}`/`reverse` by."""

from django.contrib import admin
from django.urls import include, path

from controlplane.serving import views_archive as serving_archive_pages

urlpatterns = [
    path("", include("controlplane.dashboard.urls")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("controlplane.api.urls")),
    path("", include("controlplane.accounts.urls")),
    path("", include("controlplane.projects.urls")),
    path("", include("controlplane.uploads.urls")),
    path("", include("controlplane.datasets.urls")),
    path("", include("controlplane.jobs.urls")),
    path("", include("controlplane.audit.urls")),
    path("", include("controlplane.registry.urls")),
    path("internal/serve/", include("controlplane.serving.internal_urls")),
    path("", include(serving_archive_pages.page_urlpatterns)),
    path("", include("controlplane.serving.urls")),
    path("", include("controlplane.policies.urls")),
    path("", include("controlplane.gdpr.urls")),
    path("", include("controlplane.finops.urls")),
    path("", include("controlplane.metrics.urls")),
    path("", include("controlplane.orgs.urls")),
]

# Under /api/ these answer in the API's JSON error shape; pages render templates/40x.html, 500.html.
handler400 = "controlplane.api.handlers.bad_request"
handler403 = "controlplane.api.handlers.permission_denied"
handler404 = "controlplane.api.handlers.page_not_found"
handler500 = "controlplane.api.handlers.server_error"
