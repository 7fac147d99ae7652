"""The V3 Microsoft Graph engine: per-folder delta sync with immutable ids.

Tokens come from the account's MSAL cache (refreshed silently, the new cache
saved); a refresh token that Microsoft no longer accepts puts the account
into "Neu verbinden" instead of failing quietly on every run. The first sync
after the handoff also lists mail since v3_since (V2's high-water mark minus
the overlap window); the dedup key, the Message-ID as for IMAP, skips what V2
or an earlier run imported.
"""

import email.utils
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from sync.microsoft import client
from sync.microsoft.client import MicrosoftError
from sync.microsoft.graph import DeltaExpired, Graph, GraphUnauthorized
from sync import crypto
from sync.identity import FetchedMessage
from sync.models import AccountStatus, FolderState, MailAccount
from sync.services import mark_reconnect, microsoft_tokens_of, record_sync_result, save_microsoft_cache, store_messages


def sync(account: MailAccount) -> int:
    if account.status in (AccountStatus.STOPPED, AccountStatus.RECONNECT):
        return 0
    try:
        tokens = {**microsoft_tokens_of(account), "stored": account.token_cache_encrypted}
    except crypto.SecretUnreadable:
        record_sync_result(account_id=account.pk, error_code="secret_unreadable")
        return 0
    added = 0
    try:
        # A 401 from Graph although MSAL thought the token valid: refresh once and go on.
        for force_refresh in (False, True):
            graph = Graph(_access_token(account, tokens, force_refresh=force_refresh))
            try:
                for state in account.folders.exclude(graph_folder_id=""):
                    added += _sync_folder(graph, account, state)
                break
            except GraphUnauthorized:
                if force_refresh:
                    raise
            finally:
                graph.close()
    except MicrosoftError as error:
        return added + _failed(account, error, expected=tokens["stored"])
    record_sync_result(account_id=account.pk)
    return added


def _access_token(account: MailAccount, tokens: dict, *, force_refresh: bool) -> str:
    token, refreshed = client.access_token(tokens.get("cache", ""), home_account_id=tokens.get("home_account_id", ""),
                                           force_refresh=force_refresh)
    if refreshed:
        tokens["cache"] = refreshed
        stored = save_microsoft_cache(account_id=account.pk, cache=refreshed, home_account_id=tokens["home_account_id"],
                                      expected=tokens["stored"])
        tokens["stored"] = stored or tokens["stored"]
    return token


def _failed(account: MailAccount, error: MicrosoftError, *, expected: str) -> int:
    if error.code == "ms_reconnect":
        mark_reconnect(account_id=account.pk, expected=expected)
    else:
        record_sync_result(account_id=account.pk, error_code=error.code)
    return 0


def _sync_folder(graph: Graph, account: MailAccount, state: FolderState) -> int:
    items = []
    if state.v3_synced_at is None and state.v3_since:
        # Once, after the handoff: what arrived since V2's high-water mark (minus the overlap).
        items.extend(graph.messages_since(state.graph_folder_id, state.v3_since))
    try:
        changed, delta_link = graph.delta(state.delta_link or state.graph_folder_id,
                                          since=None if state.delta_link else _restart_since(state))
    except DeltaExpired:
        # Graph forgot the sync state: a new round over the recent past; dedup keeps it exact.
        changed, delta_link = graph.delta(state.graph_folder_id, since=_restart_since(state))
    items.extend(changed)
    messages = [message_of(item) for item in items]
    added = store_messages(account=account, folder=state.name, messages=messages, engine="v3")
    FolderState.objects.filter(pk=state.pk).update(delta_link=delta_link, v3_synced_at=timezone.now())
    return added


def _restart_since(state: FolderState) -> datetime:
    return (state.v3_synced_at or timezone.now()) - timedelta(hours=settings.HANDOFF_OVERLAP_HOURS)


def _addresses(recipients) -> str:
    """Graph recipients ([{"emailAddress": {"name", "address"}}]) as one header-style text."""
    return ", ".join(
        email.utils.formataddr(((r.get("emailAddress") or {}).get("name") or "",
                                (r.get("emailAddress") or {}).get("address") or ""))
        for r in recipients or [] if isinstance(r, dict)
    )


def message_of(item: dict) -> FetchedMessage:
    """A Graph message resource as a FetchedMessage (identity by sync.identity's rule).

    sentDateTime is the Date header as Exchange stored it: the fingerprint's date.
    """
    sender = ((item.get("from") or {}).get("emailAddress") or {})
    return FetchedMessage(
        message_id=str(item.get("internetMessageId") or "")[:998], subject=str(item.get("subject") or "")[:500],
        sender=email.utils.formataddr((sender.get("name") or "", sender.get("address") or ""))[:500],
        to=_addresses(item.get("toRecipients"))[:2000], cc=_addresses(item.get("ccRecipients"))[:2000],
        sent_at=_parse_time(item.get("sentDateTime")), received_at=_parse_time(item.get("receivedDateTime")),
        size=0, provider_id=str(item.get("id") or "")[:512],
    )


def _parse_time(raw) -> datetime | None:
    try:
        return datetime.fromisoformat(str(raw).replace("Z", "+00:00")) if raw else None
    except ValueError:
        return None
