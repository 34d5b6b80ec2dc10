"""compose.yaml as docker-compose resolves it: services, health checks, GPU, who gets what.

Runs `docker-compose config` (no engine needed); skipped only where the binary is missing.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = shutil.which("docker-compose")

pytestmark = pytest.mark.skipif(COMPOSE is None, reason="docker-compose is not installed")

SERVICES = {
    "postgres",
    "redis",
    "minio",
    "minio-init",
    "mlflow",
    "migrate",
    "web",
    "control-worker",
    "cpu-worker",
    "gpu-worker",
    "serve",
}
LONG_RUNNING_WITH_HEALTHCHECK = {"postgres", "redis", "minio", "mlflow", "web", "serve"}
WORKERS = {"cpu-worker", "gpu-worker"}


@pytest.fixture(scope="module")
def config() -> dict:
    # A bare environment: the developer's DEBUG or POSTGRES_PASSWORD must not leak in.
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    result = subprocess.run(
        [COMPOSE, "-f", str(ROOT / "compose.yaml"), "config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


@pytest.fixture(scope="module")
def services(config) -> dict:
    return config["services"]


def _command(service: dict) -> str:
    command = service.get("command", [])
    return command if isinstance(command, str) else " ".join(command)


def _healthcheck(service: dict) -> str:
    test = service["healthcheck"]["test"]
    return test if isinstance(test, str) else " ".join(test)


def test_every_service_is_there(services):
    assert set(services) == SERVICES


def test_long_running_services_have_health_checks(services):
    for name in LONG_RUNNING_WITH_HEALTHCHECK:
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    assert "pg_isready" in _healthcheck(services["postgres"])
    assert "redis-cli ping" in _healthcheck(services["redis"])
    assert "mc ready local" in _healthcheck(services["minio"])
    assert "/health'" in _healthcheck(services["mlflow"])
    assert "/healthz" in _healthcheck(services["web"])
    assert "127.0.0.1:8100/healthz" in _healthcheck(services["serve"])


def test_services_wait_for_healthy_or_finished_dependencies(services):
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            condition = rule["condition"]
            if condition == "service_healthy":
                assert "healthcheck" in services[dependency], f"{name} waits on {dependency}"
            else:
                assert condition == "service_completed_successfully", (name, dependency)
                assert services[dependency].get("restart") == "no", dependency
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    # Only after the migrations may the platform's processes touch the database.
    for name in ("web", "control-worker"):
        migrate = services[name]["depends_on"]["migrate"]["condition"]
        assert migrate == "service_completed_successfully", name
    for worker in WORKERS:
        assert services[worker]["depends_on"]["redis"]["condition"] == "service_healthy"


def test_gpu_worker_reserves_every_nvidia_gpu(services):
    devices = services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    assert "-Q gpu" in _command(services["gpu-worker"])
    assert "deploy" not in services["cpu-worker"]


def test_workers_never_hold_database_credentials(services):
    for worker in WORKERS:
        env = services[worker]["environment"]
        assert "DATABASE_URL" not in env
        assert not any("postgres" in str(value) for value in env.values()), worker
        assert "postgres" not in services[worker].get("depends_on", {})
        assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379")
        assert env["OBJECT_STORE_ENDPOINT"] == "minio:9000"
        assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    for platform_side in ("web", "control-worker"):
        assert services[platform_side]["environment"]["DATABASE_URL"].startswith("postgres://")


def test_every_variable_given_to_the_app_is_one_it_reads(services):
    readers = [
        ROOT / "workers" / "config.py",
        ROOT / "platform" / "controlplane" / "settings.py",
        ROOT / "platform" / "controlplane" / "gunicorn_conf.py",
        ROOT / "workers" / "serve" / "__main__.py",
        ROOT / "workers" / "serve" / "secret.py",
        ROOT / "workers" / "registry.py",
    ]
    read_by_app = "".join(path.read_text() for path in readers)
    for name in ("migrate", "web", "control-worker", "cpu-worker", "gpu-worker", "serve"):
        for variable in services[name]["environment"]:
            assert f'"{variable}"' in read_by_app, (
                f"{name} sets {variable}, which nothing reads (a typo?)"
            )


def _module_exists(module: str) -> bool:
    # pytest puts platform/ and the repository root on sys.path, as the image's PYTHONPATH does.
    return importlib.util.find_spec(module) is not None


def test_commands_name_modules_that_exist(services):
    web = _command(services["web"])
    assert "migrate" not in web  # the app role could not run them: the migrate service does
    assert _command(services["migrate"]) == "python manage.py migrate --noinput"
    gunicorn = re.search(r"gunicorn -c python:(\S+) (\S+)", web)
    assert gunicorn, web
    assert _module_exists(gunicorn.group(1)) and _module_exists(gunicorn.group(2))
    assert gunicorn.group(2) == "controlplane.wsgi"
    expected_queues = {"control-worker": "control", "cpu-worker": "cpu", "gpu-worker": "gpu"}
    for name, queue in expected_queues.items():
        command = _command(services[name])
        app = re.search(r"celery -A (\S+) worker", command)
        assert app, f"{name} does not start a celery worker: {command}"
        assert _module_exists(app.group(1)), f"{name} names missing module {app.group(1)}"
        assert f"-Q {queue}" in command
    assert "controlplane.celery_app" in _command(services["control-worker"])
    assert " -B" in _command(services["control-worker"])  # the reaper's and anchors' beat
    for worker in WORKERS:
        assert "workers.celery_app" in _command(services[worker])


def test_mlflow_keeps_runs_in_postgres_and_artifacts_in_minio(services):
    mlflow = services["mlflow"]
    command = _command(mlflow)
    assert "--backend-store-uri" in command and "@postgres:5432/mlflow" in command
    assert '--artifacts-destination "s3://' in command
    assert mlflow["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert mlflow["build"]["context"].endswith("compose/mlflow")
    init = (ROOT / "compose" / "postgres-init" / "10-mlflow-database.sh").read_text()
    assert "CREATE DATABASE mlflow" in init
    mounts = [str(volume) for volume in services["postgres"]["volumes"]]
    assert any("compose/postgres-init:/docker-entrypoint-initdb.d" in m for m in mounts), mounts


def test_bucket_is_created_with_versioning_on(services):
    command = _command(services["minio-init"])
    assert "mc mb --ignore-existing" in command
    assert "mc version enable" in command


def test_images_are_pinned(services):
    for name, service in services.items():
        image = service.get("image", "")
        if "build" in service:
            continue
        repository, _, tag = image.rpartition(":")
        assert repository and tag and tag != "latest", f"{name} image {image!r} is not pinned"
    assert services["minio"]["image"].split(":")[-1].startswith("RELEASE.")
    assert services["minio-init"]["image"].split(":")[-1].startswith("RELEASE.")
    assert services["postgres"]["image"].startswith("postgres:16")
    mlflow_dockerfile = (ROOT / "compose" / "mlflow" / "Dockerfile").read_text()
    assert re.search(r"ARG MLFLOW_VERSION=\d+\.\d+\.\d+", mlflow_dockerfile)


def test_dockerfile_installs_cpu_torch_and_runs_as_a_user():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM python:3.11-slim" in dockerfile
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    assert '"torch==2.13.0"' in dockerfile
    assert "collectstatic --noinput" in dockerfile
    assert re.search(r"^USER app$", dockerfile, re.MULTILINE)
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "var", ".git"} <= set(ignored)


def _database_user(service: dict) -> str:
    return re.match(r"postgres://([^:@]+)", service["environment"]["DATABASE_URL"]).group(1)


def test_the_app_logs_in_with_a_role_that_owns_no_table(services):
    """Issue 11: the application itself must not be able to drop or disable audit triggers."""
    assert _database_user(services["migrate"]) == "controlplane_owner"
    for name in ("web", "control-worker"):
        assert _database_user(services[name]) == "controlplane_app", name
    postgres = services["postgres"]["environment"]
    assert postgres["POSTGRES_USER"] == "postgres"  # the superuser: nobody's DATABASE_URL
    assert {"DB_OWNER_PASSWORD", "DB_APP_PASSWORD"} <= set(postgres)
    init = (ROOT / "compose" / "postgres-init" / "20-controlplane-roles.sh").read_text()
    assert "-v owner=controlplane_owner" in init and "-v app=controlplane_app" in init
    assert "/docker-entrypoint-initdb.d/roles/controlplane-roles.sql" in init
    sql = (ROOT / "compose" / "postgres-init" / "roles" / "controlplane-roles.sql").read_text()
    grants = re.findall(r"GRANT ([A-Z, ]+) ON TABLES TO", sql)
    assert grants == ["SELECT, INSERT, UPDATE, DELETE"]  # no TRUNCATE, TRIGGER, REFERENCES
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE :"owner"' in sql


def test_the_platform_store_user_cannot_delete_audit_anchors(services):
    import json

    minio_init = services["minio-init"]
    command = _command(minio_init)
    # `config` keeps the escaped "$$" of the file (compose v1 and v2 alike).
    assert re.search(r'mc admin user add store "\$+APP_ACCESS_KEY" "\$+APP_SECRET_KEY"', command)
    assert "mc admin policy attach store controlplane-app" in command
    mounts = [str(volume) for volume in minio_init["volumes"]]
    assert any("compose/minio/controlplane-app-policy.json:/policies" in m for m in mounts)
    app_key = minio_init["environment"]["APP_ACCESS_KEY"]
    for name in ("web", "control-worker", "cpu-worker", "gpu-worker", "serve"):
        assert services[name]["environment"]["OBJECT_STORE_ACCESS_KEY"] == app_key, name
    assert app_key != minio_init["environment"]["MINIO_ROOT_USER"]
    policy = json.loads((ROOT / "compose" / "minio" / "controlplane-app-policy.json").read_text())
    denied = {
        action
        for statement in policy["Statement"]
        if statement["Effect"] == "Deny"
        for action in statement["Action"]
        if any(r.endswith("/system/audit-anchors/*") for r in statement["Resource"])
    }
    assert {"s3:DeleteObject", "s3:DeleteObjectVersion"} <= denied


def test_the_serve_node_holds_no_database_credentials_and_shares_the_node_secret(services):
    serve = services["serve"]
    assert _command(serve) == "python -m workers.serve"
    assert _module_exists("workers.serve.__main__")
    env = serve["environment"]
    assert "DATABASE_URL" not in env
    assert not any("postgres" in str(value) for value in env.values())
    assert "postgres" not in serve.get("depends_on", {})
    assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379")
    assert env["OBJECT_STORE_ENDPOINT"] == "minio:9000"
    assert env["SERVE_PLATFORM_URL"] == "http://web:8000"
    assert env["SERVE_LISTEN"] == "0.0.0.0:8100"
    assert env["SERVE_PUBLIC_URL"] == "http://serve:8100"
    # Nodes and the platform authenticate each other with one shared secret.
    assert env["SERVE_NODE_SECRET"] == services["web"]["environment"]["SERVE_NODE_SECRET"]
    assert env["SERVE_NODE_SECRET"]
    assert [str(port["target"]) for port in serve["ports"]] == ["8100"]
    devices = serve["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert serve["depends_on"]["web"]["condition"] == "service_healthy"
    # Django must accept the Host the node calls it by.
    assert "web" in services["web"]["environment"]["ALLOWED_HOSTS"].split(",")
