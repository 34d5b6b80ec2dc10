from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import exceptions, generics, serializers, status
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.accounts.models import ApiToken, Scope
from controlplane.accounts.permissions import bearer_token
from controlplane.accounts.selectors import token_of, tokens_of
from controlplane.accounts.services import (
    TokenConflict,
    TokenError,
    TokenForbidden,
    api_token_create,
    api_token_revoke,
)
from controlplane.api.access import StrictSerializer
from controlplane.api.errors import Conflict
from controlplane.api.idempotency import idempotent
from controlplane.names import validate_name


class TokenOut(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True)
    scopes = serializers.ListField(child=serializers.ChoiceField(choices=Scope.choices))
    parent = serializers.PrimaryKeyRelatedField(
        read_only=True, allow_null=True, help_text="The token that minted this one, if any."
    )

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
            "scopes",
            "parent",
            "created_at",
            "expires_at",
            "last_used_at",
            "revoked_at",
            "is_active",
        ]


class TokenCreatedOut(TokenOut):
    token = serializers.CharField(help_text="The secret, shown this once only.")

    class Meta(TokenOut.Meta):
        fields = [*TokenOut.Meta.fields, "token"]


class ScopeList(serializers.ListField):
    """Scope names; the schema lists the choices, an error names the bad one plainly
    (ListField's own error is keyed by index, which reads badly in the error shape)."""

    child = serializers.ChoiceField(choices=Scope.choices)

    def run_child_validation(self, data):
        unknown = [item for item in data if item not in Scope.values]
        if unknown:
            raise serializers.ValidationError(
                f"unknown scope {unknown[0]!r}; choose from {', '.join(Scope.values)}"
            )
        return super().run_child_validation(data)


class TokenIn(StrictSerializer):
    name = serializers.CharField(max_length=100, validators=[validate_name])
    expires_at = serializers.DateTimeField(
        required=False,
        allow_null=True,
        default=None,
        help_text="At most API_TOKEN_MAX_DAYS ahead (and not after the minting token's "
        "expiry); empty: the longest allowed.",
    )
    scopes = ScopeList(
        required=False,
        allow_empty=False,
        help_text="Default: api:read and api:write. tokens:write lets the token create "
        "tokens and revoke the ones it minted.",
    )


def _api_error(error: TokenError) -> exceptions.APIException:
    if isinstance(error, TokenForbidden):
        return exceptions.PermissionDenied(str(error))
    if isinstance(error, TokenConflict):
        return Conflict(str(error))
    return exceptions.ValidationError({error.field or "non_field_errors": [str(error)]})


class TokenListCreate(generics.GenericAPIView):
    """List your tokens; create one from a logged-in session or with a tokens:write token."""

    serializer_class = TokenOut

    def required_token_scope(self, request) -> str:
        return Scope.TOKENS_WRITE if request.method == "POST" else Scope.API_READ

    @extend_schema(responses=TokenOut(many=True))
    def get(self, request):
        page = self.paginate_queryset(tokens_of(request.user))
        return self.get_paginated_response(TokenOut(page, many=True).data)

    @idempotent
    @extend_schema(request=TokenIn, responses={201: TokenCreatedOut})
    def post(self, request):
        body = TokenIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            token, raw = api_token_create(
                user=request.user, minted_by=bearer_token(request), **body.validated_data
            )
        except TokenError as error:
            raise _api_error(error) from None
        data = TokenOut(token).data | {"token": raw}
        return Response(data, status=status.HTTP_201_CREATED)


class TokenRevoke(APIView):
    """Revoke a token and every token it minted. A token may revoke itself; with
    tokens:write also the tokens below it; never the ones above it."""

    def required_token_scope(self, request) -> str | None:
        # DELETE: the service decides (a token may always revoke itself).
        return None if request.method == "DELETE" else Scope.API_READ

    @extend_schema(responses={204: None})
    def delete(self, request, token_id: int):
        token = token_of(request.user, token_id)
        if token is None:
            raise exceptions.NotFound(f"token {token_id} not found")
        try:
            api_token_revoke(token=token, actor=request.user, revoked_by=bearer_token(request))
        except TokenError as error:
            raise _api_error(error) from None
        return Response(status=status.HTTP_204_NO_CONTENT)
