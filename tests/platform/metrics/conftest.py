"""Scraping /metrics as Prometheus would, and reading back one sample."""

from __future__ import annotations

import pytest


@pytest.fixture
def scrape(client):
    """`scrape()` -> {metric family name: family} parsed from the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    def read(**extra):
        response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", **extra)
        assert response.status_code == 200, response.content
        return {f.name: f for f in text_string_to_metric_families(response.content.decode())}

    return read


def sample(families, name: str, suffix: str = "", **labels) -> float | None:
    """The value of `name{labels}` (`suffix`: _bucket, _count...), None when absent."""
    # The classic text format writes a gauge histogram's _gcount/_gsum as families of their own.
    for family in (families.get(name), families.get(name + suffix)):
        for found in family.samples if family else ():
            if found.name == name + suffix and all(
                found.labels.get(k) == v for k, v in labels.items()
            ):
                return found.value
    return None
