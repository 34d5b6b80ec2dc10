"""Site-wide odds and ends: the favicon browsers ask for at a fixed path."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.views.decorators.cache import cache_control


@cache_control(max_age=86400, public=True)
def favicon(request: HttpRequest) -> HttpResponsePermanentRedirect:
    """/favicon.ico, which browsers and feed readers fetch without reading any page:
    the site's SVG icon (static/favicon.svg, linked from every page's head too)."""
    return HttpResponsePermanentRedirect(static("favicon.svg"))
