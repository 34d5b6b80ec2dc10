"""Errors of the object store; every message names the key, bucket or endpoint involved."""

from __future__ import annotations


class StorageError(Exception):
    """The object store could not do what was asked (unreachable, refused, inconsistent)."""


class InvalidKeyError(StorageError, ValueError):
    """A key or prefix is not a safe, server-made object key."""


class ObjectExistsError(StorageError):
    """Keys are never overwritten: a change is written under a new key."""


class ObjectNotFoundError(StorageError, KeyError):
    """No object (or no such version) under the key."""

    # KeyError's str() wraps the message in quotes; keep it readable.
    __str__ = Exception.__str__


class PresignedURLError(StorageError):
    """A presigned URL token is forged, expired or used with the wrong method."""


class StreamLengthError(StorageError):
    """The stream did not hold exactly the number of bytes the caller declared."""
