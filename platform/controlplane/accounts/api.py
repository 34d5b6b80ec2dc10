from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.exceptions import NotFound
from rest_framework.response import Response
from rest_framework.views import APIView

from controlplane.accounts.models import ApiToken
from controlplane.accounts.services import TokenError, api_token_create, api_token_revoke
from controlplane.api.access import StrictSerializer
from controlplane.api.errors import Conflict
from controlplane.api.idempotency import idempotent


class TokenOut(serializers.ModelSerializer):
    is_active = serializers.BooleanField(read_only=True)

    class Meta:
        model = ApiToken
        fields = [
            "id",
            "name",
            "prefix",
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


class TokenIn(StrictSerializer):
    name = serializers.CharField(max_length=100)
    expires_at = serializers.DateTimeField(required=False, allow_null=True, default=None)


class TokenListCreate(generics.GenericAPIView):
    serializer_class = TokenOut

    @extend_schema(responses=TokenOut(many=True))
    def get(self, request):
        page = self.paginate_queryset(
            ApiToken.objects.filter(user=request.user).order_by("-created_at")
        )
        return self.get_paginated_response(TokenOut(page, many=True).data)

    @idempotent
    @extend_schema(request=TokenIn, responses={201: TokenCreatedOut})
    def post(self, request):
        body = TokenIn(data=request.data)
        body.is_valid(raise_exception=True)
        try:
            token, raw = api_token_create(user=request.user, **body.validated_data)
        except TokenError as error:
            raise serializers.ValidationError({"expires_at": [str(error)]}) from None
        data = TokenOut(token).data | {"token": raw}
        return Response(data, status=status.HTTP_201_CREATED)


class TokenRevoke(APIView):
    @extend_schema(responses={204: None})
    def delete(self, request, token_id: int):
        token = ApiToken.objects.filter(pk=token_id, user=request.user).first()
        if token is None:
            raise NotFound(f"token {token_id} not found")
        try:
            api_token_revoke(token=token, actor=request.user)
        except TokenError as error:
            raise Conflict(str(error)) from None
        return Response(status=status.HTTP_204_NO_CONTENT)
