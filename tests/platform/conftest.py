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


@pytest.fixture
def make_ready_version(db):
    """`make_ready_version(dataset, user, {"name": bytes})`: a version uploaded part by part."""
    import hashlib

    from controlplane.datasets.services import (
        DeclaredFile,
        dataset_version_complete,
        dataset_version_start,
    )
    from controlplane.storage import object_store

    def make(dataset, user, files: dict[str, bytes]):
        declared = [
            DeclaredFile(n, len(b), hashlib.sha256(b).hexdigest()) for n, b in files.items()
        ]
        version, uploads = dataset_version_start(dataset=dataset, actor=user, files=declared)
        parts = {}
        for upload in uploads:
            data = files[upload.file.name]
            etag = object_store().upload_part(
                upload.file.object_key, upload.file.upload_id, 1, io.BytesIO(data), len(data)
            )
            parts[upload.file.pk] = [(1, etag)]
        return dataset_version_complete(version=version, actor=user, parts=parts)

    return make


@pytest.fixture(autouse=True)
def _object_store_per_test(tmp_path, monkeypatch):
    """Each test gets an empty local object store: database ids restart with every test's
    rollback, and keys made from them must not meet a previous test's objects."""
    from controlplane.storage import object_store

    monkeypatch.setenv("OBJECT_STORE_ROOT", str(tmp_path / "objects"))
    object_store.cache_clear()
    yield
    object_store.cache_clear()


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server (real HTTP on loopback, tests/s3server.py), one per test module."""
    from tests.s3server import start_s3_server

    endpoint, stop = start_s3_server()
    yield endpoint
    stop()


@pytest.fixture
def s3_platform_store(s3_server, monkeypatch):
    """The platform's object store on the moto S3 server.

    moto keeps one state per process, so each test gets its own bucket.
    """
    import uuid

    from controlplane.storage import object_store
    from tests.s3server import ACCESS_KEY, SECRET_KEY

    monkeypatch.setenv("OBJECT_STORE_ENDPOINT", s3_server)
    monkeypatch.setenv("OBJECT_STORE_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("OBJECT_STORE_SECRET_KEY", SECRET_KEY)
    monkeypatch.setenv("OBJECT_STORE_BUCKET", f"platform-{uuid.uuid4().hex[:12]}")
    object_store.cache_clear()
    yield object_store()
    object_store.cache_clear()


@pytest.fixture
def run_on_worker(db):
    """Run a job's handler for real, in this process, and apply its events to the platform
    as the control worker would; returns the job as the platform then sees it."""
    from controlplane.jobs.dispatch import job_spec
    from controlplane.jobs.services import job_apply_event
    from controlplane.storage import object_store
    from workers.events import ListSink
    from workers.jobs import HANDLERS
    from workers.runtime import run_attempt

    def run(job):
        sink = ListSink()
        run_attempt(job_spec(job), sink, object_store(), HANDLERS)
        for event in sink.events:
            job_apply_event(event)
        job.refresh_from_db()
        return job

    return run


@pytest.fixture(scope="session", autouse=True)
def _test_flush_lifts_the_audit_truncate_guard():
    """Transactional tests are cleaned up with one `TRUNCATE` of every table, which the audit
    trail's statement triggers refuse (as they must in production): the test flush lifts
    the two TRUNCATE triggers for its own transaction and puts them back."""
    from django.db.backends.postgresql.operations import DatabaseOperations

    original = DatabaseOperations.sql_flush
    guards = {
        "audit_auditevent": "audit_event_no_truncate",
        "audit_auditchain": "audit_chain_no_truncate",
    }

    def sql_flush(self, style, tables, **kwargs):
        statements = original(self, style, tables, **kwargs)
        guarded = [table for table in guards if table in tables]
        if not statements or not guarded:
            return statements
        lift = [f"ALTER TABLE {table} DISABLE TRIGGER {guards[table]};" for table in guarded]
        restore = [
            f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {guards[table]};" for table in guarded
        ]
        return lift + statements + restore

    DatabaseOperations.sql_flush = sql_flush
    yield
    DatabaseOperations.sql_flush = original
