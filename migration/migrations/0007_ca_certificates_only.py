"""Keys pasted with a CA certificate before the Exchange form checked it: a migration's
connection (shown to staff) keeps the certificates only.

A frozen copy of sync.certificates' rule: a migration must not change when that module does.
"""

import re

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.db import migrations

PRIVATE_KEY = re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----", re.IGNORECASE)


def certificates_only(text: str) -> str:
    """The certificates in text, re-encoded; "" when none can be read."""
    try:
        certificates = x509.load_pem_x509_certificates(text.encode("utf-8", "replace"))
    except ValueError:
        return ""
    return "".join(certificate.public_bytes(Encoding.PEM).decode("ascii") for certificate in certificates)


def drop_private_keys(apps, schema_editor):
    MigrationRow = apps.get_model("migration", "Migration")
    for row in list(MigrationRow.objects.filter(connection__ca_pem__icontains="PRIVATE KEY").only("pk", "connection")):
        text = str(row.connection.get("ca_pem") or "")
        if PRIVATE_KEY.search(text):
            MigrationRow.objects.filter(pk=row.pk).update(connection={**row.connection, "ca_pem": certificates_only(text)})


class Migration(migrations.Migration):

    dependencies = [
        ("migration", "0006_campaign_accounts_reminders"),
    ]

    operations = [
        migrations.RunPython(drop_private_keys, migrations.RunPython.noop),
    ]
