"""Page-number pagination that refuses malformed numbers instead of guessing.

DRF's own answers `?page=abc` with 404 "Invalid page." and silently ignores
`?page_size=abc`; here both are a 400 naming the parameter. A `page_size` above the
maximum is capped (DRF's documented behaviour), and a page past the last one is a 404.
"""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import PageNumberPagination

# More digits than any real page count; int() of a longer string is wasted work.
_MAX_DIGITS = 18


def _positive_int(name: str, raw: str) -> int:
    if not (raw.isascii() and raw.isdigit() and len(raw) <= _MAX_DIGITS) or int(raw) < 1:
        raise serializers.ValidationError({name: ["must be a whole number of at least 1"]})
    return int(raw)


class StandardPagination(PageNumberPagination):
    page_size_query_param = "page_size"
    max_page_size = 500

    def get_page_size(self, request) -> int:
        raw = request.query_params.get(self.page_size_query_param)
        if raw is None or raw == "":
            return self.page_size
        return min(_positive_int(self.page_size_query_param, raw), self.max_page_size)

    def get_page_number(self, request, paginator) -> int:
        raw = request.query_params.get(self.page_query_param)
        if raw is None or raw == "":
            return 1
        if raw in self.last_page_strings:
            return paginator.num_pages
        number = _positive_int(self.page_query_param, raw)
        if number > paginator.num_pages:
            raise NotFound(f"page {number} does not exist; the last page is {paginator.num_pages}")
        return number

    def get_schema_operation_parameters(self, view) -> list[dict]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"] = {"type": "integer", "minimum": 1}
            if parameter["name"] == self.page_size_query_param:
                parameter["description"] = (
                    f"Number of results per page (default {self.page_size}; "
                    f"values above {self.max_page_size} are capped)."
                )
        return parameters
