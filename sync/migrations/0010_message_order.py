"""The message list's order, newest first with undated mail last, read from an index.

The list orders by (received_at DESC NULLS LAST, id DESC) per account; the old
index (account, received_at DESC) sorts NULLs first on PostgreSQL, so every
view sorted all of a user's messages. Written as SQL per database: SQLite puts
NULLs last in descending order by itself and does not accept NULLS LAST in an
index.
"""

from django.db import migrations

NAME = "message_newest_first_nulls_last"


def create(apps, schema_editor):
    nulls = " NULLS LAST" if schema_editor.connection.vendor == "postgresql" else ""
    schema_editor.execute(
        f"CREATE INDEX {NAME} ON sync_syncedmessage (account_id, received_at DESC{nulls}, id DESC)")


def drop(apps, schema_editor):
    schema_editor.execute(f"DROP INDEX {NAME}")


class Migration(migrations.Migration):
    dependencies = [("sync", "0009_attempt_budget")]

    operations = [
        migrations.RemoveIndex(model_name="syncedmessage", name="message_newest_first"),
        migrations.RunPython(create, drop),
    ]
