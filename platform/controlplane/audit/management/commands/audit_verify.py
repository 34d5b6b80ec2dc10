from django.core.management.base import BaseCommand, CommandError

from controlplane.audit.services import audit_verify
from controlplane.audit.triggers import audit_trigger_problems
from controlplane.projects.selectors import project_named


class Command(BaseCommand):
    help = (
        "Recompute the audit hash chains, check them against the signed heads anchored in "
        "the object store, and check that the database triggers guarding them are in place."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", help="project id or slug (default: every chain)")

    def handle(self, *args, project=None, **options):
        if project:
            found = project_named(project)
            if found is None:
                raise CommandError(f"no project with id or slug '{project}'")
            results = audit_verify(found)
        else:
            results = audit_verify(all_chains=True)
        for result in results:
            style = self.style.SUCCESS if result.ok else self.style.ERROR
            self.stdout.write(style(result.describe()))
        problems = audit_trigger_problems()
        for problem in problems:
            self.stdout.write(self.style.ERROR(f"database: {problem}"))
        if not problems:
            self.stdout.write(self.style.SUCCESS("database: every audit trigger is in place"))
        if problems or not all(result.ok for result in results):
            raise CommandError("audit chain verification failed")
