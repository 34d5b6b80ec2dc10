"""`Idempotency-Key` on POSTs that create things: a client's retry never creates twice.

    class JobListCreate(generics.GenericAPIView):
        @idempotent
        @extend_schema(request=JobIn, responses={201: JobOut})
        def post(self, request, project_id): ...

The first request with a key runs the view; a 2xx response is stored under
(user, key, method, path) with a hash of the request body, and every later request with
the same key and body gets that response back (`Idempotent-Replayed: true`) without the
view running: no second object, no second audit event. The same key with another body
is a 422. A non-2xx response is not stored: that request created nothing, so a retry
runs again. Keys are forgotten after IDEMPOTENCY_KEY_TTL_SECONDS (control task
`control.purge_idempotency_keys`).

Concurrency: the key's row is inserted first, in the same transaction as the view's
work. A concurrent duplicate's INSERT waits on the unique index until the first request
commits (then it replays the stored response) or rolls back (then it runs the view
itself), so two simultaneous requests make exactly one object and neither sees a
half-done state.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import re
from collections.abc import Callable
from datetime import timedelta

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.utils.encoders import JSONEncoder

from controlplane.api.models import IdempotencyRecord

HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
# Visible ASCII, as Stripe and the IETF draft use it: UUIDs, ULIDs, "order-42-attempt".
_KEY_PATTERN = re.compile(r"[\x21-\x7e]{1,255}")

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name=HEADER,
    type=str,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "Makes a retry of this POST safe: a unique value (e.g. a UUID) per intended "
        "operation, 1-255 visible ASCII characters. A repeat with the same key and body "
        "gets the first 2xx response back (header `Idempotent-Replayed: true`) and creates "
        "nothing; the same key with a different body is a 422. Keys expire after 24 h."
    ),
)


class IdempotencyKeyReused(exceptions.APIException):
    status_code = status.HTTP_422_UNPROCESSABLE_ENTITY
    default_code = "idempotency_key_reused"
    default_detail = (
        f"this {HEADER} was used with a different request body; use a new key for a new request"
    )


class IdempotentResponseUnreadable(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "idempotency_key_unreadable"
    default_detail = (
        f"the response stored for this {HEADER} can no longer be read (the server's "
        "secret key changed); use a new key"
    )


def idempotent(view_method: Callable) -> Callable:
    """Decorate a DRF view's `post`: honour the Idempotency-Key header (see module doc)."""

    @functools.wraps(view_method)
    def wrapper(view, request, *args, **kwargs):
        raw_key = request.headers.get(HEADER)
        if raw_key is None:
            return view_method(view, request, *args, **kwargs)
        key = _checked_key(raw_key)
        scope = {
            "user_id": request.user.pk,
            "key_digest": hashlib.sha256(key.encode()).hexdigest(),
            "method": request.method,
            "path": request.path[:500],
        }
        request_digest = _request_digest(request)
        with transaction.atomic():
            record, earlier = _claim(scope, request_digest)
            if earlier is not None:
                return _replay(earlier, request.user.pk, key, request_digest)
            try:
                response = view_method(view, request, *args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - DRF's own handling, inside the transaction
                response = view.handle_exception(exc)  # re-raises what DRF does not handle
            if status.is_success(response.status_code):
                record.status_code = response.status_code
                record.response_token = _seal(response.data, request.user.pk, key)
                record.save(update_fields=["status_code", "response_token"])
            else:
                record.delete()  # nothing was created: a retry may run again
        return response

    # The wrapper's schema is the view's plus the header; the view's own stays untouched.
    wrapper.kwargs = dict(getattr(view_method, "kwargs", {}))
    return extend_schema(parameters=[IDEMPOTENCY_KEY_PARAMETER])(wrapper)


def _checked_key(raw_key: str) -> str:
    if not _KEY_PATTERN.fullmatch(raw_key):
        raise serializers.ValidationError(
            {HEADER: ["1-255 visible ASCII characters (no spaces), e.g. a UUID"]}
        )
    return raw_key


def _request_digest(request) -> str:
    """sha256 of the body as parsed, canonically: key order and spacing do not matter."""
    data = request.data
    if hasattr(data, "lists"):  # a form: every value of every field
        data = {name: values for name, values in data.lists()}
    # Parsed JSON holds only JSON types; str() covers a form's uploaded files (by name).
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _claim(
    scope: dict, request_digest: str
) -> tuple[IdempotencyRecord | None, IdempotencyRecord | None]:
    """Insert this key's row (ours to fill in), or return the earlier request's row."""
    now = timezone.now()
    IdempotencyRecord.objects.filter(**scope, expires_at__lte=now).delete()
    try:
        with transaction.atomic():  # a savepoint: a duplicate key fails alone
            record = IdempotencyRecord.objects.create(
                **scope,
                request_digest=request_digest,
                expires_at=now + timedelta(seconds=settings.IDEMPOTENCY_KEY_TTL_SECONDS),
            )
        return record, None
    except IntegrityError:
        # The insert waited for the earlier request's transaction, which committed.
        return None, IdempotencyRecord.objects.get(**scope)


def _replay(earlier: IdempotencyRecord, user_id: int, key: str, request_digest: str) -> Response:
    if not hmac.compare_digest(earlier.request_digest, request_digest):
        raise IdempotencyKeyReused()
    try:
        data = _unseal(earlier.response_token, user_id, key)
    except InvalidToken:
        raise IdempotentResponseUnreadable() from None
    return Response(data, status=earlier.status_code, headers={REPLAYED_HEADER: "true"})


def _fernet(user_id: int, key: str) -> Fernet:
    secret = hmac.new(
        settings.SECRET_KEY.encode(), f"idempotency\0{user_id}\0{key}".encode(), hashlib.sha256
    ).digest()
    return Fernet(base64.urlsafe_b64encode(secret))


def _seal(data, user_id: int, key: str) -> str:
    body = json.dumps(data, cls=JSONEncoder).encode()
    return _fernet(user_id, key).encrypt(body).decode()


def _unseal(token: str, user_id: int, key: str):
    return json.loads(_fernet(user_id, key).decrypt(token.encode()))


def idempotency_records_purge() -> int:
    """Forget expired keys; returns how many."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lte=timezone.now()).delete()
    return deleted
