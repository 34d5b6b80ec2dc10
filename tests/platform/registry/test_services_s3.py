"""Registration on an S3 store (moto over real HTTP): the copy is server-side, the
read-back still catches an object changed after the job reported it."""

from __future__ import annotations

import pytest

from controlplane.registry.models import VersionState
from controlplane.registry.services import version_register

pytestmark = pytest.mark.django_db


def test_registration_copies_server_side_and_verifies(
    team, s3_platform_store, make_model_job, finish_sent, monkeypatch
):
    store = s3_platform_store
    job = make_model_job()
    version = version_register(project=team.project, actor=team.engineer, job=job, model_name="gpt")
    streamed = []
    original = type(store).put_stream
    monkeypatch.setattr(
        type(store),
        "put_stream",
        lambda self, key, *a, **k: streamed.append(key) or original(self, key, *a, **k),
    )

    finish_sent()
    version.refresh_from_db()

    assert version.state == VersionState.READY, version.refused_reason
    assert streamed == []  # no byte went through this process on the way in
    for file in version.files.all():
        info = store.stat(file.object_key)
        assert (info.size, info.sha256) == (file.size, file.sha256)


def test_an_object_replaced_after_the_job_is_refused(
    team, s3_platform_store, make_model_job, finish_sent
):
    store = s3_platform_store
    job = make_model_job()
    weights = job.artifacts.get(name="model/model.safetensors")
    store.delete(weights.object_key)
    store.put_bytes(weights.object_key, b"other bytes entirely")
    version = version_register(project=team.project, actor=team.engineer, job=job, model_name="gpt")

    finish_sent()
    version.refresh_from_db()

    assert version.state == VersionState.REFUSED
    assert "model.safetensors" in version.refused_reason
    assert list(store.list(version.object_prefix)) == []
