"""Fixtures shared by every test: users, projects with members of each role, API clients."""

from __future__ import annotations

import itertools

import pytest

_counter = itertools.count(1)


@pytest.fixture
def make_user(db):
    from django.contrib.auth.models import User

    def make(username: str | None = None, *, staff: bool = False) -> User:
        name = username or f"user{next(_counter)}"
        return User.objects.create_user(
            name, f"{name}@example.org", "pw-for-tests-1", is_staff=staff
        )

    return make


@pytest.fixture
def team(make_user):
    """A project with one member per role, plus an outsider who owns another project."""
    from controlplane.projects.models import Role
    from controlplane.projects.services import member_add, project_create

    class Team:
        pass

    team = Team()
    team.owner = make_user("owner")
    team.engineer = make_user("engineer")
    team.viewer = make_user("viewer")
    team.compliance = make_user("compliance")
    team.outsider = make_user("outsider")
    team.admin = make_user("admin", staff=True)
    team.project = project_create(name="Alpha", slug="alpha", actor=team.owner)
    member_add(project=team.project, user=team.engineer, role=Role.ENGINEER, actor=team.owner)
    member_add(project=team.project, user=team.viewer, role=Role.VIEWER, actor=team.owner)
    member_add(project=team.project, user=team.compliance, role=Role.COMPLIANCE, actor=team.owner)
    team.other_project = project_create(name="Beta", slug="beta", actor=team.outsider)
    return team


@pytest.fixture
def api():
    """`api(user)` -> an APIClient authenticated with a real bearer token of that user
    (the default scopes; `api(user, scopes=[...])` for others, e.g. tokens:write)."""
    from rest_framework.test import APIClient

    from controlplane.accounts.services import api_token_create

    def client_for(user=None, scopes: list[str] | None = None) -> APIClient:
        client = APIClient()
        if user is not None:
            _token, raw = api_token_create(user=user, name="tests", scopes=scopes)
            client.credentials(HTTP_AUTHORIZATION=f"Bearer {raw}")
        return client

    return client_for


@pytest.fixture(autouse=True)
def _no_dispatch_by_default(request, monkeypatch):
    """Unit tests don't need a broker: dispatched JobSpecs are collected in `sent_jobs`.

    Tests marked `@pytest.mark.broker` send real messages.
    """
    if request.node.get_closest_marker("broker"):
        yield []
        return
    sent = []
    try:
        import controlplane.jobs.dispatch as dispatch
    except Exception:  # engine-only tests run without Django apps
        yield sent
        return
    monkeypatch.setattr(
        dispatch.app,
        "send_task",
        lambda name, args=None, queue=None, **kw: sent.append((name, args, queue)),
    )
    yield sent


@pytest.fixture
def sent_jobs(_no_dispatch_by_default):
    return _no_dispatch_by_default


def pytest_configure(config):
    """Tests create many users: PBKDF2's deliberate slowness (0.24 s each) buys nothing here."""
    try:
        from django.conf import settings

        settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    except Exception:  # noqa: BLE001 - engine-only runs without Django configured
        pass
