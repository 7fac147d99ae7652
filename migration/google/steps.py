"""The worker's Google steps: verify the grant against Gmail's IMAP, and what the callback stores.

The sign-in (migration.google.flow) leaves the grant in Migration.secret_encrypted
as {"grant": <sync.google.oauth grant>}; verify logs in with XOAUTH2 and reads
every folder's cursor (migration.imap.flow), exactly as for an IMAP mailbox;
the handoff (migration.handoff) moves the grant to the account.
"""

from django.conf import settings
from django.db import transaction

from migration import services
from migration.imap import flow as imap_flow
from migration.models import Migration, Status
from sync import crypto
from sync.errors import MailboxError
from sync.google import oauth
from sync.google.oauth import GoogleError
from sync.imap.client import ImapSettings
from sync.models import ProviderKind

SIGN_IN_STATUSES = (Status.AWAITING_USER,)


def connection_for(address: str) -> dict:
    """The IMAP connection of a Google mailbox: Gmail's server, implicit TLS, the full address as user."""
    return {"host": settings.GOOGLE_IMAP_HOST, "port": settings.GOOGLE_IMAP_PORT, "security": "ssl",
            "username": address}


def signed_in(*, migration: Migration, grant: dict, actor: str) -> Migration:
    """The user came back from Google with a grant for this mailbox: the worker verifies it.

    MigrationError("wrong_state") unless the migration waits in Google's sign-in step: an answer
    from a sign-in started before the user picked another provider changes nothing."""
    if migration.status not in SIGN_IN_STATUSES or migration.provider_kind != ProviderKind.GOOGLE:
        raise services.MigrationError("wrong_state")
    migration = services.transition(
        migration, to=Status.VERIFYING, reason="signed in at Google", actor=actor,
        secret_encrypted=crypto.encrypt_json({"grant": grant}), connection=connection_for(migration.account.address),
        error_code="",
    )
    with transaction.atomic():
        services.enqueue(migration.pk)
    return migration


def verify(migration: Migration, *, heartbeat=None) -> None:
    """verifying -> handing_over, or failed (a revoked grant, a refused login), or a wait (Google unreachable).

    Errors: GoogleError permanent (google_reconnect, google_admin_policy) fails the
    migration with that code; transient ones (google_unreachable) defer the step.
    A login Gmail refuses is auth_failed; an unreachable server waits.
    """
    try:
        grant = crypto.decrypt_json(migration.secret_encrypted)["grant"]
    except (crypto.SecretUnreadable, KeyError):
        services.fail(migration, code="secret_unreadable")
        return
    try:
        access_token, renewed = oauth.fresh_access_token(grant)
    except GoogleError as error:
        if not error.permanent:
            services.defer(migration, code=error.code)
        services.fail(migration, code=error.code, reason=f"verify: {error.code}")
        return
    connection = migration.connection
    server = ImapSettings(connection["host"], int(connection["port"]), connection["security"], connection["username"])
    try:
        cursors = imap_flow.verify(server, "", heartbeat=heartbeat, access_token=access_token)
    except MailboxError as error:
        if not error.permanent:
            services.defer(migration, code=error.code)
        services.fail(migration, code=error.code, reason=f"verify: {error.code}")
        return
    services.transition(
        migration, to=Status.HANDING_OVER, reason=f"verified, {len(cursors)} folders", cursors=cursors,
        error_code="", secret_encrypted=crypto.encrypt_json({"grant": renewed}),
    )
