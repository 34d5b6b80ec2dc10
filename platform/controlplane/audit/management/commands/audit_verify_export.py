"""`manage.py audit_verify_export FILE`: the offline verifier, without touching the database."""

from django.core.management.base import BaseCommand, CommandError

from controlplane.audit.verify import main


class Command(BaseCommand):
    help = (
        "Verify an audit chain export (JSONL) offline: hashes, links, header and anchors. "
        "Reads only the file; the same as `python -m controlplane.audit.verify FILE`."
    )
    requires_system_checks: list[str] = []
    requires_migrations_checks = False

    def add_arguments(self, parser):
        parser.add_argument("export", help="the .jsonl file from the audit export")
        parser.add_argument("--anchor-key", help="AUDIT_ANCHOR_KEY, to check the signatures")

    def handle(self, *args, export, anchor_key=None, **options):
        argv = [export] + (["--anchor-key", anchor_key] if anchor_key else [])
        code = main(argv)
        if code:
            raise CommandError("the export does not verify", returncode=code)
