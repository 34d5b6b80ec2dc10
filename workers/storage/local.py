"""The embedded object store: files under `<root>/<bucket>/<key>` with a sidecar each.

A put writes a temporary file beside its target, then hard-links it into place: `link`
fails if the name exists, so two racing writers cannot overwrite each other, and a reader
never sees a half-written file. The sidecar `.<name>.meta.json` keeps the sha256, content
type and metadata; key parts never start with '.', so sidecars and temporary files can
never be named by a key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

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
    PresignedURLError,
    StorageError,
)
from workers.storage.keys import validate_key, validate_key_part, validate_prefix
from workers.storage.streams import HashingReader, Readable, as_reader

_COPY_CHUNK = 1024 * 1024
_SIDECAR_SUFFIX = ".meta.json"
# Separates these signatures from anything else signed with the same SECRET_KEY.
_PRESIGN_CONTEXT = b"controlplane.storage.local-presign.v1"
# The embedded store's objects are on this machine's disk: no cloud region applies.
LOCAL_REGION = "local"


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _check_part_number(number: int) -> None:
    if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 10_000:
        raise InvalidKeyError(f"part number must be an integer from 1 to 10000, got {number!r}")


def _concatenated(files: list[Path]) -> Iterator[bytes]:
    for path in files:
        with path.open("rb") as part:
            while chunk := part.read(_COPY_CHUNK):
                yield chunk


class LocalObjectStore(ObjectStore):
    backend = "local"

    def __init__(
        self, root: Path | str, bucket: str, *, public_base_url: str, signing_key: str
    ) -> None:
        self.bucket = validate_key_part(bucket)
        # Resolved once: every object path must resolve to exactly bucket_dir/<key>.
        self.bucket_dir = (Path(root) / bucket).resolve()
        self.public_base_url = public_base_url.rstrip("/")
        self._signing_key = hmac.new(
            signing_key.encode("utf-8"), _PRESIGN_CONTEXT, hashlib.sha256
        ).digest()

    # -- paths -----------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        """The file of `key`, refusing any key whose path resolves elsewhere (a symlink)."""
        validate_key(key)
        path = self.bucket_dir.joinpath(*key.split("/"))
        if path.resolve() != path:
            raise InvalidKeyError(
                f"object key {key!r} passes through a symlink in {self.bucket_dir}"
            )
        return path

    @staticmethod
    def _sidecar(path: Path) -> Path:
        return path.with_name(f".{path.name}{_SIDECAR_SUFFIX}")

    def _key_of(self, path: Path) -> str:
        return path.relative_to(self.bucket_dir).as_posix()

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
        path = self._path(key)
        check_content_type(key, content_type)
        user_metadata = check_metadata(key, metadata)
        if path.exists():
            raise ObjectExistsError(
                f"{key} already exists in {self.bucket}; write changes under a new key"
            )
        self._make_parent(key, path)
        reader = HashingReader(as_reader(stream), expected_length=length)
        data_tmp = self._write_temp(path, reader)
        sidecar_tmp = None
        try:
            sidecar = {
                SHA256_METADATA_KEY: reader.hexdigest(),
                "size": reader.size,
                "content_type": content_type,
                "metadata": user_metadata,
            }
            sidecar_tmp = self._write_temp(self._sidecar(path), json.dumps(sidecar).encode("utf-8"))
            try:
                os.link(data_tmp, path)
            except FileExistsError:
                raise ObjectExistsError(
                    f"{key} already exists in {self.bucket}; write changes under a new key"
                ) from None
            # The data is in place before its sidecar: `stat` tolerates a missing sidecar
            # for that instant, whereas a sidecar without data would describe nothing.
            os.replace(sidecar_tmp, self._sidecar(path))
            sidecar_tmp = None
        finally:
            data_tmp.unlink(missing_ok=True)
            if sidecar_tmp is not None:
                sidecar_tmp.unlink(missing_ok=True)
                self._prune_empty_parents(path)
        return StoredObject(key=key, size=reader.size, sha256=reader.hexdigest(), version_id=None)

    def copy(self, src_key: str, dst_key: str) -> StoredObject:
        """A real copy (not a hard link: deleting or erasing one must not touch the other),
        written like any put: a temp file, then linked into place; the sidecar's content
        type and metadata go with it, the sha256 is hashed from the bytes copied."""
        source = self._existing(src_key, None)
        self._path(dst_key)
        if self.exists(dst_key):
            raise ObjectExistsError(
                f"{dst_key} already exists in {self.bucket}; write changes under a new key"
            )
        info = self._info(src_key, source)
        metadata = {k: v for k, v in info.metadata.items() if k != SHA256_METADATA_KEY}
        with self.open_stream(src_key) as stream:
            return self.put_stream(
                dst_key,
                stream,
                length=info.size,
                content_type=info.content_type or DEFAULT_CONTENT_TYPE,
                metadata=metadata,
            )

    def _make_parent(self, key: str, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StorageError(f"cannot store {key}: a parent folder of it is an object") from None
        # mkdir follows a symlink planted between `_path` and here; check again.
        self._path(key)

    def _write_temp(self, target: Path, source: HashingReader | bytes) -> Path:
        fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        temp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                if isinstance(source, bytes):
                    out.write(source)
                else:
                    while chunk := source.read(_COPY_CHUNK):
                        out.write(chunk)
                out.flush()
                # Durable before it gets its final name, so a crash cannot publish garbage.
                os.fsync(out.fileno())
        except BaseException:
            temp.unlink(missing_ok=True)
            self._prune_empty_parents(target)
            raise
        return temp

    # -- reads -----------------------------------------------------------------------

    def _existing(self, key: str, version_id: str | None) -> Path:
        path = self._path(key)
        # "null" names the one version this store keeps (as S3 names an unversioned one).
        if version_id is not None and version_id != NULL_VERSION_ID:
            raise ObjectNotFoundError(
                f"{key} version {version_id}: the local store keeps no versions"
            )
        if not path.is_file():
            raise ObjectNotFoundError(f"no object {key} in {self.bucket}")
        return path

    def open_stream(self, key: str, *, version_id: str | None = None) -> BinaryIO:
        path = self._existing(key, version_id)
        try:
            return path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key} in {self.bucket}") from None

    def get_range(
        self, key: str, offset: int, length: int, *, version_id: str | None = None
    ) -> bytes:
        check_range(key, offset, length)
        with self.open_stream(key, version_id=version_id) as stream:
            stream.seek(offset)
            data = stream.read(length)
        if len(data) != length:
            raise range_error(key, offset, length)
        return data

    def stat(self, key: str, *, version_id: str | None = None) -> ObjectInfo:
        path = self._existing(key, version_id)
        return self._info(key, path)

    def _info(self, key: str, path: Path) -> ObjectInfo:
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no object {key} in {self.bucket}") from None
        try:
            sidecar = json.loads(self._sidecar(path).read_text("utf-8"))
        except FileNotFoundError:
            sidecar = {}
        metadata = dict(sidecar.get("metadata", {}))
        sha256 = sidecar.get(SHA256_METADATA_KEY)
        if sha256:
            metadata[SHA256_METADATA_KEY] = sha256
        return ObjectInfo(
            key=key,
            size=st.st_size,
            etag=sha256,
            last_modified=datetime.fromtimestamp(st.st_mtime, UTC),
            version_id=None,
            content_type=sidecar.get("content_type", DEFAULT_CONTENT_TYPE),
            metadata=metadata,
        )

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ObjectInfo]:
        folder = self._folder(prefix)
        if not folder.is_dir():
            return
        # Sorted as S3 sorts keys, so both backends list in the same order.
        for key in sorted(self._keys_under(folder, recursive)):
            try:
                yield self._info(key, self.bucket_dir / key)
            except ObjectNotFoundError:
                continue  # deleted while we were listing

    def _folder(self, prefix: str) -> Path:
        folder = validate_prefix(prefix)
        return self._path(folder.rstrip("/")) if folder else self.bucket_dir

    def _keys_under(self, folder: Path, recursive: bool) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(folder):
            # Skip hidden names (sidecars, temp files) and never follow symlinked folders.
            dirnames[:] = [d for d in dirnames if not d.startswith(".")] if recursive else []
            for name in filenames:
                path = Path(dirpath, name)
                if not name.startswith(".") and not path.is_symlink():
                    yield self._key_of(path)

    # -- deletes ---------------------------------------------------------------------

    def delete(self, key: str) -> int:
        path = self._path(key)
        self._sidecar(path).unlink(missing_ok=True)
        leftovers = self._remove_leftover_temps(path)
        try:
            path.unlink()
        except FileNotFoundError:
            if leftovers:
                self._prune_empty_parents(path)
            return 0
        except IsADirectoryError:
            raise StorageError(f"{key} is a folder of objects; use delete_prefix") from None
        self._prune_empty_parents(path)
        return 1

    def _remove_leftover_temps(self, path: Path) -> int:
        """Temp files a killed writer of this key left beside it (see `_write_temp`).

        Deleting a key is how the platform removes what a dead upload wrote, and on this
        store a dead write leaves only its hidden temp file; the exact pattern (mkstemp's
        8 random characters) never matches another key's temp file.
        """
        if not path.parent.is_dir():
            return 0
        name = re.escape(path.name)
        # `.<name>.XXXXXXXX.tmp` (data) or `..<name>.meta.json.XXXXXXXX.tmp` (sidecar).
        pattern = re.compile(
            rf"(?:\.{name}|\.\.{name}{re.escape(_SIDECAR_SUFFIX)})\.[a-z0-9_]{{8}}\.tmp"
        )
        removed = 0
        for entry in os.scandir(path.parent):
            if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
                Path(entry.path).unlink(missing_ok=True)
                removed += 1
        return removed

    def list_versions(self, key_or_prefix: str) -> list[ObjectVersion]:
        if key_or_prefix == "" or key_or_prefix.endswith("/"):
            infos = list(self.list(key_or_prefix))
        else:
            infos = [self.stat(key_or_prefix)] if self.exists(key_or_prefix) else []
        return [
            ObjectVersion(
                key=info.key,
                version_id=NULL_VERSION_ID,
                size=info.size,
                is_latest=True,
                is_delete_marker=False,
                last_modified=info.last_modified,
            )
            for info in infos
        ]

    def delete_all_versions(self, key: str) -> list[str]:
        return [NULL_VERSION_ID] if self.delete(key) else []

    def delete_prefix(self, prefix: str) -> int:
        if validate_prefix(prefix) == "":
            raise InvalidKeyError(
                "delete_prefix needs a folder; refusing to empty the whole bucket"
            )
        folder = self._folder(prefix)
        if not folder.is_dir():
            return 0
        count = sum(1 for _ in self._keys_under(folder, recursive=True))
        shutil.rmtree(folder)
        self._prune_empty_parents(folder)
        return count

    def _prune_empty_parents(self, path: Path) -> None:
        parent = path.parent
        while parent != self.bucket_dir and parent.is_relative_to(self.bucket_dir):
            try:
                parent.rmdir()
            except OSError:
                return  # not empty (or being written to): stop here
            parent = parent.parent

    # -- presigned URLs --------------------------------------------------------------

    def presigned_get_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self._presigned_url("GET", key, expires)

    def presigned_put_url(self, key: str, expires: timedelta = timedelta(hours=1)) -> str:
        return self._presigned_url("PUT", key, expires)

    def _presigned_url(self, method: str, key: str, expires: timedelta, *extra: object) -> str:
        validate_key(key)
        deadline = int(time.time() + check_expiry(expires).total_seconds())
        payload = _b64encode(
            json.dumps([method, key, deadline, *extra], separators=(",", ":")).encode("utf-8")
        )
        return f"{self.public_base_url}/storage/local/{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64encode(
            hmac.new(self._signing_key, payload.encode("ascii"), hashlib.sha256).digest()
        )

    def verify_presigned_token(self, token: str, method: str) -> str:
        """The key a token from `presigned_*_url` grants `method` on; PresignedURLError if not."""
        key, extra = self._verified(token, method)
        if extra:
            raise PresignedURLError("this presigned URL uploads a part; send it to the part upload")
        return key

    def verify_presigned_part_token(self, token: str) -> tuple[str, str, int]:
        """(key, upload id, part number) a `presigned_part_url` token grants a PUT of."""
        key, extra = self._verified(token, "PUT")
        if len(extra) != 2:
            raise PresignedURLError("this presigned URL is not for a part upload")
        upload_id, part_number = extra
        return key, str(upload_id), int(part_number)

    @staticmethod
    def is_part_token(token: str) -> bool:
        """Whether a (not yet verified) token names a part: decides which check to run."""
        try:
            return len(json.loads(_b64decode(token.partition(".")[0]))) == 5
        except (ValueError, TypeError):
            return False

    def _verified(self, token: str, method: str) -> tuple[str, list]:
        payload, _, signature = token.partition(".")
        if not payload or not hmac.compare_digest(
            signature.encode("ascii", "replace"), self._sign(payload).encode("ascii")
        ):
            raise PresignedURLError("presigned URL signature is invalid")
        try:
            signed_method, key, deadline, *extra = json.loads(_b64decode(payload))
        except (ValueError, TypeError):
            raise PresignedURLError("presigned URL token is malformed") from None
        if signed_method != method.upper():
            raise PresignedURLError(f"presigned URL allows {signed_method}, not {method.upper()}")
        if time.time() > deadline:
            raise PresignedURLError(f"presigned URL for {key} expired")
        return validate_key(key), extra

    # -- client-side multipart upload --------------------------------------------------
    # Parts wait in `.multipart/<upload id>/` (a dot folder: no key can name it) and are
    # joined by an ordinary put, so the result is written like every other object.

    def _upload_dir(self, key: str, upload_id: str) -> Path:
        validate_key(key)
        if not isinstance(upload_id, str) or len(upload_id) != 32 or not upload_id.isalnum():
            raise ObjectNotFoundError(f"no multipart upload {upload_id!r} of {key}")
        folder = self.bucket_dir / ".multipart" / upload_id
        try:
            owner = json.loads((folder / "upload.json").read_text("utf-8"))["key"]
        except FileNotFoundError:
            raise ObjectNotFoundError(f"no multipart upload {upload_id} of {key}") from None
        if owner != key:
            raise ObjectNotFoundError(f"multipart upload {upload_id} is not for {key}")
        return folder

    def multipart_create(self, key: str, content_type: str = DEFAULT_CONTENT_TYPE) -> str:
        check_content_type(key, content_type)
        if self._path(key).exists():
            raise ObjectExistsError(
                f"{key} already exists in {self.bucket}; write changes under a new key"
            )
        upload_id = uuid.uuid4().hex
        folder = self.bucket_dir / ".multipart" / upload_id
        folder.mkdir(parents=True)
        manifest = json.dumps({"key": key, "content_type": content_type})
        try:
            (folder / "upload.json").write_text(manifest, "utf-8")
        except BaseException:
            # A folder without its manifest names no upload: nothing could ever remove it.
            self._drop_upload(folder)
            raise
        return upload_id

    def multipart_list(self, prefix: str = "") -> Iterator[OpenUpload]:
        folder_prefix = validate_prefix(prefix)
        uploads = self.bucket_dir / ".multipart"
        if not uploads.is_dir():
            return
        for folder in sorted(uploads.iterdir()):
            manifest = folder / "upload.json"
            try:
                key = json.loads(manifest.read_text("utf-8"))["key"]
                initiated = datetime.fromtimestamp(manifest.stat().st_mtime, UTC)
            except (FileNotFoundError, NotADirectoryError, ValueError, KeyError, TypeError):
                continue  # completed or aborted while we looked, or not an upload
            if isinstance(key, str) and key.startswith(folder_prefix):
                yield OpenUpload(key=key, upload_id=folder.name, initiated=initiated)

    def presigned_part_url(
        self, key: str, upload_id: str, part_number: int, expires: timedelta = timedelta(hours=1)
    ) -> str:
        _check_part_number(part_number)
        return self._presigned_url("PUT", key, expires, upload_id, part_number)

    def upload_part(
        self, key: str, upload_id: str, part_number: int, stream: Readable, length: int
    ) -> str:
        """Store one part (what the presigned part URL's handler calls); returns its ETag."""
        _check_part_number(part_number)
        folder = self._upload_dir(key, upload_id)
        target = folder / f"{part_number:05d}.part"
        reader = HashingReader(as_reader(stream), expected_length=length)
        try:
            temp = self._write_temp(target, reader)
            etag = reader.hexdigest()
            os.replace(temp, target)  # a part sent again replaces the earlier one, as on S3
            (folder / f"{part_number:05d}.etag").write_text(etag, "ascii")
        except FileNotFoundError:
            # Aborted (or completed) while this part was arriving: its folder is gone.
            raise ObjectNotFoundError(
                f"multipart upload {upload_id} of {key} ended while part {part_number} arrived"
            ) from None
        return etag

    def multipart_complete(
        self, key: str, upload_id: str, parts: Iterable[tuple[int, str]]
    ) -> StoredObject:
        folder = self._upload_dir(key, upload_id)
        ordered = sorted(parts)
        if not ordered:
            raise StorageError(f"completing {key} needs at least one part")
        files = []
        for number, etag in ordered:
            _check_part_number(number)
            try:
                stored_etag = (folder / f"{number:05d}.etag").read_text("ascii")
            except FileNotFoundError:
                raise StorageError(f"part {number} of {key} was never uploaded") from None
            if stored_etag != etag.strip('"'):
                raise StorageError(f"part {number} of {key} has ETag {stored_etag}, not {etag}")
            files.append(folder / f"{number:05d}.part")
        content_type = json.loads((folder / "upload.json").read_text("utf-8"))["content_type"]
        stored = self.put_stream(key, _concatenated(files), content_type=content_type)
        self._drop_upload(folder)
        return stored

    @staticmethod
    def _drop_upload(folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            folder.parent.rmdir()  # `.multipart` itself, once no upload is open
        except OSError:
            pass

    def multipart_abort(self, key: str, upload_id: str) -> None:
        try:
            folder = self._upload_dir(key, upload_id)
        except ObjectNotFoundError:
            return
        self._drop_upload(folder)

    def ensure_bucket(self) -> None:
        self.bucket_dir.mkdir(parents=True, exist_ok=True)

    def location(self) -> StoreLocation:
        return StoreLocation(backend=self.backend, bucket=self.bucket, region=LOCAL_REGION)
