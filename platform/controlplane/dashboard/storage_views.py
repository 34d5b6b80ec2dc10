"""Serves presigned URLs of the embedded local object store (what MinIO does in production).

It stays with the shell rather than in uploads: it is the object store's S3 stand-in, used
by uploads, dataset versions (multipart parts) and artifact downloads alike, and it
belongs to no project page (the URL's signature is its only authorisation).
"""

from __future__ import annotations

from django.http import HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.views.decorators.csrf import csrf_exempt

from controlplane.storage import object_store
from workers.storage import ObjectExistsError, ObjectNotFoundError, PresignedURLError, StorageError


@csrf_exempt  # authorised by the URL's signature, like an S3 presigned URL
def local_presigned(request, token: str):
    store = object_store()
    if not hasattr(store, "verify_presigned_token"):
        return HttpResponse(
            "presigned local URLs are only served with the local object store\n", status=404
        )
    method = request.method.upper()
    if method not in ("GET", "PUT"):
        return HttpResponse("use GET or PUT\n", status=405)
    if method == "PUT" and store.is_part_token(token):
        return _put_part(request, store, token)
    try:
        key = store.verify_presigned_token(token, method)
    except PresignedURLError as error:
        return HttpResponse(f"{error}\n", status=403)
    if method == "GET":
        if not store.exists(key):
            return HttpResponse("no such object\n", status=404)
        info = store.stat(key)
        response = StreamingHttpResponse(
            store.iter_chunks(key, chunk_size=1024 * 1024),
            content_type=info.content_type or "application/octet-stream",
        )
        response["Content-Length"] = str(info.size)
        return response
    length = _content_length(request)
    if length is None:
        return HttpResponseBadRequest("a presigned PUT needs a Content-Length\n")
    try:
        stored = store.put_stream(
            key,
            request,
            length=length,
            content_type=request.META.get("CONTENT_TYPE") or "application/octet-stream",
        )
    except ObjectExistsError:
        return HttpResponse("object already exists; keys are never overwritten\n", status=409)
    response = HttpResponse(status=200)
    response["ETag"] = stored.sha256
    return response


def _content_length(request) -> int | None:
    try:
        return int(request.META.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None


def _put_part(request, store, token: str) -> HttpResponse:
    """One part of a multipart upload: streamed to disk, answered with its ETag (as S3 does)."""
    try:
        key, upload_id, part_number = store.verify_presigned_part_token(token)
    except PresignedURLError as error:
        return HttpResponse(f"{error}\n", status=403)
    length = _content_length(request)
    if length is None:
        return HttpResponseBadRequest("a presigned PUT needs a Content-Length\n")
    try:
        etag = store.upload_part(key, upload_id, part_number, request, length)
    except ObjectNotFoundError as error:
        return HttpResponse(f"{error}\n", status=404)
    except StorageError as error:
        return HttpResponseBadRequest(f"{error}\n")
    response = HttpResponse(status=200)
    response["ETag"] = f'"{etag}"'
    return response
