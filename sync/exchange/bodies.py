"""A stored message's body and attachment list from Exchange (EWS GetItem), for the message page.

EWS "GetItem operation": the item's Body (BodyType HTML or Text, as the server
keeps it; exchangelib asks for the "Best" type) and its Attachments
collection. GetItem lists attachments with AttachmentId, Name, ContentType
and Size only; their content would need GetAttachment, which is never called.
The id is the EWS item id the sync stored. A message V2 imported (from the
INBOX, over IMAP) has none yet: it is looked up once in the Inbox by its
Message-ID (FindItem, IsEqualTo message:InternetMessageId).
"""

from exchangelib import Message
from exchangelib.errors import ErrorItemNotFound
from exchangelib.fields import FieldPath
from exchangelib.items import ID_ONLY
from exchangelib.properties import HTMLBody
from exchangelib.services import GetItem

from sync import identity
from sync.exchange import client as ews
from sync.mime import Content
from sync.models import MailAccount, SyncedMessage
from sync.services import password_of

FIELDS = ["body", "attachments"]


class ItemGone(Exception):
    """Exchange no longer has an item with this id (deleted)."""


def fetch_content(account: MailAccount, message: SyncedMessage) -> Content:
    """Body and attachments. Raises ItemGone, or MailboxError (its code) for the mailbox."""
    with ews.mailbox_errors(), ews.open_account(ews.settings_of(account), password_of(account)) as mailbox:
        item_id = message.provider_id or _id_by_message_id(mailbox, message)
        # The GetItem service itself, not Account.fetch: that validates the field names
        # against the mailbox root folder, one GetFolder round trip more per open.
        fields = {FieldPath(field=Message.get_field_by_fieldname(name)) for name in FIELDS}
        items = list(GetItem(account=mailbox).call(items=[(item_id, None)], additional_fields=fields, shape=ID_ONLY))
        item = items[0] if items else ErrorItemNotFound("no answer")
        if isinstance(item, ErrorItemNotFound):
            raise ItemGone()
        if isinstance(item, Exception):
            raise item  # mailbox_errors names it
        return _content(item)


def _id_by_message_id(mailbox, message: SyncedMessage) -> str:
    message_id = identity.normalize_message_id(message.message_id)
    if not message_id:
        raise ItemGone()
    for item_id, _changekey in mailbox.inbox.filter(message_id=f"<{message_id}>").values_list("id", "changekey")[:1]:
        return item_id
    raise ItemGone()


def _content(item) -> Content:
    attachments = [
        {"name": str(a.name or "")[:255], "content_type": str(a.content_type or ""), "size": int(a.size or 0)}
        for a in item.attachments or []
    ]
    body = item.body or ""
    if isinstance(body, HTMLBody):
        return Content(html=str(body), attachments=attachments)
    return Content(text=str(body).replace("\r\n", "\n"), attachments=attachments)
