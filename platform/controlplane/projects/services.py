from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from controlplane.audit.services import audit_append
from controlplane.orgs.models import Organisation
from controlplane.orgs.services import ensure_org_member, organisation_for_new_project
from controlplane.projects.models import Membership, Project, Role


class MembershipError(Exception):
    """A membership change that would break a rule (e.g. leave a project without owner)."""


@transaction.atomic
def project_create(
    *,
    name: str,
    slug: str,
    description: str = "",
    actor: User,
    organisation: Organisation | None = None,
) -> Project:
    """A new project in ``organisation`` (default: the actor's only one, else the default
    organisation), with the actor as its owner and a member of the organisation."""
    org = organisation_for_new_project(actor, organisation)
    try:
        with transaction.atomic():
            project = Project.objects.create(
                name=name, slug=slug, description=description, created_by=actor, organisation=org
            )
    except IntegrityError:
        raise MembershipError(f"a project with slug '{slug}' already exists") from None
    ensure_org_member(org, actor, actor=actor)
    Membership.objects.create(project=project, user=actor, role=Role.OWNER)
    audit_append(
        project=project,
        actor=actor,
        action="project.created",
        artifact=project,
        payload={"name": name, "slug": slug},
    )
    audit_append(
        project=project,
        actor=actor,
        action="member.added",
        artifact=project,
        payload={"user_id": actor.pk, "role": Role.OWNER},
    )
    return project


@transaction.atomic
def project_update(
    *, project: Project, actor: User, name: str | None = None, description: str | None = None
) -> Project:
    changed = {}
    if name is not None and name != project.name:
        project.name = name
        changed["name"] = name
    if description is not None and description != project.description:
        project.description = description
        changed["description"] = description
    if changed:
        project.save(update_fields=list(changed))
        audit_append(
            project=project,
            actor=actor,
            action="project.updated",
            artifact=project,
            payload={"fields": sorted(changed)},
        )
    return project


@transaction.atomic
def member_add(*, project: Project, user: User, role: str, actor: User) -> Membership:
    if role not in Role.values:
        raise MembershipError(f"unknown role '{role}'; use one of {', '.join(Role.values)}")
    if Membership.objects.filter(project=project, user=user).exists():
        raise MembershipError(f"{user.username} is already a member; change their role instead")
    ensure_org_member(project.organisation, user, actor=actor)
    membership = Membership.objects.create(project=project, user=user, role=role)
    audit_append(
        project=project,
        actor=actor,
        action="member.added",
        artifact=project,
        payload={"user_id": user.pk, "role": role},
    )
    return membership


def _ensure_an_owner_remains(project: Project, leaving: Membership) -> None:
    # Lock the owner rows so two concurrent demotions cannot both pass this check.
    owners = Membership.objects.select_for_update().filter(project=project, role=Role.OWNER)
    if leaving.role == Role.OWNER and owners.exclude(pk=leaving.pk).count() == 0:
        raise MembershipError("a project needs at least one owner; make someone else owner first")


@transaction.atomic
def member_change_role(*, membership: Membership, role: str, actor: User) -> Membership:
    if role not in Role.values:
        raise MembershipError(f"unknown role '{role}'; use one of {', '.join(Role.values)}")
    if role == membership.role:
        return membership
    if role != Role.OWNER:
        _ensure_an_owner_remains(membership.project, membership)
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_append(
        project=membership.project,
        actor=actor,
        action="member.role_changed",
        artifact=membership.project,
        payload={"user_id": membership.user_id, "from": old, "to": role},
    )
    return membership


@transaction.atomic
def member_remove(*, membership: Membership, actor: User) -> None:
    _ensure_an_owner_remains(membership.project, membership)
    project, user_id = membership.project, membership.user_id
    membership.delete()
    audit_append(
        project=project,
        actor=actor,
        action="member.removed",
        artifact=project,
        payload={"user_id": user_id},
    )
