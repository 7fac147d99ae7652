"""The legacy V2 engine: password IMAP polling by date, INBOX only.

This is how V2 always worked: SEARCH SINCE the day of the last high-water mark
and dedupe by the one message identity (sync.identity). It stops for good on
the campaign's shutdown date.
"""

from datetime import timedelta

from django.utils import timezone

from sync.imap import client as imap
from sync.imap.client import MailboxError
from sync.imap.session import Session
from sync.models import FolderState, MailAccount
from sync.services import imap_settings_of, password_of, record_skipped, record_sync_result, store_messages

V2_FOLDER = "INBOX"


def poll(account: MailAccount) -> int:
    """One V2 poll of the account's INBOX; returns the number of new messages.

    A message the server cannot deliver is recorded and skipped (sync.imap.session).
    """
    try:
        session = Session(imap_settings_of(account), password_of(account))
    except MailboxError as error:
        record_sync_result(account_id=account.pk, error_code=error.code)
        return 0
    try:
        state, _ = FolderState.objects.get_or_create(account=account, name=V2_FOLDER)
        session.client.select_folder(V2_FOLDER, readonly=True)
        if state.v2_high_water:
            # IMAP SINCE has day granularity; the day before covers time zones.
            since = (state.v2_high_water - timedelta(days=1)).date()
            uids = session.client.search(["SINCE", since])
        else:
            uids = session.client.search("ALL")
        skipped = []
        messages = [m for batch in session.fetch_batches(V2_FOLDER, uids, skipped=skipped) for m in batch]
    except (MailboxError, OSError, imap.IMAPClientError) as error:
        code = error.code if isinstance(error, MailboxError) else imap.error_code(error)
        record_sync_result(account_id=account.pk, error_code=code)
        return 0
    finally:
        session.close()
    added = store_messages(account=account, folder=V2_FOLDER, messages=messages, engine="v2")
    for uid, reason, detail in skipped:
        record_skipped(account_id=account.pk, folder=V2_FOLDER, reference=f"uid:{uid}", reason=reason, detail=detail)
    dates = [m.received_at for m in messages if m.received_at]
    high_water = max(dates + ([state.v2_high_water] if state.v2_high_water else []), default=None)
    FolderState.objects.filter(pk=state.pk).update(v2_high_water=high_water, v2_last_poll_at=timezone.now())
    record_sync_result(account_id=account.pk)
    return added
