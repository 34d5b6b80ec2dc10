"""Upload bodies spool into a folder of their own, and what a killed worker left is removed.

The fault: a SIGKILL of gunicorn mid-upload left a temporary file (up to the upload limit)
in TMPDIR, and nothing ever removed it.
"""

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

ROOT = Path(__file__).resolve().parents[3]


def test_uploads_spool_into_the_data_dirs_upload_folder(team, api, monkeypatch, settings):
    from controlplane.uploads import services as upload_services

    seen = []
    original = upload_services.upload_create

    def spy(**kwargs):
        seen.append(Path(kwargs["stream"].name))
        return original(**kwargs)

    monkeypatch.setattr(upload_services, "upload_create", spy)
    big = b"x" * (settings.FILE_UPLOAD_MAX_MEMORY_SIZE + 1)
    response = api(team.engineer).post(
        f"/api/v1/projects/{team.project.pk}/uploads/",
        {"file": SimpleUploadedFile("big.bin", big)},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    (spooled,) = seen
    assert spooled.parent == Path(settings.FILE_UPLOAD_TEMP_DIR)
    assert Path(settings.FILE_UPLOAD_TEMP_DIR).is_relative_to(settings.DATA_DIR)
    assert not spooled.exists()  # a request that ends removes its own file


@pytest.fixture
def temp_dir(tmp_path, settings):
    settings.FILE_UPLOAD_TEMP_DIR = str(tmp_path / "uploads-tmp")
    from controlplane.uploads.tempfiles import upload_temp_dir_ensure

    return upload_temp_dir_ensure()


def _file(folder: Path, name: str, age_seconds: float = 0) -> Path:
    path = folder / name
    path.write_bytes(b"partial upload")
    then = time.time() - age_seconds
    os.utime(path, (then, then))
    return path


def test_the_reaper_removes_old_files_nobody_holds(temp_dir):
    from controlplane.uploads.tempfiles import upload_temp_files_sweep

    old = _file(temp_dir, "old.upload", age_seconds=2 * 3600)
    young = _file(temp_dir, "young.upload")
    held = _file(temp_dir, "held.upload", age_seconds=2 * 3600)
    with held.open("rb"):  # a live upload (this process holds it) is never touched
        assert upload_temp_files_sweep() == [old]
    assert young.exists() and held.exists()


def test_at_start_every_file_nobody_holds_goes(temp_dir):
    from controlplane.uploads.tempfiles import upload_temp_files_sweep

    young = _file(temp_dir, "young.upload")
    held = _file(temp_dir, "held.upload")
    with held.open("rb"):
        assert upload_temp_files_sweep(at_start=True) == [young]
    assert held.exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("timed out")


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_gunicorn_worker_killed_mid_upload_leaves_nothing_after_restart(team, tmp_path):
    """Real gunicorn, a real half-sent upload, SIGKILL, restart: the temp file is gone."""
    from django.db import connection

    from controlplane.accounts.services import api_token_create

    _token, raw = api_token_create(user=team.engineer, name="kill test")
    data_dir = tmp_path / "data"
    db = connection.settings_dict
    env = {
        **os.environ,
        "PYTHONPATH": f"{ROOT / 'platform'}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "controlplane.settings",
        "CONTROLPLANE_DATA_DIR": str(data_dir),
        "OBJECT_STORE_ROOT": str(tmp_path / "objects"),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "TMPDIR": str(tmp_path / "system-tmp"),
    }
    (tmp_path / "system-tmp").mkdir()
    spool = data_dir / "tmp" / "uploads"

    def start_gunicorn(port: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
            + ["--timeout", "60", "controlplane.wsgi"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    port = _free_port()
    server = start_gunicorn(port)
    try:
        sock = _wait_for(lambda: _connect(port))
        boundary = "killtestboundary"
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
            'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        total = len(head) + 20 * 1024 * 1024
        sock.sendall(
            (
                f"POST /api/v1/projects/{team.project.pk}/uploads/ HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAuthorization: Bearer {raw}\r\n"
                f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
                f"Content-Length: {total}\r\n\r\n"
            ).encode()
            + head
            + b"x" * (6 * 1024 * 1024)  # past the in-memory limit: now spooling to disk
        )
        spooled = _wait_for(lambda: list(spool.glob("*")))
        assert list((tmp_path / "system-tmp").iterdir()) == []  # not in TMPDIR any more
        os.killpg(server.pid, signal.SIGKILL)  # master and worker, mid-upload
        server.wait(timeout=10)
        sock.close()
        assert all(p.exists() for p in spooled)  # what the fault left behind

        # The new worker sweeps the folder when Django starts in it.
        server = start_gunicorn(port)
        _wait_for(lambda: not any(p.exists() for p in spooled))
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=10)


def _connect(port: int):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return None


def test_temp_dir_is_not_the_system_tmp(settings):
    assert Path(settings.FILE_UPLOAD_TEMP_DIR) != Path(tempfile.gettempdir())
