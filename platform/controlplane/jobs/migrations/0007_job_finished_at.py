# The jobs that ended lately, read by /metrics (controlplane/metrics/selectors.py) on every
# scrape, without a scan of every job ever run.

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("jobs", "0006_job_held_for"),
    ]

    operations = [
        migrations.AddIndex(
            model_name="job",
            index=models.Index(fields=["finished_at"], name="job_finished_at"),
        ),
    ]
