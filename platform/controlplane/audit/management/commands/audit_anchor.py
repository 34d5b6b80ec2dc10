from django.core.management.base import BaseCommand, CommandError

from controlplane.audit.anchors import audit_anchor_chain, audit_anchor_chains
from controlplane.audit.models import AuditChain
from controlplane.projects.selectors import project_named


class Command(BaseCommand):
    help = (
        "Sign the current head of the audit chains and write it to the object store's "
        "write-once prefix (system/audit-anchors/); heads already anchored are skipped."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", help="project id or slug (default: every chain)")

    def handle(self, *args, project=None, **options):
        if project:
            found = project_named(project)
            chain = AuditChain.objects.filter(project=found).first() if found else None
            if chain is None:
                raise CommandError(f"no audit chain for project '{project}'")
            anchor = audit_anchor_chain(chain=chain)
            written = [anchor] if anchor is not None else []
        else:
            written = audit_anchor_chains()
        for anchor in written:
            self.stdout.write(
                self.style.SUCCESS(f"{anchor.chain.scope}: anchored #{anchor.length}")
                + f" -> {anchor.object_key}"
            )
        if not written:
            self.stdout.write("every chain head is already anchored")
