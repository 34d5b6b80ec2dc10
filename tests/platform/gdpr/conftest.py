"""Fixtures of the data-subject request tests: a request filed through the real service."""

from __future__ import annotations

import pytest

ANN = [
    {"type": "email", "value": "Ann.Smith@example.com"},
    {"type": "customer_id", "value": "CUST-90210"},
]


@pytest.fixture
def file_request(team):
    """`file_request(actor=team.engineer, kind="erasure", identifiers=ANN, ...)`."""
    from controlplane.gdpr.services import request_file

    def file(*, actor=None, kind="erasure", identifiers=None, project=None, **extra):
        return request_file(
            project=project or team.project,
            actor=actor or team.engineer,
            kind=kind,
            identifiers=ANN if identifiers is None else identifiers,
            legal_basis=extra.pop("legal_basis", "Art. 17(1)(b): consent withdrawn"),
            **extra,
        )

    return file
