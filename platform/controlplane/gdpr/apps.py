from django.apps import AppConfig


class GdprConfig(AppConfig):
    name = "controlplane.gdpr"
    label = "gdpr"
    verbose_name = "GDPR data-subject requests"

    def ready(self) -> None:
        # An approved erasure request starts its job (gdpr/erasure.py); not twice when
        # ready() runs again (tests, a reloaded app registry).
        from controlplane.gdpr import services
        from controlplane.gdpr.access import access_start
        from controlplane.gdpr.erasure import erasure_start
        from controlplane.gdpr.organisation import fan_out

        # Each looks at its own kind only; fan_out at organisation requests only, which
        # the other two pass over.
        for hook in (fan_out, erasure_start, access_start):
            if hook not in services.on_approved:
                services.on_approved.append(hook)
