"""Verify and handoff cost a constant number of database queries, whatever the mailbox's folder count
(a real IMAP migration on the real Dovecot; the handoff's folder rows are written in bulk)."""

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from migration import services, steps
from migration.models import Migration
from portal.devservers import make_message
from sync import crypto
from sync.imap.client import ImapSettings
from sync.models import FolderState

pytestmark = pytest.mark.django_db


def awaiting_verify(dovecot, user, make_account, folders: int) -> Migration:
    """A migration of a V2 account with `folders` folders (and V2's INBOX row) whose credentials were entered."""
    address, password = dovecot.take_mailbox()
    client = dovecot.client(address)
    client.append("INBOX", make_message(subject="im Posteingang"))
    for number in range(1, folders):
        client.create_folder(f"Ordner {number:02d}")
    client.logout()
    account = make_account(user, address, imap_host="127.0.0.1", imap_port=dovecot.tls_port, imap_security="ssl",
                           username=address, secret_encrypted=crypto.encrypt_json({"password": password}))
    FolderState.objects.create(account=account, name="INBOX")  # V2's row: updated, not duplicated
    migration = services.start_migration(user=user, account=account)
    assert steps.run_migration(migration.pk) == "awaiting_user"
    return services.submit_imap_credentials(migration=Migration.objects.get(pk=migration.pk), actor="test",
                                            server=ImapSettings("127.0.0.1", dovecot.tls_port, "ssl", address),
                                            password=password)


def handed_over(migration: Migration, folders: int) -> None:
    states = FolderState.objects.filter(account=migration.account_id)
    assert states.count() == folders
    assert states.filter(uidvalidity__isnull=False, v3_synced_at__isnull=True).count() == folders


def test_verify_and_handoff_cost_the_same_queries_at_2_and_20_folders(dovecot, mail_settings, user, make_account,
                                                                      django_assert_max_num_queries):
    small = awaiting_verify(dovecot, user, make_account, 2)
    with CaptureQueriesContext(connection) as queries:
        assert steps.run_migration(small.pk) == "done"
    handed_over(small, 2)
    per_mailbox = len(queries.captured_queries)
    assert per_mailbox <= 40

    big = awaiting_verify(dovecot, user, make_account, 20)
    with django_assert_max_num_queries(per_mailbox):
        assert steps.run_migration(big.pk) == "done"
    handed_over(big, 20)
