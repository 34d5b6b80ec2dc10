"""Event delivery: per-attempt event streams (gap detection) and parked dead letters.

Streams of attempts that already have events are filled from JobEventRecord, so a job
running across the upgrade does not look as if it had lost every event before it.
"""

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import Count, Max


def backfill_streams(apps, schema_editor):
    record = apps.get_model("jobs", "JobEventRecord")
    stream = apps.get_model("jobs", "JobEventStream")
    per_attempt = (
        record.objects.values("job_id", "attempt")
        .annotate(max_seq=Max("seq"), count=Count("id"))
        .order_by()
    )
    stream.objects.bulk_create(
        (
            stream(
                job_id=row["job_id"],
                attempt=row["attempt"],
                max_seq=row["max_seq"],
                applied_count=row["count"],
            )
            for row in per_attempt.iterator()
        ),
        batch_size=1000,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0003_metric_series_covering_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="DeadLetterEvent",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("attempt", models.PositiveIntegerField(blank=True, null=True)),
                ("seq", models.PositiveIntegerField(blank=True, null=True)),
                ("event", models.JSONField()),
                ("error", models.TextField()),
                ("first_seen_at", models.DateTimeField(auto_now_add=True)),
                ("last_seen_at", models.DateTimeField(auto_now=True)),
                ("attempts", models.PositiveIntegerField(default=1)),
                ("resolved_at", models.DateTimeField(blank=True, null=True)),
                (
                    "job",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="dead_letters",
                        to="jobs.job",
                    ),
                ),
            ],
            options={
                "ordering": ["-last_seen_at", "-id"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("job", "attempt", "seq"), name="park_event_once"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="JobEventStream",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("attempt", models.PositiveIntegerField()),
                ("max_seq", models.IntegerField(default=-1)),
                ("applied_count", models.PositiveIntegerField(default=0)),
                ("gap_since", models.DateTimeField(blank=True, null=True)),
                ("resend_requested_at", models.DateTimeField(blank=True, null=True)),
                ("resend_requests", models.PositiveIntegerField(default=0)),
                ("outputs_reconciled_at", models.DateTimeField(blank=True, null=True)),
                ("waiting_finish_seq", models.PositiveIntegerField(blank=True, null=True)),
                (
                    "job",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="event_streams",
                        to="jobs.job",
                    ),
                ),
            ],
            options={
                "ordering": ["job_id", "attempt"],
                "constraints": [
                    models.UniqueConstraint(
                        fields=("job", "attempt"), name="one_stream_per_attempt"
                    )
                ],
            },
        ),
        migrations.RunPython(backfill_streams, migrations.RunPython.noop),
    ]
