from django.apps import AppConfig


class DemoConfig(AppConfig):
    """`python manage.py demo`: a walk of every capability (no models, no pages)."""

    name = "controlplane.demo"
    label = "demo"
