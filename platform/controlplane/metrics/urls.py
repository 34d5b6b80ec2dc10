from django.urls import path

from controlplane.metrics import views

# No app namespace: the security-headers test reverses every root page by its bare name,
# as it does /healthz's.
urlpatterns = [
    path("metrics", views.metrics, name="metrics"),
]
