"""Credentials at rest: MultiFernet, key rotation, nothing readable in the database."""

import pytest
from cryptography.fernet import Fernet
from django.db import connection

from sync import crypto


@pytest.fixture
def keys(settings):
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    settings.ENCRYPTION_KEYS = [first]
    crypto.reset_keys()
    yield first, second
    crypto.reset_keys()


def test_it_round_trips_and_hides_the_plaintext(keys):
    token = crypto.encrypt_json({"password": "Sommer2025!"})
    assert "Sommer2025" not in token
    assert crypto.decrypt_json(token) == {"password": "Sommer2025!"}


def test_it_reads_old_tokens_after_a_key_rotation(keys, settings):
    first, second = keys
    old = crypto.encrypt_json({"password": "alt"})
    settings.ENCRYPTION_KEYS = [second, first]
    crypto.reset_keys()
    assert crypto.decrypt_json(old) == {"password": "alt"}
    rotated = crypto.rotate(old)
    settings.ENCRYPTION_KEYS = [second]
    crypto.reset_keys()
    assert crypto.decrypt_json(rotated) == {"password": "alt"}
    with pytest.raises(crypto.SecretUnreadable):
        crypto.decrypt_json(old)


def test_it_refuses_a_malformed_key(settings):
    from django.core.exceptions import ImproperlyConfigured

    settings.ENCRYPTION_KEYS = ["not-a-key"]
    crypto.reset_keys()
    try:
        with pytest.raises(ImproperlyConfigured, match="ENCRYPTION_KEYS"):
            crypto.encrypt_json({})
    finally:
        crypto.reset_keys()


@pytest.mark.django_db
def test_it_stores_no_password_in_any_column(keys, imap_account, mailbox):
    password = mailbox[1]
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM sync_mailaccount WHERE id = %s", [imap_account.pk])
        row = cursor.fetchone()
    assert password not in " ".join(str(value) for value in row)
