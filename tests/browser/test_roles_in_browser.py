"""What each role sees in the browser: a viewer every page but no control that changes
anything; an outsider a 404 on every page of the project; an engineer the controls."""

from __future__ import annotations

import re

import pytest

from tests.browser.conftest import logged_in

# Each test starts with the web process and takes more than 5 s: slow (make test, CI).
pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


@pytest.fixture
def world(team):
    """The team's project with a dataset and a queued job (which an engineer may cancel)."""
    from controlplane.datasets.services import dataset_create
    from controlplane.jobs.models import Job

    dataset = dataset_create(
        project=team.project, actor=team.owner, name="Plays", slug="plays", kind="text"
    )
    job = Job.objects.create(
        project=team.project,
        kind="inspect",
        state="queued",
        params={"upload_id": 1},
        created_by=team.engineer,
    )
    p = team.project.pk
    team.pages = [
        f"/projects/{p}/",
        f"/projects/{p}/datasets/",
        f"/projects/{p}/datasets/{dataset.pk}/",
        f"/projects/{p}/jobs/",
        f"/projects/{p}/jobs/{job.pk}/",
        f"/projects/{p}/experiments/",
        f"/projects/{p}/models/",
        f"/projects/{p}/members/",
        f"/projects/{p}/audit/",
    ]
    return team


# Forms that change nothing: logging out, filters and searches (GET).
NOT_AN_ACTION = "form[method=post]:not([action$='/logout/'])"


def action_controls(page) -> list[str]:
    """The controls on the page that would change something, as a person reads them."""
    controls = page.locator(f"{NOT_AN_ACTION} button, {NOT_AN_ACTION} input[type=submit]")
    found = [f"button {text.strip()!r}" for text in controls.all_inner_texts()]
    found += [f"file input on {page.url}"] * page.locator("input[type=file]").count()
    return found


def test_a_viewer_sees_every_page_and_no_action_control(browser, stack, visitor, world):
    viewer = logged_in(visitor, world.viewer)
    for path in world.pages:
        page = viewer.goto(path)
        assert action_controls(page) == [], path
    viewer.assert_fast()


def test_an_engineer_sees_the_controls_a_viewer_does_not(browser, stack, visitor, world):
    engineer = logged_in(visitor, world.engineer)
    page = engineer.goto(world.pages[4])  # the queued job: cancel
    assert page.get_by_role("button", name="Cancel").count() == 1
    page = engineer.goto(world.pages[2])  # the dataset: upload a version
    assert page.locator("input[type=file]").count() == 1


def test_an_outsider_gets_404_on_every_page_of_the_project(browser, stack, visitor, world):
    outsider = logged_in(visitor, world.outsider)
    for path in world.pages:
        page = outsider.goto(path, status=404)
        assert world.project.name not in page.title(), path
    outsider.goto("/projects/")
    assert outsider.page.get_by_role("link", name=world.project.name).count() == 0


def test_every_page_of_the_navigation_passes_the_checks(browser, stack, visitor, world):
    """The pages the two navigation bars lead to, as the owner (the checks: no console
    error, no failed or outside request, no serious accessibility violation)."""
    from django.urls import reverse

    p = world.project
    owner = logged_in(visitor, world.owner)
    pages = [
        reverse("overview"),
        reverse("project-list"),
        reverse("orgs:list"),
        reverse("orgs:detail", args=[p.organisation.slug]),
        reverse("token-list"),
        reverse("registry-reviews", args=[p.pk]),
        reverse("serving-deployments", args=[p.pk]),
        reverse("project_compliance", args=[p.slug]),
        reverse("gdpr-review-queue", args=[p.pk]),
        reverse("gdpr-requests", args=[p.pk]),
    ]
    for path in pages:
        page = owner.goto(path)
        assert page.get_by_role("heading").count() >= 1, path
    # Swagger UI draws the docs in script, from files served here (none from a CDN); the
    # widgets it draws are its own, so only the page as served is held to axe's rules.
    page = owner.goto(reverse("api-docs"))
    page.get_by_role("heading", name=re.compile("Control plane", re.I)).first.wait_for()
    owner.check("API docs drawn", accessibility=False)
    owner.assert_fast()
