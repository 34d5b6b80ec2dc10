"""The site's URLs plus a stand-in for the policy page, whose route another part of the
policy work adds: the banner's link to a rule is tested against its URL name."""

from django.http import HttpResponse
from django.urls import include, path


def _policy_page(request, slug: str) -> HttpResponse:
    return HttpResponse(f"policy of {slug}")


urlpatterns = [
    path("projects/<slug:slug>/policy/", _policy_page, name="project_policy"),
    path("", include("controlplane.urls")),
]
