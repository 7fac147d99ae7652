"""Keys pasted with a CA certificate before the field was checked: keep the certificates only.

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
    MailAccount = apps.get_model("sync", "MailAccount")
    rows = MailAccount.objects.filter(tls_ca_pem__icontains="PRIVATE KEY").values_list("pk", "tls_ca_pem")
    for pk, text in list(rows):
        if PRIVATE_KEY.search(text):
            MailAccount.objects.filter(pk=pk).update(tls_ca_pem=certificates_only(text))


class Migration(migrations.Migration):

    dependencies = [
        ("sync", "0007_graph_slots"),
    ]

    operations = [
        migrations.RunPython(drop_private_keys, migrations.RunPython.noop),
    ]
