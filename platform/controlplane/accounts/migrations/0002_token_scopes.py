"""Token scopes, the parent of a minted token, and the failed-authentication counters.

Tokens made before scopes existed get api:read + api:write (everything they could do,
except managing tokens, which now needs a session or tokens:write), and an expiry no
later than API_TOKEN_MAX_DAYS from the migration (tokens without one lived forever).
"""

from datetime import timedelta

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models
from django.db.models import Q
from django.utils import timezone

import controlplane.accounts.models

# Frozen here: the model's default may change later, what old tokens got must not.
MIGRATED_SCOPES = ["api:read", "api:write"]


def migrate_existing_tokens(apps, schema_editor):
    ApiToken = apps.get_model("accounts", "ApiToken")
    if schema_editor.connection.vendor == "postgresql":
        # Updated rows would otherwise leave deferred FK trigger events pending, and
        # PostgreSQL refuses the CREATE INDEX that Django runs at the end of the migration.
        schema_editor.execute("SET CONSTRAINTS ALL IMMEDIATE")
    latest = timezone.now() + timedelta(days=getattr(settings, "API_TOKEN_MAX_DAYS", 365))
    ApiToken.objects.update(scopes=MIGRATED_SCOPES)
    ApiToken.objects.filter(Q(expires_at__isnull=True) | Q(expires_at__gt=latest)).update(
        expires_at=latest
    )


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0001_initial"),
    ]

    operations = [
        migrations.AddField(
            model_name="apitoken",
            name="parent",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.CASCADE,
                related_name="children",
                to="accounts.apitoken",
            ),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="scopes",
            field=models.JSONField(default=controlplane.accounts.models.default_scopes),
        ),
        migrations.CreateModel(
            name="AuthFailureCounter",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "kind",
                    models.CharField(
                        choices=[("account", "Account"), ("address", "Address")], max_length=10
                    ),
                ),
                ("key_hash", models.CharField(max_length=64)),
                ("failures", models.PositiveIntegerField(default=0)),
                ("window_started_at", models.DateTimeField()),
                ("lockouts", models.PositiveIntegerField(default=0)),
                ("locked_until", models.DateTimeField(blank=True, null=True)),
                ("updated_at", models.DateTimeField()),
            ],
            options={
                "indexes": [models.Index(fields=["updated_at"], name="auth_failure_updated")],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("kind", "key_hash"), name="auth_failure_key_unique"
                    )
                ],
            },
        ),
        migrations.RunPython(migrate_existing_tokens, migrations.RunPython.noop),
    ]
