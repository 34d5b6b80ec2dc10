"""drf-spectacular hooks: the OpenAPI schema documents the API's error responses.

Views declare only their success responses; every operation can also fail in the one
error shape of `controlplane.api.errors`, and a client generated from the schema (or a
fuzzer checking responses against it) must know that. This hook adds those responses
once, for every operation, instead of repeating them in each `@extend_schema`.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiSerializerExtension

ERROR_COMPONENT = "Error"
_ERROR_SCHEMA = {
    "type": "object",
    "description": "The one shape of every API error.",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "status": {"type": "integer", "description": "The HTTP status, repeated."},
                "code": {"type": "string", "description": "A stable machine-readable code."},
                "message": {"type": "string", "description": "What went wrong, for people."},
                "fields": {
                    "type": "object",
                    "description": "Validation errors by dotted field path (params.train.lr).",
                    "additionalProperties": {"type": "array", "items": {"type": "string"}},
                },
            },
            "required": ["status", "code", "message"],
        }
    },
    "required": ["error"],
}

# status: (description, which operations can answer it: all, writes or those with a body)
_ERRORS = {
    "400": ("Invalid request: malformed body, fields or query parameters.", "all"),
    "401": ("No valid credentials (send Authorization: Bearer cp_...).", "all"),
    "403": ("Your role in this project does not allow this.", "all"),
    "404": ("Not found, or not visible to you.", "all"),
    "409": ("Conflicts with the current state.", "writes"),
    "413": ("The request body is larger than the limit.", "body"),
    "415": ("The body is not in a media type this operation takes.", "body"),
    "429": ("Too many requests; retry after the Retry-After header's seconds.", "all"),
    "503": ("The database or object store is unavailable; retry after Retry-After.", "all"),
}
_WRITE_METHODS = {"post", "put", "patch", "delete"}


def document_error_responses(result: dict, generator, request, public) -> dict:
    """Add the error responses (and the Error component) to every operation."""
    result.setdefault("components", {}).setdefault("schemas", {})[ERROR_COMPONENT] = _ERROR_SCHEMA
    reference = {"$ref": f"#/components/schemas/{ERROR_COMPONENT}"}
    for operations in result.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in _WRITE_METHODS | {"get", "head", "options"}:
                continue
            responses = operation.setdefault("responses", {})
            for code, (description, scope) in _ERRORS.items():
                if (scope == "writes" and method not in _WRITE_METHODS) or (
                    scope == "body" and "requestBody" not in operation
                ):
                    continue
                responses.setdefault(
                    code,
                    {
                        "description": description,
                        "content": {"application/json": {"schema": reference}},
                    },
                )
    return result


class StrictSerializerExtension(OpenApiSerializerExtension):
    """A StrictSerializer refuses unknown fields: say so (`additionalProperties: false`),
    so that generated clients and the fuzzer send the fields the API takes."""

    target_class = "controlplane.api.access.StrictSerializer"
    match_subclasses = True

    def map_serializer(self, auto_schema, direction):
        schema = auto_schema._map_basic_serializer(self.target, direction)
        if direction == "request":
            schema["additionalProperties"] = False
        return schema
