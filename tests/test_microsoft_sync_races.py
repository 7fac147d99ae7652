"""A Graph sync that runs while the user re-connects must not undo the re-connect."""

import pytest

from sync import crypto
from sync.microsoft import engine as v3_graph
from sync.models import MailAccount
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    browser_get, fake_microsoft_server, local, microsoft, ms_account, sign_in,
)
from tests.test_microsoft_sync import migrated  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db


def _reconnected_meanwhile(account) -> str:
    """What a re-connect writes while a sync that read `account` is still running: a new grant."""
    fresh = crypto.encrypt_json(crypto.decrypt_json(account.token_cache_encrypted))
    MailAccount.objects.filter(pk=account.pk).update(token_cache_encrypted=fresh, status="active")
    return fresh


def test_a_refresh_of_the_old_grant_does_not_overwrite_a_fresh_one(migrated, microsoft):
    running = MailAccount.objects.get(pk=migrated.pk)  # the sync's view from before the re-connect
    fresh = _reconnected_meanwhile(migrated)
    microsoft.expire_access_tokens()
    microsoft.deliver(migrated.address, subject="neu")
    assert v3_graph.sync(running) == 1  # the run itself still works with what it refreshed
    assert MailAccount.objects.get(pk=migrated.pk).token_cache_encrypted == fresh


def test_a_revoked_old_grant_does_not_mark_a_reconnected_account(migrated, microsoft):
    running = MailAccount.objects.get(pk=migrated.pk)
    fresh = _reconnected_meanwhile(migrated)
    microsoft.revoke_refresh_tokens(migrated.address)
    microsoft.expire_access_tokens()
    assert v3_graph.sync(running) == 0
    account = MailAccount.objects.get(pk=migrated.pk)
    assert (account.status, account.last_sync_error, account.token_cache_encrypted) == ("active", "", fresh)


def test_a_successful_run_does_not_clear_a_reconnect_state_set_meanwhile(migrated, microsoft):
    running = MailAccount.objects.get(pk=migrated.pk)
    MailAccount.objects.filter(pk=migrated.pk).update(status="reconnect", last_sync_error="ms_reconnect")
    v3_graph.sync(running)
    account = MailAccount.objects.get(pk=migrated.pk)
    assert (account.status, account.last_sync_error) == ("reconnect", "ms_reconnect")
