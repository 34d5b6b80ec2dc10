"""A covering index for metric charts on PostgreSQL: (job, key, step) INCLUDE (value).

Charts average a run's series in the database; with the value in the index that is an
index-only scan instead of a heap visit per point (a million-point run draws in
milliseconds). SQLite has no INCLUDE; its unique (job, key, step) index serves there.
"""

from django.db import migrations

CREATE = (
    "CREATE INDEX IF NOT EXISTS jobs_metric_series_cover "
    "ON jobs_jobmetric (job_id, key, step) INCLUDE (value)"
)
DROP = "DROP INDEX IF EXISTS jobs_metric_series_cover"


def _on_postgres(sql: str):
    def run(apps, schema_editor):
        if schema_editor.connection.vendor == "postgresql":
            schema_editor.execute(sql, params=None)

    return run


class Migration(migrations.Migration):
    dependencies = [("jobs", "0002_job_experiment_job_tracking_run_id")]

    operations = [migrations.RunPython(_on_postgres(CREATE), _on_postgres(DROP))]
