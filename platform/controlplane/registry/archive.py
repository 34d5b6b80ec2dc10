"""A ready version as one tar archive, streamed with constant memory.

    <model>-v<n>/model.safetensors   (or the vision checkpoint)
    <model>-v<n>/config.json
    <model>-v<n>/tokenizer.json
    <model>-v<n>/MODEL_CARD.md
    <model>-v<n>/SHA256SUMS          (`cd <model>-v<n> && sha256sum -c SHA256SUMS`)

A tar header carries its member's size, so members are written header first, then the
object's chunks as the store hands them over, then the padding to the 512-byte block:
nothing is held whole, a 5 GB weights file costs the same memory as a 5 KB one. The sizes
come from the version's ModelFile rows; the card and SHA256SUMS are made in memory (they
are small). The whole length is known up front, so the response has a Content-Length.

Before the first byte is sent, every file is read back and hashed against its recorded
sha256 (registry/integrity.py): a tampered or rotted object refuses the download and
writes `model_version.integrity_failed` to the audit trail. Once streaming has started a
problem can no longer become an error status, which is why the check comes first.
"""

from __future__ import annotations

import hashlib
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

from django.http import StreamingHttpResponse

from controlplane.audit.services import audit_append
from controlplane.registry.card import model_card_markdown
from controlplane.registry.integrity import object_problem
from controlplane.registry.models import ModelFile, ModelVersion, VersionState
from workers.storage import ObjectStore

BLOCK = tarfile.BLOCKSIZE  # 512
CHUNK_BYTES = 1024 * 1024
CARD_NAME, SUMS_NAME = "MODEL_CARD.md", "SHA256SUMS"


class ArchiveRefused(Exception):
    """The version cannot be exported: `status` says how an HTTP client should read it."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Member:
    name: str  # inside the archive's folder
    size: int
    sha256: str
    object_key: str = ""  # streamed from the store, or
    data: bytes = b""  # made here (card, SHA256SUMS)


def archive_folder(version: ModelVersion) -> str:
    return f"{version.model.name}-v{version.number}"


def archive_filename(version: ModelVersion) -> str:
    return f"{archive_folder(version)}.tar"


def _made(name: str, data: bytes) -> Member:
    return Member(name, len(data), hashlib.sha256(data).hexdigest(), data=data)


def archive_members(version: ModelVersion) -> list[Member]:
    """What the archive holds, in order: the stored files, the card, then SHA256SUMS."""
    files: list[ModelFile] = list(version.files.order_by("name"))
    members = [Member(f.name, f.size, f.sha256, object_key=f.object_key) for f in files]
    members.append(_made(CARD_NAME, model_card_markdown(version).encode()))
    sums = "".join(f"{m.sha256}  {m.name}\n" for m in members)
    members.append(_made(SUMS_NAME, sums.encode()))
    return members


def archive_problems(version: ModelVersion, store: ObjectStore) -> list[str]:
    """Every file read back and hashed against its record; what does not match."""
    return [
        problem
        for f in version.files.order_by("name")
        if (problem := object_problem(store, f.object_key, sha256=f.sha256, size=f.size))
    ]


def prepare_archive(version: ModelVersion, store: ObjectStore, *, actor) -> list[Member]:
    """The members of a ready, intact version; else ArchiveRefused (409 when an object no
    longer matches its sha256, which is also written to the audit trail)."""
    if version.state != VersionState.READY:
        raise ArchiveRefused(
            f"{version} is {version.state}: only a ready version can be exported", 409
        )
    problems = archive_problems(version, store)
    if problems:
        # Autocommit: the event stays whatever the response turns out to be.
        audit_append(
            project=version.model.project,
            actor=actor,
            action="model_version.integrity_failed",
            artifact=version,
            payload={
                "model": version.model.name,
                "version": version.number,
                "during": "export",
                "problems": problems,
            },
        )
        raise ArchiveRefused(
            f"{version} cannot be exported: its stored files no longer match their "
            f"recorded sha256 ({'; '.join(problems)})",
            409,
        )
    return archive_members(version)


def _header(folder: str, member: Member, mtime: int) -> bytes:
    info = tarfile.TarInfo(f"{folder}/{member.name}")
    info.size, info.mtime, info.mode = member.size, mtime, 0o644
    info.uname = info.gname = "registry"
    return info.tobuf(format=tarfile.PAX_FORMAT)


def _padding(size: int) -> bytes:
    return b"\0" * (-size % BLOCK)


def archive_length(folder: str, members: list[Member], mtime: int) -> int:
    """The exact number of bytes `archive_stream` yields (for Content-Length)."""
    total = sum(len(_header(folder, m, mtime)) + m.size + len(_padding(m.size)) for m in members)
    return total + 2 * BLOCK


def archive_stream(
    folder: str, members: list[Member], store: ObjectStore, mtime: int
) -> Iterator[bytes]:
    """The tar bytes, one header or one store chunk at a time."""
    for member in members:
        yield _header(folder, member, mtime)
        if member.object_key:
            sent = 0
            for chunk in store.iter_chunks(member.object_key, CHUNK_BYTES):
                sent += len(chunk)
                yield chunk
            if sent != member.size:
                # The object changed after the check: a short or long member would shift
                # every header after it. Stop here; the client sees a truncated download.
                raise RuntimeError(f"{member.object_key} changed while it was exported")
        else:
            yield member.data
        yield _padding(member.size)
    yield b"\0" * (2 * BLOCK)  # the end-of-archive marker


def tar_response(version: ModelVersion, members: list[Member], store: ObjectStore):
    """The archive as a streamed download with its exact Content-Length."""
    folder, mtime = archive_folder(version), int(time.time())
    response = StreamingHttpResponse(
        archive_stream(folder, members, store, mtime), content_type="application/x-tar"
    )
    response["Content-Length"] = str(archive_length(folder, members, mtime))
    response["Content-Disposition"] = f'attachment; filename="{archive_filename(version)}"'
    return response
