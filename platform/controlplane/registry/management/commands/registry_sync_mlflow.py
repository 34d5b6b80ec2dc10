from django.core.management.base import BaseCommand, CommandError

from controlplane.projects.selectors import project_named
from controlplane.registry.mlflow_sync import due_models, sync_model
from controlplane.registry.models import RegisteredModel


class Command(BaseCommand):
    help = (
        "Mirror registered models into MLflow's Model Registry now (what the control "
        "worker's beat does): one model, every model of a project, or every model due."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", help="project id or slug")
        parser.add_argument("--model", help="model name (with --project)")

    def handle(self, *args, project=None, model=None, **options):
        if model and not project:
            raise CommandError("--model needs --project (names are per project)")
        if project:
            found = project_named(project)
            if found is None:
                raise CommandError(f"no project '{project}'")
            models = RegisteredModel.objects.filter(project=found)
            if model:
                models = models.filter(name=model)
                if not models.exists():
                    raise CommandError(f"no model '{model}' in project '{project}'")
        else:
            models = due_models()
        failed = 0
        for registered in list(models):
            outcome = sync_model(registered.pk)
            registered.refresh_from_db()
            line = f"{registered.project.slug}/{registered.name}: {outcome}"
            if outcome == "failed":
                failed += 1
                self.stdout.write(self.style.ERROR(line) + f" ({registered.mlflow_error})")
            else:
                self.stdout.write(self.style.SUCCESS(line))
        if failed:
            raise CommandError(f"{failed} model(s) failed to sync; the beat retries them")
