from django.apps import AppConfig


class FinopsConfig(AppConfig):
    name = "controlplane.finops"
    label = "finops"
    verbose_name = "Usage, cost, budgets and quotas"
