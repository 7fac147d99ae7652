import pytest
from cryptography.fernet import Fernet
from django.core.management import CommandError, call_command

from sync import crypto
from sync.models import MailAccount

pytestmark = pytest.mark.django_db


def test_it_re_encrypts_every_secret_with_the_newest_key(settings, user, make_account):
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [old]
    crypto.reset_keys()
    account = make_account(user, "a@gmx.de", secret_encrypted=crypto.encrypt_json({"password": "p1"}))
    settings.ENCRYPTION_KEYS = [new, old]
    call_command("rotate_encryption_keys")
    settings.ENCRYPTION_KEYS = [new]  # the old key is gone now
    crypto.reset_keys()
    try:
        assert crypto.decrypt_json(MailAccount.objects.get(pk=account.pk).secret_encrypted) == {"password": "p1"}
    finally:
        crypto.reset_keys()


def test_it_reports_secrets_no_key_can_read(settings, user, make_account):
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    crypto.reset_keys()
    make_account(user, "b@gmx.de", secret_encrypted=crypto.encrypt_json({"password": "p"}))
    settings.ENCRYPTION_KEYS = [Fernet.generate_key().decode()]
    try:
        with pytest.raises(CommandError, match="could not be decrypted"):
            call_command("rotate_encryption_keys")
    finally:
        crypto.reset_keys()
