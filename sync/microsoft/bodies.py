"""A stored message's body and attachment list from Microsoft Graph, for the message page.

Microsoft Graph v1.0 "Get message": GET /me/messages/{id}?$select=body,hasAttachments
answers the body as Exchange keeps it ({"contentType": "html"|"text",
"content": ...}); "List attachments": GET /me/messages/{id}/attachments with
$select=name,contentType,size, so that file attachments come WITHOUT their
contentBytes (Graph sends them base64-encoded otherwise). The id is the
immutable id the sync stored (the Graph client asks for immutable ids), so a
message moved to another folder is still found. A message V2 imported before
the account moved to Graph has no such id: it is looked up once by its
Message-ID ("List messages" with $filter=internetMessageId eq '...'). The access token comes from
the account's MSAL cache; a refreshed cache is saved (compare-and-swap, as
the sync engine does), a 401 refreshes once.
"""

from urllib.parse import quote

from sync import identity
from sync.microsoft import client
from sync.microsoft.graph import Graph, GraphNotFound, GraphUnauthorized
from sync.mime import Content
from sync.models import MailAccount, SyncedMessage
from sync.services import microsoft_tokens_of, save_microsoft_cache


def fetch_content(account: MailAccount, message: SyncedMessage) -> Content:
    """Body and attachments. Raises MicrosoftError (GraphNotFound when the message is gone)."""
    tokens = {**microsoft_tokens_of(account), "stored": account.token_cache_encrypted}
    try:
        return _read(account, message, tokens, force_refresh=False)
    except GraphUnauthorized:
        # Microsoft refused a token MSAL thought valid (revoked early, clock skew): refresh once.
        return _read(account, message, tokens, force_refresh=True)


def _read(account: MailAccount, message: SyncedMessage, tokens: dict, *, force_refresh: bool) -> Content:
    graph = Graph(_access_token(account, tokens, force_refresh=force_refresh),
                  mailbox=tokens.get("home_account_id") or account.address)
    try:
        path = f"/v1.0/me/messages/{quote(message.provider_id or _id_by_message_id(graph, message), safe='')}"
        item = graph.get(path, {"$select": "body,hasAttachments"})
        attachments = []
        if item.get("hasAttachments"):
            for page in graph.pages(f"{path}/attachments", {"$select": "name,contentType,size"}):
                attachments.extend(_attachment(entry) for entry in page.get("value", []))
        return _content(item.get("body") or {}, attachments)
    finally:
        graph.close()


def _id_by_message_id(graph: Graph, message: SyncedMessage) -> str:
    message_id = identity.normalize_message_id(message.message_id)
    if not message_id:
        raise GraphNotFound()
    literal = f"<{message_id}>".replace("'", "''")  # an OData string literal doubles its quotes
    found = graph.get("/v1.0/me/messages", {"$filter": f"internetMessageId eq '{literal}'", "$select": "id",
                                            "$top": "1"}).get("value") or []
    if not found or not found[0].get("id"):
        raise GraphNotFound()
    return str(found[0]["id"])


def _access_token(account: MailAccount, tokens: dict, *, force_refresh: bool) -> str:
    token, refreshed = client.access_token(tokens.get("cache", ""), home_account_id=tokens.get("home_account_id", ""),
                                           force_refresh=force_refresh)
    if refreshed:
        # The refresh token may have rotated: keep it, unless the user re-connected meanwhile.
        stored = save_microsoft_cache(account_id=account.pk, cache=refreshed, home_account_id=tokens["home_account_id"],
                                      expected=tokens["stored"])
        tokens.update(cache=refreshed, stored=stored or tokens["stored"])
    return token


def _attachment(entry: dict) -> dict:
    size = entry.get("size")
    return {"name": str(entry.get("name") or "")[:255], "content_type": str(entry.get("contentType") or ""),
            "size": size if isinstance(size, int) and size >= 0 else 0}


def _content(body: dict, attachments: list[dict]) -> Content:
    text = str(body.get("content") or "")
    if str(body.get("contentType") or "").lower() == "html":
        return Content(html=text, attachments=attachments)
    return Content(text=text.replace("\r\n", "\n"), attachments=attachments)
