import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    # Apart from 0003: PostgreSQL refuses to alter a table with pending deferred
    # constraint checks from the data migration's updates in the same transaction.
    dependencies = [("projects", "0003_project_organisation")]

    operations = [
        migrations.AlterField(
            model_name="project",
            name="organisation",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT,
                related_name="projects",
                to="orgs.organisation",
            ),
        ),
    ]
