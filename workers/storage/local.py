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
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import BinaryIO

from workers.storage.base import (
    DEFAULT_CONTENT_TYPE,
    SHA256_METADATA_KEY,
    ObjectInfo,
    ObjectStore,
    StoredObject,
    check_content_type,
    check_expiry,
    check_metadata,
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


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


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
        if version_id is not None:
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
        try:
            path.unlink()
        except FileNotFoundError:
            return 0
        except IsADirectoryError:
            raise StorageError(f"{key} is a folder of objects; use delete_prefix") from None
        self._prune_empty_parents(path)
        return 1

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

    def _presigned_url(self, method: str, key: str, expires: timedelta) -> str:
        validate_key(key)
        deadline = int(time.time() + check_expiry(expires).total_seconds())
        payload = _b64encode(
            json.dumps([method, key, deadline], separators=(",", ":")).encode("utf-8")
        )
        return f"{self.public_base_url}/storage/local/{payload}.{self._sign(payload)}"

    def _sign(self, payload: str) -> str:
        return _b64encode(
            hmac.new(self._signing_key, payload.encode("ascii"), hashlib.sha256).digest()
        )

    def verify_presigned_token(self, token: str, method: str) -> str:
        """The key a token from `presigned_*_url` grants `method` on; PresignedURLError if not."""
        payload, _, signature = token.partition(".")
        if not payload or not hmac.compare_digest(
            signature.encode("ascii", "replace"), self._sign(payload).encode("ascii")
        ):
            raise PresignedURLError("presigned URL signature is invalid")
        try:
            signed_method, key, deadline = json.loads(_b64decode(payload))
        except (ValueError, TypeError):
            raise PresignedURLError("presigned URL token is malformed") from None
        if signed_method != method.upper():
            raise PresignedURLError(f"presigned URL allows {signed_method}, not {method.upper()}")
        if time.time() > deadline:
            raise PresignedURLError(f"presigned URL for {key} expired")
        return validate_key(key)

    def ensure_bucket(self) -> None:
        self.bucket_dir.mkdir(parents=True, exist_ok=True)
