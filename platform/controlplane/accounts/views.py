"""Pages of the accounts app: the login (with lockout) and the API tokens page."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from controlplane.accounts.forms import ThrottledAuthenticationForm, TokenForm
from controlplane.accounts.selectors import token_of, tokens_of
from controlplane.accounts.services import TokenError, api_token_create, api_token_revoke


class LoginView(auth_views.LoginView):
    """Django's login, with the lockout of accounts/lockout.py; a locked-out attempt is a 429."""

    template_name = "accounts/login.html"
    authentication_form = ThrottledAuthenticationForm

    def form_invalid(self, form) -> HttpResponse:
        response = super().form_invalid(form)
        lockout = getattr(form, "lockout", None)
        if lockout is not None:
            response.status_code = 429
            response["Retry-After"] = str(lockout.retry_after_seconds)
        return response


@login_required
def token_list(request: HttpRequest) -> HttpResponse:
    """The user's tokens; creating one here is the session path (no tokens:write needed)."""
    form = TokenForm(request.POST or None)
    created = None
    if request.method == "POST" and form.is_valid():
        days = form.cleaned_data["expires_in_days"]
        try:
            _token, created = api_token_create(
                user=request.user,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"] or None,
                expires_at=timezone.now() + timedelta(days=days) if days else None,
            )
        except TokenError as error:
            form.add_error(None, str(error))
        else:
            form = TokenForm()
    tokens = tokens_of(request.user)
    status = 400 if form.is_bound and form.errors else 200
    return render(
        request,
        "accounts/tokens.html",
        {"tokens": tokens, "form": form, "created": created},
        status=status,
    )


@login_required
@require_POST
def token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    token = token_of(request.user, token_id)
    if token is None:
        raise Http404(f"token {token_id} not found")
    try:
        revoked = api_token_revoke(token=token, actor=request.user)
    except TokenError as error:
        messages.error(request, str(error))
    else:
        if len(revoked) > 1:
            messages.success(
                request, f"Revoked {token.name} and {len(revoked) - 1} token(s) it minted."
            )
    return redirect("token-list")
