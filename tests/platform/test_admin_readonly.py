"""The admin adds nothing the product makes: jobs, their events and artifacts, audit events,
usage rows, projects and memberships are written by services (audited), never typed in."""

import pytest
from django.contrib import admin
from django.contrib.auth.models import User
from django.test import RequestFactory

pytestmark = pytest.mark.django_db

# People and their groups are what the admin is for: no service creates a login.
MADE_IN_THE_ADMIN = {"auth.User", "auth.Group"}


@pytest.fixture
def superuser_request():
    request = RequestFactory().get("/admin/")
    request.user = User.objects.create_superuser("root", "root@example.org", "pw-for-tests-1")
    return request


def test_no_model_admin_offers_add_for_what_the_product_makes(superuser_request):
    addable = []
    for model, model_admin in admin.site._registry.items():
        label = model._meta.label
        if label in MADE_IN_THE_ADMIN:
            continue
        if model_admin.has_add_permission(superuser_request):
            addable.append(label)
        for inline in model_admin.get_inline_instances(superuser_request):
            if inline.has_add_permission(superuser_request, None):
                addable.append(f"{label} > {inline.model._meta.label}")
    assert addable == []


@pytest.mark.parametrize(
    "path",
    ["/admin/jobs/job/add/", "/admin/jobs/jobeventrecord/add/", "/admin/audit/auditevent/add/"],
)
def test_add_pages_are_refused(client, superuser_request, path):
    client.force_login(superuser_request.user)
    assert client.get(path).status_code == 403


def test_job_list_has_no_add_button(client, superuser_request):
    client.force_login(superuser_request.user)
    page = client.get("/admin/jobs/job/").content.decode()
    assert "/admin/jobs/job/add/" not in page
