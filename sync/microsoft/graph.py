"""Microsoft Graph requests: /me, the mail folder tree, messages and messages delta.

Every request asks for immutable ids (Prefer: IdType="ImmutableId"), so an id
survives a move between folders. Paging follows @odata.nextLink only while it
points at MS_GRAPH_URL (the bearer token never goes anywhere else), and at
most MAX_PAGES pages per call.

Protocol sources (Microsoft Graph v1.0 docs): "List mailFolders" (top level
only), "List childFolders", "mailFolder resource type" (well-known folder
names, childFolderCount), "message: delta" and "Use delta query to track
changes" (an initial round enumerates the whole folder; "Synchronization
reset": an expired or invalid delta token is answered with a 40X error such as
410 Gone / syncStateNotFound, and the client starts a full round again).

Every request holds one of the mailbox's slots (sync.microsoft.slots) while
it is on the wire: Graph allows an app only a few concurrent requests per
mailbox and answers more with 429 ApplicationThrottled.
"""

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from urllib.parse import parse_qsl, quote, urlsplit

import requests
from django.conf import settings

from sync import http_caps
from sync.microsoft import slots
from sync.microsoft.client import MicrosoftError, capped, verify

PREFER = 'IdType="ImmutableId", odata.maxpagesize=100'
MESSAGE_FIELDS = "internetMessageId,subject,from,toRecipients,ccRecipients,sentDateTime,receivedDateTime"
FOLDER_FIELDS = "id,displayName,childFolderCount"
MAX_PAGES = 500
# A whole-folder delta round pages through every message (100 per page): up to 1,000,000 messages.
MAX_DELTA_PAGES = 10_000
# Bounds of the folder tree walk: Exchange mailboxes hold at most a few thousand folders in practice.
MAX_FOLDER_DEPTH = 32
MAX_FOLDERS = 5_000
# Folders whose mail does not belong in the CRM (as the IMAP engine skips trash, junk, drafts):
# well-known names of "mailFolder resource type"; their child folders are skipped with them.
SKIPPED_FOLDERS = ("deleteditems", "junkemail", "drafts", "outbox", "conversationhistory", "syncissues")
# The inbox keeps V2's (and IMAP's) name, so the CRM shows one inbox whichever engine read a message.
INBOX = "INBOX"
# Throttling and short outages ("Microsoft Graph throttling guidance": 429 with Retry-After; "Microsoft Graph
# error responses": 503 Service Unavailable and 504 Gateway Timeout, Retry-After possible): a request is tried
# again at most RETRIES times, waiting what Retry-After asks (DEFAULT_RETRY_WAIT without one), and all waits of
# one request together at most MAX_RETRY_WAIT seconds; then ms_unreachable (transient: the next run goes on).
RETRY_STATUSES = (429, 503, 504)
RETRIES = 2
DEFAULT_RETRY_WAIT = 2.0
MAX_RETRY_WAIT = 10.0
# An expired or unusable delta token ("Use delta query", Token duration and Synchronization reset: "a 40X-series
# error with error codes such as syncStateNotFound", or 410 Gone with a Location header that starts over; "Microsoft
# Graph error responses": resyncRequired, syncStateNotFound, and the detailed resync* codes, which may come nested in
# innerError; apps should look at every code). Compared lower-case, wherever in the error they appear.
EXPIRED_DELTA_CODES = {"syncstatenotfound", "syncstateinvalid", "resyncrequired", "invaliddeltatoken",
                       "resyncapplydifferences", "resyncuploaddifferences"}
# Other 40X answers to a request that carries a sync token ($deltatoken, $skiptoken) mean Graph does not accept the
# token (e.g. 400 badRequest "Invalid $deltatoken"): the same request without a token starts over, and a real error
# shows up there. 401 (token), 403 (permission), 404 (the folder is gone) and 429 keep their meaning.
TOKEN_REFUSED_STATUSES = (400, 409, 412, 422)
SYNC_TOKENS = {"deltatoken", "skiptoken"}


class GraphUnauthorized(MicrosoftError):
    """401: the access token was refused (revoked early, or a clock skew)."""

    def __init__(self):
        super().__init__("ms_reconnect", permanent=True)


class GraphNotFound(MicrosoftError):
    """404 (ErrorItemNotFound): the folder or message is gone, or the mailbox has no such well-known folder."""

    def __init__(self):
        super().__init__("ms_protocol", permanent=True)


class DeltaExpired(MicrosoftError):
    """The delta link is no longer valid (410, or 400 syncStateNotFound and kin): start a new round."""

    def __init__(self):
        super().__init__("ms_delta_expired", permanent=False)


@dataclass(frozen=True)
class GraphFolder:
    """One syncable folder: its id (stable across rename and move) and its path of display names."""

    id: str
    path: str


@dataclass(frozen=True)
class DeltaPage:
    """One page of a delta round: its entries, and either the round's delta link (the last page) or the
    @odata.nextLink of the page after it, which continues this round later too (until Graph forgets it)."""

    items: list[dict]
    delta_link: str
    next_link: str


@dataclass(frozen=True)
class FolderTree:
    """The syncable folders, parents before children; complete=False when a bound cut the walk short."""

    folders: list[GraphFolder]
    complete: bool


def graph_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _error_codes(response) -> list[str]:
    """Every error code of a Graph error body, lower-case: error.code, then innerError.code, nested further."""
    try:
        error = (response.json() or {}).get("error")
    except (ValueError, AttributeError):
        return []
    codes = []
    for _ in range(8):  # innerError chains are short; a malicious body cannot make us loop
        if not isinstance(error, dict):
            break
        if error.get("code"):
            codes.append(str(error["code"]).lower())
        error = error.get("innerError") or error.get("innererror")
    return codes


def _error_code(response) -> str:
    codes = _error_codes(response)
    return codes[0] if codes else ""


def carries_sync_token(url: str, params: dict | None) -> bool:
    """True for a delta or page link of a delta round ($deltatoken / $skiptoken, any case, encoded or not)."""
    keys = [key for key, _ in parse_qsl(urlsplit(url).query, keep_blank_values=True)] + list(params or {})
    return any(key.lstrip("$").lower() in SYNC_TOKENS for key in keys)


def delta_token_refused(response, *, sync_token: bool) -> bool:
    """Graph no longer accepts the delta round's token: the folder must start a new round (any documented form)."""
    if response.status_code == 410 or (400 <= response.status_code < 500
                                       and set(_error_codes(response)) & EXPIRED_DELTA_CODES):
        return True
    return sync_token and response.status_code in TOKEN_REFUSED_STATUSES


def retry_wait(header: str | None) -> float:
    """Seconds a Retry-After header asks for (delta-seconds; an HTTP date or nonsense: the default)."""
    try:
        return max(0.0, float(str(header).strip()))
    except (TypeError, ValueError):
        return DEFAULT_RETRY_WAIT


class Graph:
    def __init__(self, access_token: str, *, mailbox: str):
        """mailbox: what names the mailbox for its concurrency limit (the MSAL home account id, else the address)."""
        self.base = settings.MS_GRAPH_URL
        self.mailbox = mailbox
        self.session = requests.Session()
        # Connections a deadline (MS_MAX_RESPONSE_SECONDS) or an overrunning sync run can shut down.
        adapter = http_caps.WatchedAdapter()
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self.session.headers.update({"Authorization": f"Bearer {access_token}", "Prefer": PREFER,
                                     "Accept": "application/json"})

    def close(self):
        self.session.close()

    def get(self, path_or_url: str, params: dict | None = None) -> dict:
        """One GET; the JSON body of a 200, else a MicrosoftError saying whether a retry can help.

        Each answer is read whole under MS_MAX_RESPONSE_BYTES (after
        decompression) and MS_MAX_RESPONSE_SECONDS: over them ms_too_large /
        ms_too_slow (transient: the next run tries again).
        """
        url = path_or_url if path_or_url.startswith("https://") else f"{self.base}{path_or_url}"
        if not (url == self.base or url.startswith(self.base + "/")):
            raise MicrosoftError("ms_protocol", permanent=True)  # a link to another host
        waited = 0.0
        for attempt in range(RETRIES + 1):
            try:
                # One of the mailbox's slots while on the wire (the body included), not while waiting out a
                # Retry-After; the caps (MS_MAX_RESPONSE_BYTES/SECONDS) bound what one answer may cost.
                with slots.slot(self.mailbox), capped():
                    # verify= per request: REQUESTS_CA_BUNDLE would override a session's.
                    response = self.session.get(url, params=params, timeout=settings.MS_TIMEOUT, verify=verify(),
                                                allow_redirects=False, stream=True)
                    http_caps.read_body(response, max_bytes=settings.MS_MAX_RESPONSE_BYTES)
            except requests.RequestException:
                raise MicrosoftError("ms_unreachable", permanent=False) from None
            if response.status_code not in RETRY_STATUSES or attempt == RETRIES:
                break
            wait = retry_wait(response.headers.get("Retry-After"))
            if waited + wait > MAX_RETRY_WAIT:
                break  # Graph asks for longer than a run may wait: the next run tries again
            response.close()
            time.sleep(wait)
            waited += wait
        if response.status_code == 200:
            try:
                return response.json()
            except ValueError:
                raise MicrosoftError("ms_protocol", permanent=False) from None
        if delta_token_refused(response, sync_token=carries_sync_token(url, params)):
            raise DeltaExpired()
        if response.status_code == 401:
            raise GraphUnauthorized()
        if response.status_code == 403:
            raise MicrosoftError("ms_graph_denied", permanent=True)
        if response.status_code == 404:
            if _error_code(response) == "mailboxnotenabledforrestapi":
                # A hybrid mailbox on the company's own Exchange server ("Microsoft Graph in Exchange hybrid
                # deployments"): Graph cannot read it, the Exchange (EWS) path can.
                raise MicrosoftError("ms_mailbox_on_premises", permanent=True)
            raise GraphNotFound()
        if response.status_code == 429 or response.status_code >= 500:
            raise MicrosoftError("ms_unreachable", permanent=False)
        raise MicrosoftError("ms_protocol", permanent=True)

    def send(self, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
        """One POST/PATCH/DELETE under the same slot and caps as get(), not retried (the caller decides).

        Returns (HTTP status, the JSON object of the answer or {}). Used for
        the change-notification subscriptions ("Create subscription", "Update
        subscription", "Delete subscription", "subscription: reauthorize").
        Errors: MicrosoftError ms_unreachable (network), ms_too_large / ms_too_slow.
        """
        try:
            with slots.slot(self.mailbox), capped():
                response = self.session.request(method, f"{self.base}{path}", json=body, timeout=settings.MS_TIMEOUT,
                                                verify=verify(), allow_redirects=False, stream=True)
                http_caps.read_body(response, max_bytes=settings.MS_MAX_RESPONSE_BYTES)
        except requests.RequestException:
            raise MicrosoftError("ms_unreachable", permanent=False) from None
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        return response.status_code, answer if isinstance(answer, dict) else {}

    def pages(self, path: str, params: dict | None = None, *, limit: int = MAX_PAGES):
        """Yield every page of a collection, following @odata.nextLink (at most `limit` pages)."""
        url, query = path, params
        for _ in range(limit):
            page = self.get(url, query)
            yield page
            url, query = page.get("@odata.nextLink"), None
            if not url:
                return
        raise MicrosoftError("ms_protocol", permanent=False)  # an endless chain of pages

    def me(self) -> dict:
        # proxyAddresses: the mailbox's other SMTP addresses; the CRM may know it by an alias.
        return self.get("/v1.0/me", {"$select": "id,mail,userPrincipalName,displayName,proxyAddresses"})

    def _well_known_id(self, name: str) -> str:
        """The id of a well-known folder ("" when the mailbox has none, e.g. no Conversation History)."""
        try:
            return str(self.get(f"/v1.0/me/mailFolders/{name}", {"$select": "id"}).get("id") or "")
        except GraphNotFound:
            return ""

    def folder_tree(self) -> FolderTree:
        """Every syncable mail folder, however deeply nested.

        /me/mailFolders lists only the top level (the children of
        msgfolderroot); each folder with childFolderCount > 0 is listed
        further through /me/mailFolders/{id}/childFolders, breadth first, at
        most MAX_FOLDER_DEPTH levels and MAX_FOLDERS folders. Deleted Items,
        Junk Email, Drafts, Outbox, Conversation History and Sync Issues are
        left out with everything below them. Paths join display names with
        "/"; the inbox is always "INBOX". Errors: MicrosoftError.
        """
        skipped = {self._well_known_id(name) for name in SKIPPED_FOLDERS} - {""}
        inbox = self._well_known_id("inbox")
        found: list[GraphFolder] = []
        complete = True
        level = [("", "")]  # (folder id, path) of the parents to list; "" = the top level
        for depth in range(MAX_FOLDER_DEPTH):
            below = []
            for parent_id, parent_path in level:
                url = (f"/v1.0/me/mailFolders/{quote(parent_id, safe='')}/childFolders" if parent_id
                       else "/v1.0/me/mailFolders")
                try:
                    listed = [f for page in self.pages(url, {"$select": FOLDER_FIELDS, "$top": "100"})
                              for f in page.get("value", []) if isinstance(f, dict) and f.get("id")]
                except GraphNotFound:
                    complete = False  # deleted while we walked: the next run sees the tree as it is
                    continue
                for folder in listed:
                    folder_id = str(folder["id"])
                    if folder_id in skipped:
                        continue
                    if len(found) >= MAX_FOLDERS:
                        return FolderTree(found, complete=False)
                    name = INBOX if folder_id == inbox else str(folder.get("displayName") or folder_id)
                    path = f"{parent_path}/{name}" if parent_path else name
                    found.append(GraphFolder(folder_id, path))
                    # childFolderCount is in every answer; without it, ask rather than miss a subtree.
                    if folder.get("childFolderCount") != 0:
                        below.append((folder_id, path))
            if not below:
                return FolderTree(found, complete=complete)
            level = below
        return FolderTree(found, complete=False)  # deeper than MAX_FOLDER_DEPTH

    def delta_pages(self, link_or_folder_id: str, *, since: datetime | None = None):
        """One delta round, page by page: yields a DeltaPage per page, the delta link on the last one.

        With a folder id it starts a new round: without `since` Graph
        enumerates every message in the folder (the initial round), with it
        only mail received since then (the one filter messages delta allows).
        A delta link continues where its round ended; a page's next link
        continues the round after that page. Items include "@removed"
        entries and entries that carry only an id and changed properties.
        Errors: DeltaExpired (start a new round), GraphNotFound (the folder
        is gone), other MicrosoftError.
        """
        if link_or_folder_id.startswith("https://"):
            url, params = link_or_folder_id, None
        else:
            url = f"/v1.0/me/mailFolders/{quote(link_or_folder_id, safe='')}/messages/delta"
            params = {"$select": MESSAGE_FIELDS}
            if since:
                params["$filter"] = f"receivedDateTime ge {graph_time(since)}"
        for page in self.pages(url, params, limit=MAX_DELTA_PAGES):
            link = str(page.get("@odata.deltaLink") or "")
            yield DeltaPage(items=[item for item in page.get("value", []) if isinstance(item, dict)],
                            delta_link=link, next_link="" if link else str(page.get("@odata.nextLink") or ""))
            if link:
                return
        raise MicrosoftError("ms_protocol", permanent=False)  # pages ended without a delta link

    def delta(self, link_or_folder_id: str, *, since: datetime | None = None) -> tuple[list[dict], str]:
        """A whole delta round at once: (the messages it names, without "@removed" entries; the delta link)."""
        items, link = [], ""
        for page in self.delta_pages(link_or_folder_id, since=since):
            items.extend(item for item in page.items if "@removed" not in item)
            link = page.delta_link
        return items, link

    def message(self, message_id: str) -> dict:
        """GET /me/messages/{id} with the fields the sync stores. Errors: GraphNotFound when it is gone."""
        return self.get(f"/v1.0/me/messages/{quote(message_id, safe='')}", {"$select": MESSAGE_FIELDS})
