"""Data-subject keys: the per-project HMAC key that X-Data-Subject values are hashed with.

Replicas get the key in their ReplicaSpec (`subject_key`) and store only the hash in the
archive index; the platform hashes a searched-for subject with the same key
(`protocol.subject_hash`). The key is derived from SERVING_SUBJECT_SECRET (SECRET_KEY when
unset), which is kept out of the database: a database dump alone cannot test guesses.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings


def project_subject_key(project) -> str:
    """The project's key, hex (HMAC-SHA256 of the secret over "subject-key:<project id>")."""
    secret = getattr(settings, "SERVING_SUBJECT_SECRET", "") or settings.SECRET_KEY
    return hmac.new(
        secret.encode(), f"subject-key:{project.pk}".encode(), hashlib.sha256
    ).hexdigest()
