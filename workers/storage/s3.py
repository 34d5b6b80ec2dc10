"""The S3 backend, through the `minio` SDK and only the plain S3 API.

So MinIO, SeaweedFS, Garage, Ceph RGW and AWS can all serve it. The bucket is versioned
(`ensure_bucket`), which is why `delete` removes every version and delete marker: GDPR
erasure would be a lie if an old version stayed behind.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import BinaryIO

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import ENABLED, ComposeSource, CopySource, Tags
from minio.datatypes import Part
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error
from minio.versioningconfig import VersioningConfig
from urllib3.util import Retry, Timeout

from workers.storage.base import (
    DEFAULT_CONTENT_TYPE,
    NULL_VERSION_ID,
    SHA256_METADATA_KEY,
    ObjectInfo,
    ObjectStore,
    ObjectVersion,
    OpenUpload,
    StoredObject,
    StoreLocation,
    check_content_type,
    check_expiry,
    check_metadata,
    check_range,
    range_error,
)
from workers.storage.errors import (
    InvalidKeyError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
)
from workers.storage.keys import validate_key, validate_prefix
from workers.storage.streams import HashingReader, Readable, as_reader

logger = logging.getLogger(__name__)

# 16 MiB parts, one upload at a time, bound a put's memory to ~80 MB whatever the size.
# Parallel part uploads are possible, but the SDK's thread pool then leaks its three
# threads on every put whose stream fails mid-way (a browser closing an upload), which a
# long-lived web process cannot afford; against a server on the LAN they gain little.
# S3 allows 10,000 parts: 156 GiB for a stream of unknown length; a declared length gets
# parts as big as it needs (`_part_size_for`).
DEFAULT_PART_SIZE = 16 * 1024 * 1024
DEFAULT_PARALLEL_UPLOADS = 1
MAX_PARTS = 10_000
# CopyObject copies at most 5 GiB; a bigger object is copied in parts (UploadPartCopy).
MAX_COPY_OBJECT_SIZE = 5 * 1024**3
_READ_CHUNK = 8 * 1024 * 1024  # read-back verification: bytes per chunk
_READ_AHEAD = 4  # chunks queued ahead of the hash (32 MiB at most)
_MIB = 1024 * 1024
_META_PREFIX = "x-amz-meta-"
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchVersion", "NoSuchObject", "ResourceNotFound"}
# Servers without object tagging (Garage) answer these; the sha256 is then only returned.
_NO_TAGGING_CODES = {"NotImplemented", "AccessDenied", "MethodNotAllowed"}


def _http_client() -> urllib3.PoolManager:
    return urllib3.PoolManager(
        # A dead endpoint should fail in seconds; a slow part upload may take minutes.
        timeout=Timeout(connect=10, read=300),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        retries=Retry(total=3, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
    )


class _PrefixedReader:
    """Bytes already read (to decide single PUT or multipart), then the rest of the stream."""

    def __init__(self, head: bytes, rest: HashingReader) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def read(self, size: int = -1) -> bytes:
        if not self._head:
            return self._rest.read(size)
        if size < 0 or size >= len(self._head):
            out, self._head = bytes(self._head), memoryview(b"")
            more = self._rest.read(size - len(out)) if size > len(out) else b""
            return out + more if more else out
        out, self._head = bytes(self._head[:size]), self._head[size:]
        return out


class _ResponseReader(io.RawIOBase):
    """A GET response as a file object that returns its connection to the pool on close."""

    def __init__(self, response: urllib3.BaseHTTPResponse, describe: str) -> None:
        self._response = response
        self._describe = describe

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            data = self._response.read(len(buffer))
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise StorageError(f"reading {self._describe} failed: {exc}") from exc
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._response.close()
            self._response.release_conn()
        super().close()


def _check_part_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= MAX_PARTS:
        raise InvalidKeyError(
            f"part number must be an integer from 1 to {MAX_PARTS}, got {number!r}"
        )


class S3ObjectStore(ObjectStore):
    backend = "s3"

    def __init__(
        self,
        endpoint: str,
        bucket: str,
        *,
        access_key: str,
        secret_key: str,
        region: str = "us-east-1",
        secure: bool = False,
        part_size: int = DEFAULT_PART_SIZE,
        parallel_uploads: int = DEFAULT_PARALLEL_UPLOADS,
        public_endpoint: str | None = None,
        public_secure: bool | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket
        self.part_size = part_size
        self.parallel_uploads = parallel_uploads
        # With the region given, presigning needs no request (no GetBucketLocation).
        self.client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=_http_client(),
        )
        self.region = region
        # Where the bucket really is is asked of the server (`location`): a client given a
        # region trusts it without asking, so the lookup has a client of its own without
        # one. Anonymous clients never ask (the SDK answers us-east-1): none is made then.
        self._region_client = (
            Minio(
                endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure,
                http_client=_http_client(),
            )
            if access_key
            else None
        )
        self._location: StoreLocation | None = None
        # Presigned URLs are for browsers and other machines, which may know the server by
        # another name than we do (`minio:9000` inside compose, `localhost:9000` outside).
        # The signature covers the host, so sign with the name the client will use; with
        # the region given, the SDK presigns without a request.
        self.presign_client = (
            Minio(
                public_endpoint,
                access_key=access_key,
                secret_key=secret_key,
                secure=secure if public_secure is None else public_secure,
                region=region,
            )
            if public_endpoint
            else self.client
        )

    @contextmanager
    def _errors(self, action: str, reader: HashingReader | None = None) -> Iterator[None]:
        """Turn SDK and network errors into StorageError naming the endpoint and the key."""
        where = f"{action} at S3 endpoint {self.endpoint} (bucket {self.bucket})"
        try:
            yield
        except StorageError:
            raise
        except S3Error as exc:
            if reader is not None and reader.source_error is not None:
                raise reader.source_error from None
            if exc.code in _NOT_FOUND_CODES:
                raise ObjectNotFoundError(f"{where}: no such object ({exc.code})") from None
            hint = (
                "; create it with ensure_bucket() or the minio-init service"
                if exc.code == "NoSuchBucket"
                else ""
            )
            raise StorageError(f"{where} failed: {exc.code}: {exc.message}{hint}") from exc
        except (MinioException, urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
            # The caller's stream raised inside the SDK: that is their error, not ours.
            if reader is not None and reader.source_error is not None:
                raise reader.source_error from None
            raise StorageError(f"{where} failed: {type(exc).__name__}: {exc}") from exc

    # -- writes ----------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        stream: BinaryIO | Readable | Iterable[bytes],
        *,
        length: int | None = None,
        content_type: str = DEFAULT_CONTENT_TYPE,
        metadata: dict[str, str] | None = None,
    ) -> StoredObject:
        validate_key(key)
        check_content_type(key, content_type)
        headers = {
            _META_PREFIX + name: value for name, value in check_metadata(key, metadata).items()
        }
        # Keys are server-made and unique, so check-then-put only races with a bug; and on
        # the versioned bucket such a race keeps the earlier write as an older version.
        if self.exists(key):
            raise ObjectExistsError(
                f"{key} already exists in {self.bucket}; write changes under a new key"
            )
        reader = HashingReader(as_reader(stream), expected_length=length)
        with self._errors(f"put {key}", reader):
            # Read one part ahead: an object that fits in one part is one PUT whose
            # metadata already holds the sha256; a bigger one streams as a multipart
            # upload (which the SDK aborts on failure) and gets its sha256 as a tag.
            head = reader.read(self.part_size + 1)
            if len(head) <= self.part_size:
                headers[_META_PREFIX + SHA256_METADATA_KEY] = reader.hexdigest()
                result = self.client.put_object(
                    self.bucket,
                    key,
                    io.BytesIO(head),
                    len(head),
                    content_type=content_type,
                    metadata=headers,
                )
            else:
                # Length -1 even when declared: given a length, the SDK reads exactly that
                # many bytes and would store a longer stream truncated without a word;
                # reading to the end lets HashingReader refuse it before the upload completes.
                result = self.client.put_object(
                    self.bucket,
                    key,
                    _PrefixedReader(head, reader),  # type: ignore[arg-type]
                    -1,
                    content_type=content_type,
                    metadata=headers,
                    part_size=self._part_size_for(length),
                    num_parallel_uploads=self.parallel_uploads,
                )
                self._tag_sha256(key, result.version_id, reader.hexdigest())
        return StoredObject(
            key=key, size=reader.size, sha256=reader.hexdigest(), version_id=result.version_id
        )

    def copy(self, src_key: str, dst_key: str) -> StoredObject:
        """A server-side copy: CopyObject, or a multipart copy of parts above 5 GiB.

        The source version is pinned (a versioned bucket could gain a newer one meanwhile);
        the content type, metadata and the recorded sha256 (metadata or tag) go along.
        """
        validate_key(src_key)
        validate_key(dst_key)
        if self.exists(dst_key):
            raise ObjectExistsError(
                f"{dst_key} already exists in {self.bucket}; write changes under a new key"
            )
        info = self.stat(src_key)
        source = CopySource(self.bucket, src_key, version_id=info.version_id)
        with self._errors(f"copy {src_key} to {dst_key}"):
            if info.size > self.max_copy_object_size:
                result = self._copy_in_parts(source, dst_key, info)
            else:
                # Metadata and tags are copied with the object (S3's COPY directives).
                result = self.client.copy_object(self.bucket, dst_key, source)
            copied = self.stat(dst_key, version_id=result.version_id)
            if info.sha256 and copied.sha256 != info.sha256:
                self._tag_sha256(dst_key, result.version_id, info.sha256)
        return StoredObject(
            key=dst_key, size=info.size, sha256=info.sha256 or "", version_id=result.version_id
        )

    # Above this size `copy` goes through compose_object (an attribute: tests lower it).
    max_copy_object_size = MAX_COPY_OBJECT_SIZE

    def _copy_in_parts(self, source: CopySource, dst_key: str, info: ObjectInfo):
        """UploadPartCopy in parts of at most 5 GiB (the SDK's compose_object); the
        metadata is set again (COPY directives do not apply) and the sha256 tagged after."""
        headers = {
            _META_PREFIX + name: value
            for name, value in info.metadata.items()
            if name != SHA256_METADATA_KEY
        }
        headers["Content-Type"] = info.content_type or DEFAULT_CONTENT_TYPE
        return self.client.compose_object(
            self.bucket, dst_key, [ComposeSource.of(source)], metadata=headers
        )

    def _part_size_for(self, length: int | None) -> int:
        if length is None or length <= self.part_size * MAX_PARTS:
            return self.part_size
        return -(-length // (MAX_PARTS * _MIB)) * _MIB  # whole MiB, rounded up

    def _tag_sha256(self, key: str, version_id: str | None, sha256: str) -> None:
        tags = Tags.new_object_tags()
        tags[SHA256_METADATA_KEY] = sha256
        try:
            self.client.set_object_tags(self.bucket, key, tags, version_id=version_id)
        except S3Error as exc:
            if exc.code not in _NO_TAGGING_CODES:
                # An object whose sha256 is lost could never be verified: take it back.
                self.client.remove_object(self.bucket, key, version_id=version_id)
                raise
            logger.warning(
                "S3 endpoint %s cannot tag %s (%s); its sha256 is not stored",
                self.endpoint,
                key,
                exc.code,
            )

    # -- reads -----------------------------------------------------------------------

    def open_stream(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        validate_key(key)
        with self._errors(f"get {key}"):
            response = self.client.get_object(self.bucket, key, version_id=version_id)
        raw = _ResponseReader(response, f"{key} from S3 endpoint {self.endpoint}")
        return io.BufferedReader(raw, buffer_size=1024 * 1024)  # type: ignore[return-value]

    def get_range(
        self, key: str, offset: int, length: int, *, version_id: str | None = None
    ) -> bytes:
        validate_key(key)
        check_range(key, offset, length)
        with self._errors(f"get bytes {offset}+{length} of {key}"):
            try:
                response = self.client.get_object(
                    self.bucket, key, offset=offset, length=length, version_id=version_id
                )
            except S3Error as exc:
                if exc.code == "InvalidRange":  # the range starts past the end
                    raise range_error(key, offset, length) from None
                raise
            try:
                data = response.read()
            finally:
                response.close()
                response.release_conn()
        if len(data) != length:  # a range that runs past the end is answered short
            raise range_error(key, offset, length)
        return data

    def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        validate_key(key)
        with self._errors(f"stat {key}"):
            obj = self.client.stat_object(self.bucket, key, version_id=version_id)
            metadata = {
                name.lower()[len(_META_PREFIX) :]: value
                for name, value in (obj.metadata or {}).items()
                if name.lower().startswith(_META_PREFIX)
            }
            if SHA256_METADATA_KEY not in metadata:
                sha256 = self._tagged_sha256(key, obj.version_id)
                if sha256:
                    metadata[SHA256_METADATA_KEY] = sha256
        return ObjectInfo(
            key=key,
            size=obj.size or 0,
            etag=obj.etag,
            last_modified=obj.last_modified,  # type: ignore[arg-type]
            version_id=obj.version_id,
            content_type=obj.content_type,
            metadata=metadata,
        )

    def _tagged_sha256(self, key: str, version_id: str | None) -> str | None:
        try:
            tags = self.client.get_object_tags(self.bucket, key, version_id=version_id)
        except S3Error as exc:
            if exc.code in _NO_TAGGING_CODES:
                return None
            raise
        return (tags or {}).get(SHA256_METADATA_KEY)

    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            with self._errors(f"stat {key}"):
                self.client.stat_object(self.bucket, key)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        folder = validate_prefix(prefix)
        with self._errors(f"list {folder or '/'}"):
            for obj in self.client.list_objects(self.bucket, prefix=folder, recursive=recursive):
                if obj.is_dir:
                    continue
                yield ObjectInfo(
                    key=obj.object_name or "",
                    size=obj.size or 0,
                    etag=obj.etag,
                    last_modified=obj.last_modified,  # type: ignore[arg-type]
                    version_id=obj.version_id,
                )

    # -- deletes ---------------------------------------------------------------------

    def delete(self, key: str) -> int:
        validate_key(key)
        with self._errors(f"delete {key}"):
            # Versions of `key` only: the listing prefix would also match `key-2`.
            versions = [
                DeleteObject(key, obj.version_id)
                for obj in self.client.list_objects(self.bucket, prefix=key, include_version=True)
                if obj.object_name == key
            ]
            return self._delete_all(versions)

    def delete_prefix(self, prefix: str) -> int:
        folder = validate_prefix(prefix)
        if folder == "":
            raise InvalidKeyError(
                "delete_prefix needs a folder; refusing to empty the whole bucket"
            )
        with self._errors(f"delete everything under {folder}"):
            versions = (
                DeleteObject(obj.object_name or "", obj.version_id)
                for obj in self.client.list_objects(
                    self.bucket, prefix=folder, recursive=True, include_version=True
                )
            )
            return self._delete_all(versions)

    def list_versions(self, key_or_prefix: str) -> list[ObjectVersion]:
        whole_folder = key_or_prefix == "" or key_or_prefix.endswith("/")
        prefix = validate_prefix(key_or_prefix) if whole_folder else validate_key(key_or_prefix)
        with self._errors(f"list versions of {prefix or '/'}"):
            listed = self.client.list_objects(
                self.bucket, prefix=prefix, recursive=True, include_version=True
            )
            return [
                ObjectVersion(
                    key=obj.object_name or "",
                    version_id=obj.version_id or NULL_VERSION_ID,
                    size=obj.size or 0,
                    # The SDK hands IsLatest over as the XML's text.
                    is_latest=str(obj.is_latest).lower() == "true",
                    is_delete_marker=bool(obj.is_delete_marker),
                    last_modified=obj.last_modified,
                )
                for obj in listed
                # A key's listing prefix would also match `key-2`: its versions only.
                if whole_folder or obj.object_name == prefix
            ]

    def delete_all_versions(self, key: str) -> list[str]:
        ids = [v.version_id for v in self.list_versions(key)]
        with self._errors(f"delete the versions of {key}"):
            self._delete_all(DeleteObject(key, version_id) for version_id in ids)
        return ids

    def _delete_all(self, objects: Iterable[DeleteObject]) -> int:
        # A count, not a list: erasing a project may go through millions of versions.
        counted = 0

        def counting() -> Iterator[DeleteObject]:
            nonlocal counted
            for obj in objects:
                counted += 1
                yield obj

        # remove_objects is lazy: iterating its result is what sends the requests.
        errors = [
            f"{e.name} ({e.version_id}): {e.code} {e.message}"
            for e in self.client.remove_objects(self.bucket, counting())
        ]
        if errors:
            raise StorageError(
                f"S3 endpoint {self.endpoint} could not delete: " + "; ".join(errors[:5])
            )
        return counted

    # -- presigned URLs --------------------------------------------------------------

    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        validate_key(key)
        with self._errors(f"presign GET {key}"):
            return self.presign_client.presigned_get_object(
                self.bucket, key, expires=check_expiry(expires)
            )

    def presigned_put_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        validate_key(key)
        with self._errors(f"presign PUT {key}"):
            return self.presign_client.presigned_put_object(
                self.bucket, key, expires=check_expiry(expires)
            )

    # -- client-side multipart upload --------------------------------------------------

    def multipart_create(self, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        validate_key(key)
        check_content_type(key, content_type)
        if self.exists(key):
            raise ObjectExistsError(
                f"{key} already exists in {self.bucket}; write changes under a new key"
            )
        with self._errors(f"start multipart upload of {key}"):
            # The SDK has no public call for client-driven multipart; these are its S3 calls.
            return self.client._create_multipart_upload(
                self.bucket, key, {"Content-Type": content_type}
            )

    def presigned_part_url(
        self, key: str, upload_id: str, part_number: int, expires: timedelta = timedelta(hours=1)
    ) -> str:
        validate_key(key)
        _check_part_number(part_number)
        with self._errors(f"presign part {part_number} of {key}"):
            return self.presign_client.get_presigned_url(
                "PUT",
                self.bucket,
                key,
                expires=check_expiry(expires),
                extra_query_params={"uploadId": upload_id, "partNumber": str(part_number)},
            )

    def multipart_complete(
        self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]
    ) -> StoredObject:
        validate_key(key)
        ordered = sorted(parts)
        for number, _etag in ordered:
            _check_part_number(number)
        with self._errors(f"complete multipart upload of {key}"):
            result = self.client._complete_multipart_upload(
                self.bucket,
                key,
                upload_id,
                [Part(number, etag.strip('"')) for number, etag in ordered],
            )
        stored = self._read_back(key, result.version_id)
        self._tag_sha256(key, result.version_id, stored.sha256)
        return stored

    def _read_back(self, key: str, version_id: str | None) -> StoredObject:
        """Size and sha256 of a stored object: one streamed GET, hashed as it arrives.

        A reader thread keeps up to READ_AHEAD chunks queued while this thread hashes, so
        the network and the hash overlap (one GET: ranged GETs are slow on some servers).
        """
        chunks: queue.Queue = queue.Queue(maxsize=_READ_AHEAD)
        failure: list[BaseException] = []

        def read() -> None:
            try:
                response = self.client.get_object(self.bucket, key, version_id=version_id)
                try:
                    for chunk in response.stream(_READ_CHUNK):
                        chunks.put(chunk)
                finally:
                    response.close()
                    response.release_conn()
            except BaseException as exc:  # noqa: BLE001 - handed to the hashing thread
                failure.append(exc)
            finally:
                chunks.put(None)

        digest, size = hashlib.sha256(), 0
        with self._errors(f"read back {key}"):
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            while (chunk := chunks.get()) is not None:
                digest.update(chunk)
                size += len(chunk)
            reader.join()
            if failure:
                raise failure[0]
        return StoredObject(key=key, size=size, sha256=digest.hexdigest(), version_id=version_id)

    def multipart_abort(self, key: str, upload_id: str) -> None:
        validate_key(key)
        try:
            self.client._abort_multipart_upload(self.bucket, key, upload_id)
        except S3Error as exc:
            if exc.code != "NoSuchUpload":
                raise StorageError(
                    f"S3 endpoint {self.endpoint} could not abort upload of {key}: {exc}"
                ) from exc

    def multipart_list(self, prefix: str = "") -> Iterator[OpenUpload]:
        folder = validate_prefix(prefix)
        key_marker, upload_id_marker = None, None
        while True:
            with self._errors(f"list multipart uploads under {folder or '/'}"):
                page = self.client._list_multipart_uploads(
                    self.bucket,
                    prefix=folder,
                    key_marker=key_marker,
                    upload_id_marker=upload_id_marker,
                )
            for upload in page.uploads:
                if upload.upload_id and upload.initiated_time is not None:
                    yield OpenUpload(upload.object_name, upload.upload_id, upload.initiated_time)
            if not page.is_truncated or not page.uploads:
                return
            # The SDK (7.2) loses NextUploadIdMarker; the last entry is the same marker.
            last = page.uploads[-1]
            key_marker, upload_id_marker = last.object_name, last.upload_id

    def ensure_bucket(self) -> None:
        with self._errors("create bucket"):
            if not self.client.bucket_exists(self.bucket):
                try:
                    self.client.make_bucket(self.bucket, location=self.region)
                except S3Error as exc:
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
            if self.client.get_bucket_versioning(self.bucket).status != ENABLED:
                self.client.set_bucket_versioning(self.bucket, VersioningConfig(ENABLED))

    def location(self) -> StoreLocation:
        """The bucket's region as the server reports it, so a misconfigured region cannot
        be recorded as where data lives. Looked up once per store (a bucket never moves).
        """
        if self._location is None:
            self._location = StoreLocation(
                backend=self.backend, bucket=self.bucket, region=self._bucket_region()
            )
        return self._location

    def _bucket_region(self) -> str:
        if self._region_client is None:
            return self.region
        with self._errors("look up the bucket's region"):
            try:
                # GetBucketLocation. An empty answer is us-east-1 (S3's convention, which
                # the SDK applies, as it maps AWS's legacy "EU" to eu-west-1).
                return self._region_client._get_region(self.bucket)
            except S3Error as exc:
                if exc.code == "NoSuchBucket":
                    raise
                # The server will not say (no GetBucketLocation, or a policy without
                # s3:GetBucketLocation): the configuration is all there is to go by.
                logger.warning(
                    "S3 endpoint %s does not report the region of bucket %s (%s); "
                    "recording the configured region %s",
                    self.endpoint,
                    self.bucket,
                    exc.code,
                    self.region,
                )
                return self.region
