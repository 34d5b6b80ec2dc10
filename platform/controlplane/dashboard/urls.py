from django.urls import path

from controlplane.dashboard import storage_views, views

urlpatterns = [
    path("healthz", views.healthz, name="healthz"),
    path("readyz", views.readyz, name="readyz"),
    path("storage/local/<str:token>", storage_views.local_presigned, name="storage-local"),
    path("", views.overview, name="overview"),
]
