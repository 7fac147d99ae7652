"""Microsoft Graph requests: /me, mail folders, messages and messages delta.

Every request asks for immutable ids (Prefer: IdType="ImmutableId"), so an id
survives a move between folders. Paging follows @odata.nextLink only while it
points at MS_GRAPH_URL (the bearer token never goes anywhere else), and at
most MAX_PAGES pages per call.
"""

from datetime import datetime, timezone

import requests
from django.conf import settings

from sync.microsoft.client import MicrosoftError, verify

PREFER = 'IdType="ImmutableId", odata.maxpagesize=100'
MESSAGE_FIELDS = "internetMessageId,subject,from,toRecipients,ccRecipients,sentDateTime,receivedDateTime"
MAX_PAGES = 500
# Folders whose mail does not belong in the CRM (as the IMAP engine skips them).
SKIPPED_FOLDERS = ("deleteditems", "junkemail", "drafts", "outbox")


class GraphUnauthorized(MicrosoftError):
    """401: the access token was refused (revoked early, or a clock skew)."""

    def __init__(self):
        super().__init__("ms_reconnect", permanent=True)


class DeltaExpired(MicrosoftError):
    """The delta link is no longer valid (410 SyncStateNotFound): start a new round."""

    def __init__(self):
        super().__init__("ms_delta_expired", permanent=False)


def graph_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Graph:
    def __init__(self, access_token: str):
        self.base = settings.MS_GRAPH_URL
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {access_token}", "Prefer": PREFER,
                                     "Accept": "application/json"})

    def close(self):
        self.session.close()

    def get(self, path_or_url: str, params: dict | None = None) -> dict:
        url = path_or_url if path_or_url.startswith("https://") else f"{self.base}{path_or_url}"
        if not (url == self.base or url.startswith(self.base + "/")):
            raise MicrosoftError("ms_protocol", permanent=True)  # a link to another host
        try:
            # verify= per request: REQUESTS_CA_BUNDLE would override a session's.
            response = self.session.get(url, params=params, timeout=settings.MS_TIMEOUT, verify=verify(),
                                        allow_redirects=False)
        except requests.RequestException:
            raise MicrosoftError("ms_unreachable", permanent=False) from None
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise MicrosoftError("ms_protocol", permanent=False) from None
        if response.status_code == 410:
            raise DeltaExpired()
        if response.status_code == 401:
            raise GraphUnauthorized()
        if response.status_code == 403:
            raise MicrosoftError("ms_graph_denied", permanent=True)
        if response.status_code == 429 or response.status_code >= 500:
            raise MicrosoftError("ms_unreachable", permanent=False)
        raise MicrosoftError("ms_protocol", permanent=True)

    def pages(self, path: str, params: dict | None = None):
        """Yield every page of a collection, following @odata.nextLink."""
        url, query = path, params
        for _ in range(MAX_PAGES):
            page = self.get(url, query)
            yield page
            url, query = page.get("@odata.nextLink"), None
            if not url:
                return
        raise MicrosoftError("ms_protocol", permanent=False)  # an endless chain of pages

    def me(self) -> dict:
        # proxyAddresses: the mailbox's other SMTP addresses; the CRM may know it by an alias.
        return self.get("/v1.0/me", {"$select": "id,mail,userPrincipalName,displayName,proxyAddresses"})

    def mail_folders(self) -> list[dict]:
        """Top-level folders worth syncing (no deleted items, junk, drafts, outbox)."""
        skipped = set()
        for name in SKIPPED_FOLDERS:
            try:
                skipped.add(self.get(f"/v1.0/me/mailFolders/{name}", {"$select": "id"})["id"])
            except MicrosoftError as error:
                if error.code != "ms_protocol":  # 404: a mailbox without that folder
                    raise
        inbox = self.get("/v1.0/me/mailFolders/inbox", {"$select": "id,displayName"})
        folders = []
        for page in self.pages("/v1.0/me/mailFolders", {"$select": "id,displayName", "$top": "100"}):
            for folder in page.get("value", []):
                if folder.get("id") and folder["id"] not in skipped:
                    folders.append({**folder, "inbox": folder["id"] == inbox["id"]})
        return folders

    def delta(self, link_or_folder_id: str, *, since: datetime | None = None) -> tuple[list[dict], str]:
        """One delta round: (changed messages, the next delta link).

        With a folder id it starts a new round, limited to mail received
        since `since` (the one filter Graph allows on messages delta).
        """
        if link_or_folder_id.startswith("https://"):
            url, params = link_or_folder_id, None
        else:
            url = f"/v1.0/me/mailFolders/{link_or_folder_id}/messages/delta"
            params = {"$select": MESSAGE_FIELDS}
            if since:
                params["$filter"] = f"receivedDateTime ge {graph_time(since)}"
        items = []
        for page in self.pages(url, params):
            items.extend(item for item in page.get("value", []) if "@removed" not in item)
            if page.get("@odata.deltaLink"):
                return items, page["@odata.deltaLink"]
        raise MicrosoftError("ms_protocol", permanent=False)  # pages ended without a delta link

    def messages_since(self, folder_id: str, since: datetime) -> list[dict]:
        params = {"$select": MESSAGE_FIELDS, "$filter": f"receivedDateTime ge {graph_time(since)}", "$top": "100"}
        items = []
        for page in self.pages(f"/v1.0/me/mailFolders/{folder_id}/messages", params):
            items.extend(page.get("value", []))
        return items
