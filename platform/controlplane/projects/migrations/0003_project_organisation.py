"""Projects move under organisations: every existing project into the default one.

Its members become members of the organisation; staff users its admins (they administer
the platform already). A fresh database gets no default organisation here: the first
project made without one creates it (orgs.services.default_organisation)."""

import django.db.models.deletion
from django.db import migrations, models

DEFAULT_ORG_SLUG = "default"


def into_default_organisation(apps, schema_editor):
    Project = apps.get_model("projects", "Project")
    if not Project.objects.exists():
        return
    Organisation = apps.get_model("orgs", "Organisation")
    OrgMembership = apps.get_model("orgs", "OrgMembership")
    Membership = apps.get_model("projects", "Membership")
    User = apps.get_model("auth", "User")
    org, _ = Organisation.objects.get_or_create(
        slug=DEFAULT_ORG_SLUG, defaults={"name": "Default organisation"}
    )
    Project.objects.filter(organisation__isnull=True).update(organisation=org)
    admins = set(User.objects.filter(is_staff=True).values_list("pk", flat=True))
    members = set(Membership.objects.values_list("user_id", flat=True)) | admins
    OrgMembership.objects.bulk_create(
        [
            OrgMembership(organisation=org, user_id=pk, role="admin" if pk in admins else "member")
            for pk in sorted(members)
        ],
        ignore_conflicts=True,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("projects", "0002_project_subject_key_generation"),
        ("orgs", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="project",
            name="organisation",
            field=models.ForeignKey(
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="projects",
                to="orgs.organisation",
            ),
        ),
        migrations.RunPython(into_default_organisation, migrations.RunPython.noop),
    ]
