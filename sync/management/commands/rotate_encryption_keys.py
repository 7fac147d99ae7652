"""Re-encrypt every stored secret with the newest key of ENCRYPTION_KEYS.

Rotation: put the new key first in ENCRYPTION_KEYS (keep the old ones after
it), run this command, then drop the old keys. Rows are rewritten one by one
in short transactions, so the portal keeps running meanwhile.
"""

from django.apps import apps
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from sync import crypto

# (model, field) pairs that hold MultiFernet ciphertext.
ENCRYPTED_FIELDS = [("sync.MailAccount", "secret_encrypted"), ("migration.Migration", "secret_encrypted")]


class Command(BaseCommand):
    help = "Re-encrypt stored credentials and tokens with the newest encryption key."

    def handle(self, *args, **options):
        crypto.reset_keys()
        total, unreadable = 0, 0
        for label, field in _fields():
            model = apps.get_model(label)
            for pk in model.objects.exclude(**{field: ""}).values_list("pk", flat=True).iterator():
                with transaction.atomic():
                    row = model.objects.select_for_update().filter(pk=pk).values_list(field, flat=True).first()
                    if not row:
                        continue
                    try:
                        model.objects.filter(pk=pk).update(**{field: crypto.rotate(row)})
                    except crypto.SecretUnreadable:
                        unreadable += 1
                        continue
                total += 1
        self.stdout.write(f"re-encrypted {total} secrets")
        if unreadable:
            raise CommandError(f"{unreadable} secrets could not be decrypted with any configured key")


def _fields():
    found = list(ENCRYPTED_FIELDS)
    # Token caches added by provider packages follow the same naming rule.
    for model in apps.get_models():
        for f in model._meta.get_fields():
            name = getattr(f, "name", "")
            key = (model._meta.label, name)
            if name.endswith("_encrypted") and key not in found:
                found.append(key)
    return found
