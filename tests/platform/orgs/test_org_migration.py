"""projects 0003 moves the projects made before organisations existed, and their members,
into the default organisation (staff become its admins)."""

from __future__ import annotations

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("projects", "0002_project_subject_key_generation")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


@pytest.mark.slow  # a migration round trip: ~8 s, run by `make test`
@pytest.mark.django_db(transaction=True)
def test_existing_projects_and_members_move_into_the_default_organisation():
    latest = MigrationExecutor(connection).loader.graph.leaf_nodes()
    old = _migrate(BEFORE)
    try:
        User = old.get_model("auth", "User")
        Project = old.get_model("projects", "Project")
        Membership = old.get_model("projects", "Membership")
        owner = User.objects.create(username="old-owner")
        viewer = User.objects.create(username="old-viewer")
        User.objects.create(username="old-staff", is_staff=True)
        User.objects.create(username="no-project")
        alpha = Project.objects.create(name="Alpha", slug="alpha")
        beta = Project.objects.create(name="Beta", slug="beta")
        Membership.objects.create(project=alpha, user=owner, role="owner")
        Membership.objects.create(project=alpha, user=viewer, role="viewer")
        Membership.objects.create(project=beta, user=owner, role="owner")

        new = _migrate(latest)
    finally:
        _migrate(latest)  # leave the schema as the other tests expect it

    Organisation = new.get_model("orgs", "Organisation")
    OrgMembership = new.get_model("orgs", "OrgMembership")
    Project = new.get_model("projects", "Project")
    org = Organisation.objects.get(slug="default")
    assert set(Project.objects.values_list("slug", "organisation_id")) == {
        ("alpha", org.pk),
        ("beta", org.pk),
    }
    roles = dict(
        OrgMembership.objects.filter(organisation=org).values_list("user__username", "role")
    )
    assert roles == {"old-owner": "member", "old-viewer": "member", "old-staff": "admin"}
