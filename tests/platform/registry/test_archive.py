"""Export: a ready version as one tar (weights, config, tokenizer, card, SHA256SUMS),
refused with 409 and an audit event when a stored file no longer matches its sha256."""

from __future__ import annotations

import io
import subprocess
import tarfile

import pytest

from tests.platform.registry.conftest import CONFIG_BYTES, TOKENIZER_BYTES, WEIGHTS_BYTES

pytestmark = pytest.mark.django_db


def _streamed(response) -> bytes:
    assert response.streaming, "the archive must be streamed, not built in memory"
    return b"".join(response.streaming_content)


def test_archive_holds_the_files_card_and_sums_that_verify(team, api, make_version, tmp_path):
    make_version()
    response = api(team.viewer).get(
        f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/archive/"
    )
    assert response.status_code == 200
    assert response["Content-Type"] == "application/x-tar"
    assert 'filename="gpt-v1.tar"' in response["Content-Disposition"]
    body = _streamed(response)
    assert int(response["Content-Length"]) == len(body)
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = tar.getnames()
        assert names == [
            "gpt-v1/config.json",
            "gpt-v1/model.safetensors",
            "gpt-v1/tokenizer.json",
            "gpt-v1/MODEL_CARD.md",
            "gpt-v1/SHA256SUMS",
        ]
        assert tar.extractfile("gpt-v1/model.safetensors").read() == WEIGHTS_BYTES
        assert tar.extractfile("gpt-v1/config.json").read() == CONFIG_BYTES
        assert tar.extractfile("gpt-v1/tokenizer.json").read() == TOKENIZER_BYTES
        card = tar.extractfile("gpt-v1/MODEL_CARD.md").read().decode()
        assert card.startswith("# Model card: gpt v1")
        tar.extractall(tmp_path, filter="data")
    # The real tool a recipient runs.
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "gpt-v1", capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count(": OK") == 4


def test_page_download_is_the_same_archive(team, client, make_version):
    make_version()
    client.force_login(team.viewer)
    response = client.get(f"/projects/{team.project.pk}/models/gpt/v1/archive.tar")
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(_streamed(response))) as tar:
        assert "gpt-v1/SHA256SUMS" in tar.getnames()


def test_a_tampered_object_refuses_the_download_and_is_audited(team, api, client, make_version):
    from controlplane.audit.models import AuditEvent
    from controlplane.storage import object_store

    version = make_version()
    weights = version.files.get(name="model.safetensors")
    # Rot or tampering: same size, one byte off (the store is write-once: replace it).
    object_store().delete(weights.object_key)
    object_store().put_bytes(weights.object_key, WEIGHTS_BYTES[:-1] + b"!")
    response = api(team.viewer).get(
        f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/archive/"
    )
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["status"] == 409 and "no longer match" in error["message"]
    assert weights.object_key in error["message"]
    events = AuditEvent.objects.filter(
        action="model_version.integrity_failed", artifact_id=str(version.pk)
    )
    assert events.count() == 1
    assert events.get().actor_id == team.viewer.pk
    assert "sha256" in events.get().payload["problems"][0]

    client.force_login(team.owner)
    page = client.get(f"/projects/{team.project.pk}/models/gpt/v1/archive.tar")
    assert page.status_code == 409 and b"export refused" in page.content
    assert events.count() == 2


def test_a_missing_object_refuses_the_download(team, api, make_version):
    from controlplane.storage import object_store

    version = make_version()
    object_store().delete(version.files.get(name="config.json").object_key)
    response = api(team.engineer).get(
        f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/archive/"
    )
    assert response.status_code == 409 and "missing" in response.json()["error"]["message"]


def test_only_a_ready_version_exports(team, api, make_version):
    make_version(state="registering")
    response = api(team.viewer).get(
        f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/archive/"
    )
    assert response.status_code == 409
    assert "registering" in response.json()["error"]["message"]


def test_other_projects_get_404(team, api, client, make_version):
    make_version()
    assert (
        api(team.outsider)
        .get(f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/archive/")
        .status_code
        == 404
    )
    client.force_login(team.outsider)
    assert client.get(f"/projects/{team.project.pk}/models/gpt/v1/archive.tar").status_code == 404


def test_streaming_memory_does_not_grow_with_the_weights(team, make_version):
    """Each chunk the response yields is at most the store's read size, whatever the file."""
    from controlplane.registry.archive import CHUNK_BYTES, archive_stream, prepare_archive
    from controlplane.storage import object_store

    big = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)
    version = make_version(files={"model.safetensors": ("weights", big)})
    members = prepare_archive(version, object_store(), actor=team.viewer)
    sizes = [len(c) for c in archive_stream("gpt-v1", members, object_store(), 0)]
    assert max(sizes) <= CHUNK_BYTES
    assert sum(sizes) > len(big)


@pytest.mark.parametrize("kind", ["pretrain", "gan"])
def test_a_version_registered_by_the_services_exports_and_verifies(
    team, api, ready_version, tmp_path, kind
):
    """The real registration path (copy, read-back, inspection), then the export: the
    text model's three files or the vision checkpoint, each checked by sha256sum."""
    version = ready_version("gpt", kind=kind)
    response = api(team.viewer).get(
        f"/api/v1/projects/{team.project.pk}/models/gpt/versions/{version.number}/archive/"
    )
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(_streamed(response))) as tar:
        names = sorted(n.split("/", 1)[1] for n in tar.getnames())
        tar.extractall(tmp_path, filter="data")
    stored = sorted(f.name for f in version.files.all())
    assert names == sorted([*stored, "MODEL_CARD.md", "SHA256SUMS"])
    check = subprocess.run(
        ["sha256sum", "-c", "SHA256SUMS"], cwd=tmp_path / "gpt-v1", capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    card = (tmp_path / "gpt-v1" / "MODEL_CARD.md").read_text()
    assert f"{version.parameter_count:,} parameters" in card


@pytest.mark.slow
def test_an_exported_gpt_version_loads_in_transformers_with_the_engines_logits(
    team, api, make_model_job, put_artifact, finish_sent, tmp_path
):
    """The whole path a user takes: a job's GPT export registered, downloaded as the
    archive, unpacked, loaded by Hugging Face: the engine's logits to 1e-4."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")  # a dev dependency (pyproject)
    from controlplane.registry.services import version_register
    from engine.models.gpt import GPT, GPTConfig
    from engine.train.export import export_model

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=16)).eval()
    exported = export_model(model, tmp_path / "export")
    (exported / "tokenizer.json").write_text('{"kind": "char"}')
    job = make_model_job("pretrain", files=False)
    for path in sorted(exported.iterdir()):
        put_artifact(job, f"model/{path.name}", path.read_bytes())
    version = version_register(project=team.project, actor=team.engineer, job=job, model_name="gpt")
    finish_sent()
    version.refresh_from_db()
    assert version.state == "ready", version.refused_reason

    response = api(team.viewer).get(
        f"/api/v1/projects/{team.project.pk}/models/gpt/versions/1/archive/"
    )
    assert response.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(_streamed(response))) as tar:
        tar.extractall(tmp_path / "download", filter="data")
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "download" / "gpt-v1").eval()
    idx = torch.randint(0, 50, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(hf(input_ids=idx).logits, model(idx)[0], rtol=0, atol=1e-4)
