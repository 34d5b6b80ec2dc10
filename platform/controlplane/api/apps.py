from django.apps import AppConfig


class ApiConfig(AppConfig):
    """DRF plumbing shared by every app's API; its one model stores idempotent responses."""

    name = "controlplane.api"
    label = "api"
