"""The Microsoft Graph half of the fake: /me, mail folders, messages and delta.

Folders as Graph shows them: /me/mailFolders lists only the top level,
/me/mailFolders/{id}/childFolders the folders below one, each with its
parentFolderId and childFolderCount; well-known names ("inbox",
"deleteditems", ...) work in place of an id. Delta follows Graph's rules: the
first round lists what is there (only receivedDateTime ge ... may filter it),
pages end with @odata.nextLink, the last page carries @odata.deltaLink, and a
deltaLink returns what changed since: new and moved-in messages whole,
messages deleted or moved out as {"id", "@removed"}, and a flag change as only
the id and the changed flags. /me/messages/{id} returns one message.
Ids are immutable only when the request says Prefer: IdType="ImmutableId".
"""

import base64
import json
import re
import time
from datetime import datetime, timezone
from urllib.parse import unquote, urlencode


def _token(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _untoken(raw: str) -> dict | None:
    try:
        return json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError):
        return None


def _utc(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(query) -> datetime | None:
    match = re.fullmatch(r"\s*receivedDateTime ge (\S+)\s*", query.get("$filter", ""))
    if query.get("$filter") and not match:
        raise ValueError(query["$filter"])
    return datetime.fromisoformat(match[1].replace("Z", "+00:00")) if match else None


class GraphMixin:
    def graph(self, path, query, headers):
        grant = self.access_tokens.get((headers.get("Authorization") or "").removeprefix("Bearer "))
        if grant is None or grant["expires"] < time.time():
            return 401, {"error": {"code": "InvalidAuthenticationToken", "message": "Access token has expired or is not yet valid."}}
        if grant["user"] is None:
            return 400, {"error": {"code": "BadRequest", "message": "/me request is only valid with delegated authentication flow."}}
        user = self.users[grant["user"]]
        immutable = 'IdType="ImmutableId"' in (headers.get("Prefer") or "")
        if user.on_premises and path.startswith(("/v1.0/me/mailFolders", "/v1.0/me/messages")):
            return 404, {"error": {"code": "MailboxNotEnabledForRESTAPI",
                                   "message": "The mailbox is either inactive, soft-deleted, or is hosted on-premise."}}
        if path == "/v1.0/me":
            if user.personal:  # mail null, a short id, no other addresses (see User.personal)
                me = {"id": user.oid[:16], "displayName": user.address, "mail": None, "userPrincipalName": user.upn}
                if "proxyAddresses" in query.get("$select", ""):
                    me["proxyAddresses"] = []
                return 200, me
            me = {"id": user.oid, "displayName": user.address, "mail": user.mail, "userPrincipalName": user.upn}
            if "proxyAddresses" in query.get("$select", ""):  # like Graph: only when selected
                me["proxyAddresses"] = [f"SMTP:{user.mail}"] * bool(user.mail) + [f"smtp:{a}" for a in user.aliases]
            return 200, me
        if path == "/v1.0/me/mailFolders":
            folders = [self._folder_json(f, user) for f in user.folders.values() if not f.parent]
            return self._page(folders, query, "/v1.0/me/mailFolders")
        if path == "/v1.0/me/messages" or path.startswith("/v1.0/me/messages/") and (
                path.endswith("/attachments") or "body" in query.get("$select", "")):
            return self._message_content(user, path, query, immutable)
        if match := re.fullmatch(r"/v1\.0/me/messages/([^/]+)", path):
            return self._message_by_id(user, unquote(match[1]), immutable)
        match = re.fullmatch(r"/v1\.0/me/mailFolders/([^/]+)(/messages(/delta)?|/childFolders)?", path)
        if not match:
            return 404, {"error": {"code": "ResourceNotFound", "message": "Resource not found."}}
        folder = user.folders.get(unquote(match[1])) or next(
            (f for f in user.folders.values() if f.well_known == match[1].lower()), None)
        if folder is None:
            return 404, {"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found."}}
        if not match[2]:
            return 200, self._folder_json(folder, user)
        if match[2] == "/childFolders":
            children = [self._folder_json(f, user) for f in user.folders.values() if f.parent == folder.id]
            return self._page(children, query, f"/v1.0/me/mailFolders/{folder.id}/childFolders")
        try:
            since = _since(query)
        except ValueError:
            return 400, {"error": {"code": "ErrorInvalidUrlQueryFilter", "message": "The query filter is invalid."}}
        if not match[3]:
            items = [m for m in folder.messages if since is None or m.received >= since]
            items.sort(key=lambda m: m.received, reverse=True)
            body = [self._message_json(m, folder, immutable) for m in items]
            return self._page(body, query, f"/v1.0/me/mailFolders/{folder.id}/messages")
        return self._delta(folder, query, since, immutable)

    def _delta(self, folder, query, since, immutable):
        base = f"{self.base}/v1.0/me/mailFolders/{folder.id}/messages/delta"
        if "$skiptoken" in query:
            cursor = _untoken(query["$skiptoken"])
        elif "$deltatoken" in query:
            previous = _untoken(query["$deltatoken"])
            cursor = previous and {**previous, "upto": self.seq, "offset": 0}
        else:
            cursor = {"folder": folder.id, "after": 0, "upto": self.seq, "offset": 0,
                      "since": since.isoformat() if since else None, "gen": self.delta_generation}
        if not cursor or cursor.get("folder") != folder.id or cursor.get("gen") != self.delta_generation:
            return self._expired_delta(base)
        floor = datetime.fromisoformat(cursor["since"]) if cursor["since"] else None
        after = cursor["after"]
        changes = [(m.seq, m, False) for m in folder.messages if after < m.seq <= cursor["upto"]]
        if after:  # a first round lists what is there; later rounds also what left
            changes += [(seq, m, True) for seq, m in folder.removed if after < seq <= cursor["upto"]]
        items = sorted((c for c in changes if floor is None or c[1].received >= floor), key=lambda c: c[0])
        page = items[cursor["offset"]:cursor["offset"] + self.page_size]
        body = {"@odata.context": f"{self.base}/v1.0/$metadata#Collection(message)",
                "value": [self._change_json(m, folder, immutable, after, removed) for _, m, removed in page]}
        if cursor["offset"] + self.page_size < len(items):
            body["@odata.nextLink"] = f"{base}?{urlencode({'$skiptoken': _token({**cursor, 'offset': cursor['offset'] + self.page_size})})}"
        else:
            done = {"folder": folder.id, "after": cursor["upto"], "since": cursor["since"], "gen": cursor["gen"]}
            body["@odata.deltaLink"] = f"{base}?{urlencode({'$deltatoken': _token(done)})}"
        return 200, body

    def _page(self, items, query, path):
        skip = int(query.get("$skip", 0))
        top = min(int(query.get("$top", self.page_size)), self.page_size)
        body = {"value": items[skip:skip + top]}
        if skip + top < len(items):
            rest = {k: v for k, v in query.items() if k not in ("$skip",)}
            body["@odata.nextLink"] = f"{self.base}{path}?{urlencode({**rest, '$skip': skip + top})}"
        return 200, body

    def expire_delta_links(self, status: int = 410, code: str = "SyncStateNotFound", *, inner: str | None = None,
                           message: str = "", location: bool = False) -> None:
        """Graph forgets every sync state; old delta and page links get a 40X answer of the given form.

        The forms Microsoft documents: "Use delta query to track changes" (Token duration: "a 40X-series error
        with error codes such as syncStateNotFound"; Synchronization reset: 410 Gone with a Location header holding
        the initial request, location=True), "Microsoft Graph error responses" (syncStateNotFound, resyncRequired,
        and detailed codes nested in innerError, inner=...), the 400 BadRequest syncStateNotFound of expired
        directory delta links (Microsoft 365 Developer Blog, "Duration of change tracking tokens", 2020), and a
        generic 400 badRequest about the token (code="badRequest", message=...).
        """
        with self.lock:
            self.delta_generation += 1
            self.expired_delta_answer = (status, code, inner, message, location)

    def _expired_delta(self, base):
        status, code, inner, message, location = (tuple(self.expired_delta_answer) + (None, "", False))[:5]
        error = {"code": code, "message": message or "The sync state generation is not found. The delta token is "
                                                     "expired and data must be synchronized again."}
        error["innerError"] = {"date": _utc(datetime.now(timezone.utc)), "request-id": "fake"}
        if inner:
            error["innerError"]["code"] = inner
        headers = {"Location": f"{base}?$deltatoken="} if location else None
        return (status, {"error": error}, headers) if headers else (status, {"error": error})

    def _change_json(self, message, folder, immutable, after, removed):
        if removed:
            return {"id": self._message_id(message, folder, immutable), "@removed": {"reason": "deleted"}}
        if message.arrived <= after and message.flags:
            # A message the last round returned whose flags changed: Graph sends the id and the change only.
            return {"id": self._message_id(message, folder, immutable), **message.flags}
        return self._message_json(message, folder, immutable)

    # --- what the message page reads: body, attachments, a lookup by Message-ID -----------------------------------

    @staticmethod
    def set_content(message, *, html: str | None = None, text: str = "", attachments=()) -> None:
        """Give a message its body (HTML when given, else text) and attachments [(name, contentType, size)]."""
        message.body = {"contentType": "html", "content": html} if html is not None else {
            "contentType": "text", "content": text}
        message.attachments = [{"name": n, "contentType": t, "size": size} for n, t, size in attachments]

    def _message_content(self, user, path, query, immutable):
        """GET /me/messages?$filter=internetMessageId eq '...', /me/messages/{id}?$select=body,hasAttachments
        and /me/messages/{id}/attachments (with contentBytes unless $select leaves them out, as Graph does)."""
        found = [(m, f) for f in user.folders.values() for m in f.messages]
        if path == "/v1.0/me/messages":
            wanted = re.fullmatch(r"internetMessageId eq '(.*)'", query.get("$filter", ""))
            if wanted is None:
                return 400, {"error": {"code": "ErrorInvalidUrlQueryFilter", "message": "The query filter is invalid."}}
            value = wanted[1].replace("''", "'")
            matches = [{"id": self._message_id(m, f, immutable)} for m, f in found if m.internet_message_id == value]
            return self._page(matches, query, "/v1.0/me/messages")
        message_id = unquote(path.removeprefix("/v1.0/me/messages/").removesuffix("/attachments"))
        message = next((m for m, f in found if self._message_id(m, f, immutable) == message_id), None)
        if message is None:
            return 404, {"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found in the store."}}
        attachments = getattr(message, "attachments", [])
        if not path.endswith("/attachments"):
            return 200, {"id": message_id, "hasAttachments": bool(attachments),
                         "body": getattr(message, "body", {"contentType": "text", "content": ""})}
        selected = set(query.get("$select", "").split(",")) if query.get("$select") else None
        value = []
        for number, attachment in enumerate(attachments):
            entry = {"@odata.type": "#microsoft.graph.fileAttachment", "id": f"att-{number}", "isInline": False,
                     **attachment, "contentBytes": base64.b64encode(b"x" * attachment["size"]).decode()}
            value.append({k: v for k, v in entry.items() if selected is None or k in selected | {"@odata.type", "id"}})
        return self._page(value, query, path)

    def _message_by_id(self, user, message_id, immutable):
        for folder in user.folders.values():
            for message in folder.messages:
                if self._message_id(message, folder, immutable) == message_id and message_id not in self.gone_on_get:
                    return 200, self._message_json(message, folder, immutable)
        return 404, {"error": {"code": "ErrorItemNotFound",
                               "message": "The specified object was not found in the store."}}

    @staticmethod
    def _folder_json(folder, user):
        root = f"AQMkmsgfolderroot{user.oid[:8]}"
        return {"id": folder.id, "displayName": folder.name, "parentFolderId": folder.parent or root,
                "childFolderCount": sum(1 for f in user.folders.values() if f.parent == folder.id),
                "totalItemCount": len(folder.messages), "unreadItemCount": 0}

    @staticmethod
    def _message_id(message, folder, immutable):
        return f"imm-{message.number}" if immutable else f"rest-{folder.well_known}-{message.number}"

    @staticmethod
    def _message_json(message, folder, immutable):
        def recipient(address, name=""):
            # Exchange repeats the address as the name when the header has none.
            return {"emailAddress": {"name": name or address, "address": address}}

        body = {
            "id": GraphMixin._message_id(message, folder, immutable),
            "subject": message.subject,
            "from": recipient(message.sender, message.sender_name),
            "toRecipients": [recipient(address) for address in message.to],
            "ccRecipients": [recipient(address) for address in message.cc],
            "sentDateTime": _utc(message.sent or message.received),
            "receivedDateTime": _utc(message.received),
        }
        if message.internet_message_id:
            body["internetMessageId"] = message.internet_message_id
        body.update(message.extra)  # a test's odd item (fields of another shape)
        return body
