from django.contrib import admin, messages

from controlplane.accounts.forms import ThrottledAdminAuthenticationForm
from controlplane.accounts.models import ApiToken, AuthFailureCounter
from controlplane.accounts.services import TokenError, api_token_revoke
from controlplane.audit.services import audit_append

# The admin's login is a second door to every account: same lockout as the login page.
admin.site.login_form = ThrottledAdminAuthenticationForm


@admin.action(description="Revoke selected tokens (and every token they minted)")
def revoke_tokens(modeladmin, request, queryset):
    revoked = 0
    for token in queryset.order_by("pk"):
        if token.revoked_at is not None:
            continue  # already revoked, perhaps by an ancestor earlier in this loop
        try:
            revoked += len(api_token_revoke(token=token, actor=request.user))
        except TokenError as error:
            messages.error(request, f"{token}: {error}")
    messages.success(request, f"Revoked {revoked} token(s).")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Read-only: tokens are made by their users (shown once), changed only by revocation
    through the service, which cascades and audits. An edit here would bypass the lifetime
    limit; a delete would drop a token's subtree without a trace."""

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
    actions = [revoke_tokens]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(AuthFailureCounter)
class AuthFailureCounterAdmin(admin.ModelAdmin):
    """Lets staff lift a lockout early: delete the counter (audited)."""

    list_display = ["kind", "key_hash", "failures", "lockouts", "locked_until", "updated_at"]
    list_filter = ["kind"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def delete_model(self, request, obj) -> None:
        self.delete_queryset(request, AuthFailureCounter.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset) -> None:
        for counter in queryset:
            audit_append(
                project=None,
                actor=request.user,
                action="auth.lockout_lifted",
                artifact=(counter.kind, counter.key_hash),
                payload={"locked_until": counter.locked_until},
            )
        queryset.delete()
