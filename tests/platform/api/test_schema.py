"""The OpenAPI schema is generated without warnings and validates against the OpenAPI spec."""

import pytest
from django.core.management import call_command


@pytest.mark.django_db
def test_schema_generates_cleanly_and_validates(tmp_path):
    target = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(target))
    text = target.read_text()
    assert "/api/v1/projects/{project_id}/jobs/" in text and "bearerToken" in text
