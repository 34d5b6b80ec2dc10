"""Configuration comes from the environment; bad values are named, production passes --deploy."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PRODUCTION = {
    "DEBUG": "0",
    "SECRET_KEY": "s" * 30 + "-production-secret-for-the-check-only-0123456789",
    "ALLOWED_HOSTS": "controlplane.example.org",
    "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/controlplane",
    "CELERY_BROKER_URL": "redis://127.0.0.1:6379/15",
    "CACHE_URL": "redis://127.0.0.1:6379/14",
    "AUDIT_ANCHOR_KEY": "a" * 20 + "-audit-anchor-key-for-the-check-only",
}


def _manage(tmp_path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {"PATH": "/usr/bin:/bin", "CONTROLPLANE_DATA_DIR": str(tmp_path)}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**base, **env},
        timeout=120,
    )


@pytest.mark.slow
def test_production_settings_pass_the_deploy_check(tmp_path):
    result = _manage(tmp_path, "check", "--deploy", "--fail-level", "WARNING", **PRODUCTION)
    assert result.returncode == 0, result.stdout + result.stderr


def test_production_refuses_a_weak_secret_key(tmp_path):
    result = _manage(tmp_path, "check", **{**PRODUCTION, "SECRET_KEY": "short"})
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr and "Traceback" not in result.stderr


def test_bad_values_name_the_variable(tmp_path):
    for name, value in [
        ("DEBUG", "maybe"),
        ("JOB_LEASE_SECONDS", "soon"),
        ("CACHE_URL", "memcached://x"),
    ]:
        result = _manage(tmp_path, "check", **{name: value})
        assert result.returncode != 0, name
        assert name in result.stderr and "Traceback" not in result.stderr, result.stderr
