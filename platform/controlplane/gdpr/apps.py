from django.apps import AppConfig


class GdprConfig(AppConfig):
    name = "controlplane.gdpr"
    label = "gdpr"
    verbose_name = "GDPR data-subject requests"
