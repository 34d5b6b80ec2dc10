"""Object keys: made by the server from ids and fixed words, never from a user's filename.

Every backend validates every key it is handed, so a key that slipped past `project_key`
(or was read back from a manifest someone edited) still cannot name a path outside the
store. The allowed character set is deliberately small: it survives URL encoding, S3
servers that disagree about `+` and spaces, and every filesystem we write to.
"""

from __future__ import annotations

import re

from workers.storage.errors import InvalidKeyError

# A part starts with a letter, digit or underscore: no hidden files (the local store keeps
# its sidecars and temporary files under leading dots) and nothing a CLI reads as an option.
_PART = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=-]*")
# Well below the 255-byte filename limit so the local store's sidecar name still fits.
MAX_PART_LENGTH = 200
# S3 allows 1024 bytes per key.
MAX_KEY_LENGTH = 1024


def validate_key_part(part: object, *, key: str | None = None) -> str:
    """Return `part` if it is one safe path segment, else raise InvalidKeyError."""
    where = f" in key {key!r}" if key is not None else ""
    if not isinstance(part, str):
        raise InvalidKeyError(
            f"key part {part!r}{where} must be a string, not {type(part).__name__}"
        )
    if part == "":
        raise InvalidKeyError(f"empty key part{where} (no leading, trailing or double '/')")
    if part in {".", ".."}:
        raise InvalidKeyError(f"key part {part!r}{where} is a relative path segment")
    if "/" in part or "\\" in part:
        raise InvalidKeyError(f"key part {part!r}{where} contains a path separator")
    if len(part) > MAX_PART_LENGTH:
        raise InvalidKeyError(
            f"key part {part[:40]!r}...{where} is longer than {MAX_PART_LENGTH} characters"
        )
    if not _PART.fullmatch(part):
        raise InvalidKeyError(
            f"key part {part!r}{where} may only hold letters, digits, '_', '.', '=' and '-', "
            "and must start with a letter, digit or '_'"
        )
    return part


def validate_key(key: object) -> str:
    """Return `key` if it is a relative, normalised path of safe parts, else raise InvalidKeyError."""
    if not isinstance(key, str):
        raise InvalidKeyError(f"object key {key!r} must be a string, not {type(key).__name__}")
    if key == "":
        raise InvalidKeyError("object key is empty")
    if key.startswith(("/", "\\")):
        raise InvalidKeyError(f"object key {key!r} is an absolute path")
    if len(key.encode("utf-8")) > MAX_KEY_LENGTH:
        raise InvalidKeyError(f"object key {key[:40]!r}... is longer than {MAX_KEY_LENGTH} bytes")
    for part in key.split("/"):
        validate_key_part(part, key=key)
    return key


def validate_prefix(prefix: object) -> str:
    """Return a folder prefix normalised to end in '/' ('' is the whole bucket).

    Prefixes are whole folders, never string prefixes: `projects/1` must not reach
    `projects/10/...` when a project is listed or erased.
    """
    if prefix == "":
        return ""
    if not isinstance(prefix, str):
        raise InvalidKeyError(f"prefix {prefix!r} must be a string, not {type(prefix).__name__}")
    folder = prefix[:-1] if prefix.endswith("/") else prefix
    validate_key(folder)
    return folder + "/"


def project_prefix(project_id: int) -> str:
    """`projects/<id>/`: the folder that holds everything of one project."""
    # bool is an int subclass; `project_key(True, ...)` is always a bug.
    if isinstance(project_id, bool) or not isinstance(project_id, int) or project_id < 1:
        raise InvalidKeyError(f"project id {project_id!r} must be a positive integer")
    return f"projects/{project_id}/"


def project_key(project_id: int, *parts: str) -> str:
    """`projects/<id>/<parts...>`, each part checked to be one safe path segment.

    >>> project_key(3, "datasets", "12", "shard-00001.jsonl.zst")
    'projects/3/datasets/12/shard-00001.jsonl.zst'
    """
    if not parts:
        raise InvalidKeyError(
            f"project_key({project_id!r}) needs at least one part after the project id"
        )
    for part in parts:
        validate_key_part(part)
    return validate_key(project_prefix(project_id) + "/".join(parts))
