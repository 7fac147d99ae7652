"""The Microsoft Graph half of the fake: /me, mail folders, messages and delta.

Delta follows Graph's rules: the first round lists what is there (only
receivedDateTime ge ... may filter it), pages end with @odata.nextLink, the
last page carries @odata.deltaLink, and a deltaLink returns what changed since.
Ids are immutable only when the request says Prefer: IdType="ImmutableId".
"""

import base64
import json
import re
import time
from datetime import datetime
from urllib.parse import urlencode


def _token(data: dict) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).decode()


def _untoken(raw: str) -> dict | None:
    try:
        return json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError):
        return None


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
        if path == "/v1.0/me":
            me = {"id": user.oid, "displayName": user.address, "mail": user.mail, "userPrincipalName": user.upn}
            if "proxyAddresses" in query.get("$select", ""):  # like Graph: only when selected
                me["proxyAddresses"] = [f"SMTP:{user.mail}"] + [f"smtp:{alias}" for alias in user.aliases]
            return 200, me
        if path == "/v1.0/me/mailFolders":
            folders = [self._folder_json(f) for f in user.folders.values()]
            return self._page(folders, query, "/v1.0/me/mailFolders")
        match = re.fullmatch(r"/v1\.0/me/mailFolders/([^/]+)(/messages(/delta)?)?", path)
        if not match:
            return 404, {"error": {"code": "ResourceNotFound", "message": "Resource not found."}}
        folder = user.folders.get(match[1]) or next(
            (f for f in user.folders.values() if f.well_known == match[1].lower()), None)
        if folder is None:
            return 404, {"error": {"code": "ErrorItemNotFound", "message": "The specified object was not found."}}
        if not match[2]:
            return 200, self._folder_json(folder)
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
                      "since": since.isoformat() if since else None}
        if not cursor or cursor.get("folder") != folder.id:
            return 410, {"error": {"code": "SyncStateNotFound", "message": "The sync state is invalid or expired."}}
        floor = datetime.fromisoformat(cursor["since"]) if cursor["since"] else None
        items = [m for m in folder.messages if cursor["after"] < m.seq <= cursor["upto"]
                 and (floor is None or m.received >= floor)]
        page = items[cursor["offset"]:cursor["offset"] + self.page_size]
        body = {"@odata.context": f"{self.base}/v1.0/$metadata#Collection(message)",
                "value": [self._message_json(m, folder, immutable) for m in page]}
        if cursor["offset"] + self.page_size < len(items):
            body["@odata.nextLink"] = f"{base}?{urlencode({'$skiptoken': _token({**cursor, 'offset': cursor['offset'] + self.page_size})})}"
        else:
            done = {"folder": folder.id, "after": cursor["upto"], "since": cursor["since"]}
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

    @staticmethod
    def _folder_json(folder):
        return {"id": folder.id, "displayName": folder.name, "parentFolderId": "root", "childFolderCount": 0,
                "totalItemCount": len(folder.messages), "unreadItemCount": 0}

    @staticmethod
    def _message_json(message, folder, immutable):
        body = {
            "id": f"imm-{message.number}" if immutable else f"rest-{folder.well_known}-{message.number}",
            "subject": message.subject,
            "from": {"emailAddress": {"name": "", "address": message.sender}},
            "receivedDateTime": message.received.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if message.internet_message_id:
            body["internetMessageId"] = message.internet_message_id
        return body
