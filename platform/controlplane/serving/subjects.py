"""Data-subject keys for serving: replicas get their project's key in their ReplicaSpec
(`subject_key`) and store only the hash in the archive index.

The derivation lives in controlplane.subject_keys (one keyed scheme for serving, the data
pipeline and the platform); these names stay for the serving code that imports them.
"""

from __future__ import annotations

from controlplane.subject_keys import (
    project_subject_key,
    project_subject_keys,
    subject_hash,
    subject_hashes,
)

__all__ = ["project_subject_key", "project_subject_keys", "subject_hash", "subject_hashes"]
