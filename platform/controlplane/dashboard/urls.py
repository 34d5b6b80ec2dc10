from django.urls import path

from controlplane.dashboard import site_views, storage_views, views

urlpatterns = [
    path("favicon.ico", site_views.favicon, name="favicon"),
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("storage/local/<str:token>", storage_views.local_presigned, name="storage-local"),
    path("overview/export/<slug:table>.csv", views.overview_export, name="overview-export"),
    path("", views.overview, name="overview"),
]
