from django.contrib import admin

from controlplane.accounts.forms import ThrottledAdminAuthenticationForm
from controlplane.accounts.models import ApiToken, AuthFailureCounter

# The admin's login is a second door to every account: same lockout as the login page.
admin.site.login_form = ThrottledAdminAuthenticationForm


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = [
        "name",
        "user",
        "prefix",
        "scopes",
        "parent",
        "created_at",
        "last_used_at",
        "expires_at",
        "revoked_at",
    ]
    list_filter = ["revoked_at"]
    search_fields = ["name", "user__username", "prefix"]
    # Scopes, parent and revocation change only through the services (audited, cascading).
    readonly_fields = [
        "token_hash",
        "prefix",
        "scopes",
        "parent",
        "created_at",
        "last_used_at",
        "revoked_at",
    ]


@admin.register(AuthFailureCounter)
class AuthFailureCounterAdmin(admin.ModelAdmin):
    """Lets an admin lift a lockout early (delete the row)."""

    list_display = ["kind", "key_hash", "failures", "lockouts", "locked_until", "updated_at"]
    list_filter = ["kind"]
    readonly_fields = [
        "kind",
        "key_hash",
        "failures",
        "window_started_at",
        "lockouts",
        "locked_until",
        "updated_at",
    ]

    def has_add_permission(self, request) -> bool:
        return False
