"""The serve nodes' endpoints (protocol.SYNC_PATH, protocol.AUTHORIZE_PATH), mounted at
/internal/serve/ by controlplane/urls.py."""

from django.urls import path

from controlplane.serving import internal

urlpatterns = [
    path("sync", internal.sync, name="serve-sync"),
    path("authorize", internal.authorize, name="serve-authorize"),
]
