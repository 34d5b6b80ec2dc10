"""Reading organisations with the caller's rights: another organisation's objects do not
exist for a non-member (OrgNotFound, a 404), whatever they ask."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.db.models import Q, QuerySet

from controlplane.orgs.models import Organisation, OrgMembership, OrgRole


class OrgNotFound(Exception):
    """Also raised for organisations the user is not in: we do not reveal that they exist."""


class OrgForbidden(Exception):
    pass


def orgs_of(user: User) -> QuerySet[Organisation]:
    """The organisations a user may open: their own; every one for staff."""
    if user.is_staff:
        return Organisation.objects.all()
    return Organisation.objects.filter(memberships__user=user)


def visible_org_named(user: User, slug: str) -> Organisation | None:
    """The organisation ``slug`` if the user may open it (None: unknown or not theirs)."""
    return orgs_of(user).filter(slug=str(slug)).first()


def org_role_of(user: User, org: Organisation) -> str | None:
    if not user.is_authenticated:
        return None
    membership = OrgMembership.objects.filter(organisation=org, user=user).only("role").first()
    return membership.role if membership is not None else None


def is_org_admin(user: User, org: Organisation) -> bool:
    return user.is_staff or org_role_of(user, org) == OrgRole.ADMIN


def org_for(user: User, slug: str, *, admin: bool = False) -> tuple[Organisation, str | None]:
    """The organisation named by ``slug`` with the caller's role in it.

    Staff may do everything. A non-member gets OrgNotFound; a member who is not an admin
    gets OrgForbidden when ``admin`` is asked."""
    org = Organisation.objects.filter(slug=str(slug)).first()
    if org is None:
        raise OrgNotFound(f"organisation {slug} not found")
    role = org_role_of(user, org)
    if user.is_staff:
        return org, role
    if role is None:
        raise OrgNotFound(f"organisation {slug} not found")
    if admin and role != OrgRole.ADMIN:
        raise OrgForbidden(f"your role '{role}' in this organisation may not manage it")
    return org, role


def org_members(org: Organisation) -> QuerySet[OrgMembership]:
    return (
        OrgMembership.objects.filter(organisation=org)
        .select_related("user")
        .order_by("user__username")
    )


def org_membership_of(org: Organisation, user_id: int) -> OrgMembership | None:
    return org_members(org).filter(user_id=user_id).first()


def may_create_project_in(user: User, org: Organisation) -> bool:
    """Admins always; members when the organisation lets them (members_create_projects)."""
    if is_org_admin(user, org):
        return True
    return org.members_create_projects and org_role_of(user, org) == OrgRole.MEMBER


def orgs_for_new_project(user: User) -> QuerySet[Organisation]:
    """The organisations the user may create a project in (the form's choices)."""
    if user.is_staff:
        return Organisation.objects.all()
    # One filter() call: both conditions are on the same membership row (the user's own).
    return Organisation.objects.filter(
        Q(memberships__user=user)
        & (Q(memberships__role=OrgRole.ADMIN) | Q(members_create_projects=True))
    )


class OrgChoiceNeeded(Exception):
    """The user is in several organisations and did not say which (a 400 on the field)."""


def org_for_new_project(user: User, slug: str | None) -> Organisation | None:
    """Where ``user`` may create a project: the organisation named by ``slug``; unnamed,
    their only organisation (None when they are in none: projects.services then uses the
    default one, as before organisations existed).

    OrgNotFound (404) for an organisation they are not in, OrgForbidden (403) where they
    may not create, OrgChoiceNeeded (400) when they are in several and named none."""
    if slug:
        org, _role = org_for(user, slug)
    else:
        own = list(Organisation.objects.filter(memberships__user=user).order_by("slug")[:10])
        if not own:
            return None
        if len(own) > 1:
            names = ", ".join(o.slug for o in own)
            raise OrgChoiceNeeded(f"you are in several organisations; name one of: {names}")
        org = own[0]
    if not may_create_project_in(user, org):
        raise OrgForbidden(
            f"only admins of {org.slug} create projects there (members may not, in its settings)"
        )
    return org
