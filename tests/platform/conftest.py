from __future__ import annotations

import io

import pytest


@pytest.fixture
def make_upload(db):
    from controlplane.uploads.services import upload_create

    def make(project, user, data: bytes, filename: str = "data.txt"):
        return upload_create(
            project=project,
            actor=user,
            stream=io.BytesIO(data),
            filename=filename,
            size=len(data),
            content_type="text/plain",
        )

    return make
