"""The OpenAPI schema and the Swagger UI page, public on purpose (docs/architecture.md).

The page is drf-spectacular's split view (HTML and init script as two responses) with
Swagger UI served from drf-spectacular-sidecar, so it needs no CDN and no inline script.
"""

from __future__ import annotations

from drf_spectacular.views import SpectacularSwaggerSplitView


class ApiDocsView(SpectacularSwaggerSplitView):
    template_name = "api/swagger_ui.html"
