"""Move an account's sync state from V2 to V3 in one transaction.

V3 starts from the cursors recorded while verifying (IMAP: UIDVALIDITY and
UIDNEXT; Graph: the delta link; EWS: the SyncFolderItems state), and each
folder's first V3 run reads the whole folder once (v3_synced_at is None): a
message delivered, moved or copied in before, during or after the switch is
imported whatever its Date, and what V2 imported is recognised by the one
message identity (sync.identity) and not imported again.
"""

from django.db import transaction
from django.utils import timezone

from migration.models import Migration
from sync import services as sync_services
from sync.exchange import client as ews
from sync.imap.client import ImapSettings
from sync.models import AccountStatus, Engine, FolderState, MailAccount, ProviderKind


def hand_over(migration: Migration) -> bool:
    """Switch the account to V3. Returns False if it already was (re-entry)."""
    now = timezone.now()
    with transaction.atomic():
        account = MailAccount.objects.select_for_update().get(pk=migration.account_id)
        if account.engine == Engine.V3:
            return False  # a redelivered task: the handoff already happened
        HAND_OVER[migration.provider_kind](migration, account, now=now)
        sync_services.invalidate_banner(account.owner_id)
    return True


def _hand_over_to_imap(migration: Migration, account: MailAccount, *, now) -> None:
    connection = migration.connection
    server = ImapSettings(connection["host"], int(connection["port"]), connection["security"], connection["username"])
    sync_services.set_imap_credentials(account=account, server=server, password=_password(migration))
    account.provider_kind = ProviderKind.IMAP  # also when the user chose IMAP in the login mask
    _switch_to_v3(account, now=now)
    _set_folder_rows(account, migration.cursors, _apply_imap_cursor,
                     ["uidvalidity", "uidnext", "highestmodseq", "last_seen_uid", "v3_synced_at"])


def _hand_over_to_ews(migration: Migration, account: MailAccount, *, now) -> None:
    """Exchange: the settings the worker verified move to the account, each mail folder gets a row
    keyed by its FolderId. The inbox is named "INBOX" like V2's row, so V2's high-water mark stays
    with it. v3_synced_at=None: the first EWS run reads each folder whole (SyncFolderItems from an
    empty state); the verified state is kept for reference only."""
    server = ews.settings_from(migration.connection, account.address)
    ews.apply_to_account(account, server=server, password=_password(migration))
    account.provider_kind = ProviderKind.EXCHANGE
    _switch_to_v3(account, now=now)

    def apply(state: FolderState, cursor: dict) -> None:
        # Absent in cursors verified before folders had ids: the engine then finds the row by name.
        state.ews_folder_id = cursor.get("ews_folder_id", "")
        state.ews_sync_state = cursor["ews_sync_state"]
        state.v3_synced_at = None

    _set_folder_rows(account, migration.cursors, apply, ["ews_folder_id", "ews_sync_state", "v3_synced_at"])


def _set_folder_rows(account: MailAccount, cursors: dict[str, dict], apply, fields: list[str]) -> None:
    """Give each verified folder its row: apply(state, cursor) to the existing row (V2's INBOX) or a new one.

    A constant number of queries whatever the folder count (one SELECT ... FOR
    UPDATE, one INSERT and one UPDATE per 500 folders), inside the handoff's
    transaction: a 200-folder mailbox is not 1,000 round trips to the database.
    """
    rows = {state.name: state for state in
            FolderState.objects.select_for_update().filter(account=account, name__in=list(cursors))}
    new, changed = [], []
    for name, cursor in cursors.items():
        state = rows.get(name)
        if state is None:
            state = FolderState(account=account, name=name)
            new.append(state)
        else:
            changed.append(state)
        apply(state, cursor)
    FolderState.objects.bulk_create(new, batch_size=500)
    if changed:
        FolderState.objects.bulk_update(changed, fields, batch_size=500)


def _switch_to_v3(account: MailAccount, *, now) -> None:
    """The one place an account leaves V2: V3 from now on, V2 stopped for it."""
    account.engine = Engine.V3
    account.status = AccountStatus.ACTIVE
    account.last_sync_error = ""
    account.v2_stopped_at = now
    account.save()


def _password(migration: Migration) -> str:
    from sync import crypto

    return crypto.decrypt_json(migration.secret_encrypted)["password"]


def _hand_over_to_graph(migration: Migration, account: MailAccount, *, now) -> None:
    """Microsoft: the MSAL token cache moves to the account, each folder gets its Graph id.

    The V2 password is dropped: Microsoft accounts sync through Graph now.
    Folder rows are named by their path ("INBOX" is V2's row, so its
    high-water mark stays with it). v3_synced_at=None: the first Graph run
    reads each folder whole (a delta round without a date filter), so a
    message of any date that V2 did not import arrives once; the verified
    delta link is kept for reference only.
    """
    from sync import crypto

    secret = crypto.decrypt_json(migration.secret_encrypted)
    sync_services.set_microsoft_tokens(account=account, cache=secret["cache"], home_account_id=secret["home_account_id"])
    account.secret_encrypted = ""
    account.provider_kind = ProviderKind.MICROSOFT  # also when the user chose Microsoft in the login mask
    _switch_to_v3(account, now=now)

    def apply(state: FolderState, cursor: dict) -> None:
        state.graph_folder_id = cursor["folder_id"]
        state.delta_link = cursor.get("delta_link", "")
        state.v3_synced_at = None

    _set_folder_rows(account, migration.cursors, apply, ["graph_folder_id", "delta_link", "v3_synced_at"])


def _hand_over_to_google(migration: Migration, account: MailAccount, *, now) -> None:
    """Google: the grant from the sign-in moves to the account, which syncs Gmail's IMAP with XOAUTH2.

    The folder rows are the IMAP ones (UIDVALIDITY/UIDNEXT per folder, INBOX is
    V2's row); v3_synced_at=None, so each folder's first run reads it whole. The
    V2 password is dropped: Google accounts sync with the grant now.
    """
    from sync import crypto

    connection = migration.connection
    account.imap_host, account.imap_port = connection["host"], int(connection["port"])
    account.imap_security, account.username = connection["security"], connection["username"]
    account.token_cache_encrypted = crypto.encrypt_json(crypto.decrypt_json(migration.secret_encrypted)["grant"])
    account.secret_encrypted = ""
    account.provider_kind = ProviderKind.GOOGLE
    _switch_to_v3(account, now=now)
    _set_folder_rows(account, migration.cursors, _apply_imap_cursor,
                     ["uidvalidity", "uidnext", "highestmodseq", "last_seen_uid", "v3_synced_at"])


def _apply_imap_cursor(state: FolderState, cursor: dict) -> None:
    state.uidvalidity = cursor["uidvalidity"]
    state.uidnext = cursor["uidnext"]
    state.highestmodseq = cursor["highestmodseq"]
    state.last_seen_uid = cursor["uidnext"] - 1
    state.v3_synced_at = None


HAND_OVER = {
    ProviderKind.GOOGLE: _hand_over_to_google,
    ProviderKind.IMAP: _hand_over_to_imap,
    ProviderKind.EXCHANGE: _hand_over_to_ews,
    ProviderKind.MICROSOFT: _hand_over_to_graph,
}
