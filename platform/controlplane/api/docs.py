"""The OpenAPI schema and the Swagger UI page, public on purpose (docs/architecture.md,
"Security").

The page is drf-spectacular's split view (HTML and init script as two responses) with
Swagger UI served from drf-spectacular-sidecar, so it needs no CDN and no inline script.
"""

from __future__ import annotations

from typing import Any

from django.utils import translation
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.response import Response


class ApiSchemaView(SpectacularAPIView):
    """The schema, generated once per process and language.

    It depends on the code only (served public, so no per-user filtering): regenerating it
    for every anonymous request would cost ~120 ms of CPU each, a cheap way to load the
    web processes.
    """

    _generated: dict[tuple[Any, ...], dict] = {}

    def _get_schema_response(self, request):
        version = self.api_version or request.version or self._get_version_parameter(request)
        key = (version, translation.get_language(), self.serve_public, self.urlconf)
        schema = self._generated.get(key)
        if schema is None:
            generator = self.generator_class(
                urlconf=self.urlconf, api_version=version, patterns=self.patterns
            )
            schema = generator.get_schema(request=request, public=self.serve_public)
            self._generated[key] = schema
        filename = self._get_filename(request, version)
        return Response(
            data=schema, headers={"Content-Disposition": f'inline; filename="{filename}"'}
        )


class ApiDocsView(SpectacularSwaggerSplitView):
    template_name = "api/swagger_ui.html"
