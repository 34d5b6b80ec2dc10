"""Changing organisations: create, members and roles. Every change is audited on the
platform chain with the organisation as the artifact."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db import IntegrityError, transaction

from controlplane.audit.services import audit_append
from controlplane.orgs.models import DEFAULT_ORG_SLUG, Organisation, OrgMembership, OrgRole


class OrgError(Exception):
    """An organisation change that breaks a rule; the message says which."""


def default_organisation() -> Organisation:
    """The organisation projects made without one land in (created on first use)."""
    org, _ = Organisation.objects.get_or_create(
        slug=DEFAULT_ORG_SLUG, defaults={"name": "Default organisation"}
    )
    return org


def organisation_for_new_project(actor: User, organisation: Organisation | None) -> Organisation:
    """Where a project is created: the one named, else the actor's only organisation, else
    the default one."""
    if organisation is not None:
        return organisation
    orgs = list(Organisation.objects.filter(memberships__user=actor)[:2])
    return orgs[0] if len(orgs) == 1 else default_organisation()


@transaction.atomic
def org_create(*, name: str, slug: str, actor: User, description: str = "") -> Organisation:
    try:
        with transaction.atomic():
            org = Organisation.objects.create(
                name=name, slug=slug, description=description, created_by=actor
            )
    except IntegrityError:
        raise OrgError(f"an organisation with slug '{slug}' already exists") from None
    OrgMembership.objects.create(organisation=org, user=actor, role=OrgRole.ADMIN)
    audit_append(
        project=None,
        actor=actor,
        action="org.created",
        artifact=org,
        payload={"name": name, "slug": slug},
    )
    return org


def ensure_org_member(org: Organisation, user: User, *, actor: User | None) -> OrgMembership:
    """The user's membership of ``org``, made (role member, audited) when missing: a
    project member is always a member of the project's organisation."""
    membership, created = OrgMembership.objects.get_or_create(
        organisation=org, user=user, defaults={"role": OrgRole.MEMBER}
    )
    if created:
        audit_append(
            project=None,
            actor=actor,
            action="org.member_added",
            artifact=org,
            payload={"user_id": user.pk, "role": membership.role},
        )
    return membership


@transaction.atomic
def org_update(
    *,
    org: Organisation,
    actor: User,
    name: str | None = None,
    description: str | None = None,
    members_create_projects: bool | None = None,
) -> Organisation:
    wanted = {
        "name": name,
        "description": description,
        "members_create_projects": members_create_projects,
    }
    changed = {
        field: value
        for field, value in wanted.items()
        if value is not None and value != getattr(org, field)
    }
    if changed:
        for field, value in changed.items():
            setattr(org, field, value)
        org.save(update_fields=list(changed))
        audit_append(
            project=None,
            actor=actor,
            action="org.updated",
            artifact=org,
            payload={"fields": sorted(changed)},
        )
    return org


def _check_role(role: str) -> None:
    if role not in OrgRole.values:
        raise OrgError(f"unknown role '{role}'; use one of {', '.join(OrgRole.values)}")


@transaction.atomic
def org_member_add(*, org: Organisation, user: User, role: str, actor: User) -> OrgMembership:
    _check_role(role)
    if OrgMembership.objects.filter(organisation=org, user=user).exists():
        raise OrgError(f"{user.username} is already a member; change their role instead")
    membership = OrgMembership.objects.create(organisation=org, user=user, role=role)
    audit_append(
        project=None,
        actor=actor,
        action="org.member_added",
        artifact=org,
        payload={"user_id": user.pk, "role": role},
    )
    return membership


def _ensure_an_admin_remains(org: Organisation, leaving: OrgMembership) -> None:
    # Lock the admin rows so two concurrent demotions cannot both pass this check.
    admins = OrgMembership.objects.select_for_update().filter(organisation=org, role=OrgRole.ADMIN)
    if leaving.role == OrgRole.ADMIN and not admins.exclude(pk=leaving.pk).exists():
        raise OrgError("an organisation needs at least one admin; make someone else admin first")


@transaction.atomic
def org_member_change_role(*, membership: OrgMembership, role: str, actor: User) -> OrgMembership:
    _check_role(role)
    if role == membership.role:
        return membership
    if role != OrgRole.ADMIN:
        _ensure_an_admin_remains(membership.organisation, membership)
    old = membership.role
    membership.role = role
    membership.save(update_fields=["role"])
    audit_append(
        project=None,
        actor=actor,
        action="org.member_role_changed",
        artifact=membership.organisation,
        payload={"user_id": membership.user_id, "from": old, "to": role},
    )
    return membership


@transaction.atomic
def org_member_remove(*, membership: OrgMembership, actor: User) -> list[str]:
    """Remove a member from the organisation and from every project of it (each removal
    audited on the project's chain); returns the slugs of those projects.

    Refused when they are the last admin, or the only owner of one of its projects (a
    project without an owner could not be managed by anyone)."""
    from controlplane.projects.models import Membership, Role

    org = membership.organisation
    _ensure_an_admin_remains(org, membership)
    project_rows = list(
        Membership.objects.select_for_update()
        .filter(project__organisation=org, user_id=membership.user_id)
        .select_related("project")
        .order_by("project__slug")
    )
    sole_owner_of = [
        row.project.slug
        for row in project_rows
        if row.role == Role.OWNER
        and not Membership.objects.filter(project=row.project, role=Role.OWNER)
        .exclude(pk=row.pk)
        .exists()
    ]
    if sole_owner_of:
        raise OrgError(
            f"{membership.user.username} is the only owner of {', '.join(sole_owner_of)}; "
            "make someone else owner there first"
        )
    for row in project_rows:
        row.delete()
        audit_append(
            project=row.project,
            actor=actor,
            action="member.removed",
            artifact=row.project,
            payload={"user_id": membership.user_id, "reason": f"left organisation {org.slug}"},
        )
    user_id = membership.user_id
    membership.delete()
    audit_append(
        project=None,
        actor=actor,
        action="org.member_removed",
        artifact=org,
        payload={"user_id": user_id, "projects": [row.project.slug for row in project_rows]},
    )
    return [row.project.slug for row in project_rows]
