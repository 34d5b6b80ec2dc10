"""Keyed subject hashes: the per-project key every data-subject identifier is hashed with.

One scheme for the whole product. A person's identifier (an e-mail address, a customer
id) is stored and compared only as HMAC-SHA256(project key, identifier stripped and
case-folded), by:
- the serve replicas (X-Data-Subject -> the inference archive's index), with the key in
  their ReplicaSpec;
- the data pipeline (the subject index of a dataset with a subject field), with the key in
  the job's dispatch message (JobSpec.subject_key), never in Job.params;
- the control worker (the subject index of a raw upload of such a dataset,
  datasets/subject_index.py), with the current key;
- the platform itself (archive searches, audit payloads of data-subject requests):
  `subject_hash(project, identifier)`.

The keys are derived, never stored: key = HMAC-SHA256(master, "subject-key:<project id>")
for generation 1, and "subject-key:<project id>:<n>" for generation n > 1. The master
secret is SUBJECT_KEY_SECRET, else SERVING_SUBJECT_SECRET, else SECRET_KEY (so deployments
from before this module keep their archive hashes). It lives in the environment, out of
the database: a dump alone cannot test guesses against the hashes.

Rotation (`subject_key_rotate`) bumps the project's generation (and its deployments'
config generation, so their replicas restart with the new key). Nothing is re-hashed in
place: the data pipeline must be re-run on every dataset with a subject field (its new
version gets an index under the new key; an old version's index is read with the key of
its generation, which its manifest fingerprints), and the archive's older index rows keep
the hash of the key their replica had, so archive searches try every generation.
"""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings
from django.db import transaction
from django.db.models import F

from controlplane.audit.services import audit_append
from controlplane.projects.models import Project
from controlplane.projects.permissions import Action, role_allows
from controlplane.projects.selectors import ProjectForbidden, role_of
from controlplane.serving.models import Deployment
from workers.serve.protocol import subject_hash as keyed_hash

FIRST_GENERATION = 1


def master_secret() -> str:
    """The secret every project key derives from (see the module doc for the fallbacks)."""
    return (
        getattr(settings, "SUBJECT_KEY_SECRET", "")
        or getattr(settings, "SERVING_SUBJECT_SECRET", "")
        or settings.SECRET_KEY
    )


def project_subject_key(project: Project, generation: int | None = None) -> str:
    """The project's key of `generation` (default: its current one), as hex.

    Generation 1 is the message serving has always used, so hashes stored before
    rotation existed are hashes of generation 1.
    """
    generation = project.subject_key_generation if generation is None else generation
    if generation < FIRST_GENERATION:
        raise ValueError(f"subject key generations start at 1, not {generation}")
    message = f"subject-key:{project.pk}"
    if generation > FIRST_GENERATION:
        message += f":{generation}"
    return hmac.new(master_secret().encode(), message.encode(), hashlib.sha256).hexdigest()


def project_subject_keys(project: Project) -> list[str]:
    """Every key the project has had, the current one first: what a search of stored
    hashes must try, since rows hashed before a rotation keep their old hash."""
    return [
        project_subject_key(project, generation)
        for generation in range(project.subject_key_generation, FIRST_GENERATION - 1, -1)
    ]


def subject_key_id(key_hex: str) -> str:
    """A key's fingerprint: the first 8 hex of its sha256 (the engine's
    engine.data.subject_index.subject_key_id; a manifest records it). Safe to show."""
    return hashlib.sha256(bytes.fromhex(key_hex)).hexdigest()[:8]


def subject_key_for_id(project: Project, key_id: str) -> str | None:
    """The project's key (any generation) whose fingerprint is `key_id`, as a pipeline
    manifest records it; None when no generation has it (another project's key, or a
    changed master secret)."""
    return next(
        (key for key in project_subject_keys(project) if subject_key_id(key) == key_id), None
    )


def subject_hash(project: Project, identifier: str) -> str:
    """The identifier's hash under the project's current key: what audit payloads and new
    index rows hold in its place."""
    return keyed_hash(project_subject_key(project), identifier)


def subject_hashes(project: Project, identifier: str) -> list[str]:
    """The identifier's hash under each of the project's keys, the current one first."""
    return [keyed_hash(key, identifier) for key in project_subject_keys(project)]


def subject_key_state(project: Project) -> dict:
    """What may be shown of the project's keys: the generation and the fingerprints."""
    ids = [subject_key_id(key) for key in project_subject_keys(project)]
    return {
        "generation": project.subject_key_generation,
        "key_id": ids[0],
        "older_key_ids": ids[1:],
    }


def can_rotate_subject_key(actor, project: Project) -> bool:
    return bool(
        actor.is_authenticated
        and (actor.is_staff or role_allows(role_of(actor, project), Action.REVIEW))
    )


def subject_key_rotate(*, project: Project, actor) -> Project:
    """Start the project's next key generation (owners and compliance officers).

    Audited with the new key's fingerprint, never the key. What was hashed before keeps
    its hash: re-run the data pipeline on the datasets with a subject field for indexes
    under the new key; archive searches try the older keys too.
    """
    if not can_rotate_subject_key(actor, project):
        raise ProjectForbidden("rotating the data-subject key needs the owner or compliance role")
    with transaction.atomic():
        # Locked: two rotations at once make two generations, not one counted twice.
        project = Project.objects.select_for_update().get(pk=project.pk)
        previous = project_subject_key(project)
        project.subject_key_generation += 1
        project.save(update_fields=["subject_key_generation"])
        # A replica reads its key when it starts: a new config generation makes the
        # scheduler replace the running ones (new first, then the old drain), so none
        # keeps hashing with the retired key.
        restarted = Deployment.objects.filter(project=project).update(
            config_generation=F("config_generation") + 1
        )
        audit_append(
            project=project,
            actor=actor,
            action="project.subject_key_rotated",
            artifact=project,
            payload={
                "generation": project.subject_key_generation,
                "key_id": subject_key_id(project_subject_key(project)),
                "previous_key_id": subject_key_id(previous),
                "deployments_reconfigured": restarted,
                "reindex": "re-run the data pipeline on every dataset with a subject field",
            },
        )
    return project
