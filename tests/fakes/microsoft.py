"""A fake Microsoft identity platform and Graph over https on 127.0.0.1 (self-signed).

The real protocol with the real checks: OpenID discovery per tenant; /authorize
redirecting with a code or an error; /token checking the client secret, the
redirect URI, the PKCE S256 verifier, single-use codes and revocable refresh
tokens; the v2.0 admin-consent endpoint; client-credentials tokens only for
tenants that hold the app's service principal (a consent creates it); Graph
behind bearer tokens (microsoft_graph.py). Tests set and read the state in
plain attributes, or act as an admin in Entra (grant_consent_in_entra).
"""

import base64
import hashlib
import json
import re
import secrets
import ssl
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from portal.devservers import make_certificate
from tests.fakes import bombs
from tests.fakes.local_server import listen, serve_in_background, shut
from tests.fakes.microsoft_graph import GraphMixin
from tests.fakes.microsoft_subscriptions import SubscriptionsMixin

CONSUMERS = "9188040d-6c67-4c5b-b112-36a304b66dad"
WELL_KNOWN = [("inbox", "Inbox"), ("sentitems", "Sent Items"), ("drafts", "Drafts"),
              ("deleteditems", "Deleted Items"), ("junkemail", "Junk Email"), ("archive", "Archive"),
              ("outbox", "Outbox"), ("conversationhistory", "Conversation History"), ("syncissues", "Sync Issues")]
# Well-known folders below another one (Graph "mailFolder resource type"): (name, display name, parent).
WELL_KNOWN_CHILDREN = [("conflicts", "Conflicts", "syncissues"), ("localfailures", "Local Failures", "syncissues"),
                       ("serverfailures", "Server Failures", "syncissues")]
# Texts of Microsoft's error-code reference (learn.microsoft.com/entra/identity-platform/reference-error-codes).
CONSENT_TEXT = {
    65001: "The user or administrator has not consented to use the application.",
    65004: "User declined to consent to access the app.",
    90093: "Graph returned a forbidden error code: the application requires admin consent (user consent is "
           "not allowed in this tenant).",
    900941: "Administrator consent is required. App is considered risky.",
    900981: "An admin consent request was received for a risky app.",
    90094: "The grant requires admin permission.",
    90095: "Admin consent is required for the permissions requested by this application. An admin consent "
           "request may be sent to the admin.",
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def s256(verifier: str) -> str:
    return b64url(hashlib.sha256(verifier.encode("ascii")).digest())


@dataclass
class Tenant:
    id: str
    domains: set
    # None: users may consent themselves. Else the AADSTS code a sign-in gets
    # until an admin has consented, at "authorize" or at "token"; or "page":
    # Microsoft's own "Need admin approval" page, which never redirects by
    # itself. Its only way back is the link "Return to the application without
    # granting consent", which arrives as error=access_denied&error_subcode=cancel
    # with no AADSTS code (learn.microsoft.com/entra/identity/enterprise-apps/
    # configure-admin-consent-workflow, "Need admin approval"; reported in
    # AzureAD/microsoft-authentication-library-for-js issues). return_link() follows it.
    needs_admin_consent: int | None = None
    consent_error_at: str = "authorize"
    consent_error: str = "access_denied"
    admin_consented: bool = False
    # The app's service principal in the tenant. The first consent creates it;
    # removing the app's permissions later leaves it in place, and
    # client-credentials tokens need nothing more.
    service_principal: bool = False


@dataclass
class User:
    address: str
    tenant: Tenant
    oid: str = field(default_factory=lambda: secrets.token_hex(16))
    mail: str | None = None
    upn: str | None = None
    aliases: list = field(default_factory=list)  # further SMTP addresses of the mailbox (proxyAddresses)
    folders: dict = field(default_factory=dict)  # folder id -> Folder
    # A mailbox on the company's own Exchange server in a hybrid setup: the user signs in at Microsoft and /me
    # answers, but every mail request gets 404 MailboxNotEnabledForRESTAPI ("Microsoft Graph in Exchange hybrid
    # deployments", learn.microsoft.com/graph/hybrid-rest-support; "Known issues with Microsoft Graph", mail).
    on_premises: bool = False
    # A personal Microsoft account (Outlook.com, Hotmail): /me answers mail: null, a 16-hex-digit id and
    # userPrincipalName = the sign-in address, and has no proxyAddresses (Microsoft Graph "user resource type":
    # mail is set by Exchange Online for work accounts only; the Graph team in OfficeDev/outlook-dev-docs#196 and
    # jasonjoh/node-tutorial#16: "for Microsoft accounts userPrincipalName should always be their SMTP address").
    # None: personal when the user is in the consumers directory.
    personal: bool | None = None


@dataclass
class Folder:
    id: str
    name: str
    well_known: str
    messages: list = field(default_factory=list)
    parent: str = ""  # the parent folder's id; "" = the top level (below msgfolderroot)
    removed: list = field(default_factory=list)  # (seq, message) of messages deleted or moved out


@dataclass
class Message:
    seq: int  # the last change (delta rounds return what changed after their start)
    number: int
    internet_message_id: str | None
    subject: str
    sender: str
    received: datetime
    sent: datetime | None = None  # the Date header (sentDateTime); None: as received
    sender_name: str = ""
    to: tuple = ()  # addresses
    cc: tuple = ()
    arrived: int = 0  # the seq at which it came into its folder (delivered or moved in)
    flags: dict = field(default_factory=dict)  # changed flags, e.g. {"isRead": True}
    extra: dict = field(default_factory=dict)  # fields that replace the JSON's (an odd item)


class FakeMicrosoft(GraphMixin, SubscriptionsMixin):
    def __init__(self, *, client_id="crm-portal-client", client_secret="fake-client-secret-123"):
        self.client_id = client_id
        self.client_secret = client_secret
        self.redirect_uris: set[str] = set()
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-microsoft-"))
        self.cert_path, self.key_path = make_certificate(self.workdir)
        self.lock = threading.RLock()
        self.reset()
        self.server = None

    # --- test controls -------------------------------------------------------------
    def reset(self):
        with getattr(self, "lock", threading.RLock()):
            self.tenants: dict[str, Tenant] = {}
            self.users: dict[str, User] = {}
            self.codes: dict[str, dict] = {}
            self.refresh_tokens: dict[str, dict] = {}
            self.access_tokens: dict[str, dict] = {}
            self.requests: list[dict] = []
            self.sign_in_as: str | None = None  # the person who actually signs in
            self.authorize_error: dict | None = None  # the next /authorize answers with this
            self.admin_consent_answer = "accept"
            self.access_token_lifetime = 3600
            self.page_size = 2
            self.seq = 0
            self.gone_on_get: set[str] = set()  # message ids deleted just before their GET (a 404 race)
            self.delta_generation = 0  # expire_delta_links() moves it on
            self.expired_delta_answer = (410, "SyncStateNotFound")
            # An outage or throttling of the sign-in service: {"status": 503 | 500 | 429, "retry_after": "30",
            # "on": {"token", "discovery"}} answers those endpoints with that status, a Retry-After header and an
            # HTML error page (no OAuth JSON), as "Handle errors and exceptions in MSAL for Python" (learn.microsoft
            # .com/entra/msal/python/advanced/msal-error-handling-python) and "Retry-After" in "Microsoft Entra
            # authentication and authorization error codes" describe; msal's throttled_http_client.py (1.39) reads
            # the same header. "segments": only these authority path segments (tenants) fail. None: no outage.
            self.identity_outage: dict | None = None
            # Graph throttling and short outages: each entry, (status, Retry-After or None), answers the next Graph
            # request instead of Graph ("Microsoft Graph throttling guidance", learn.microsoft.com/graph/throttling:
            # 429 TooManyRequests with Retry-After in seconds; "Microsoft Graph error responses and resource
            # types", learn.microsoft.com/graph/errors: 503 serviceNotAvailable and 504 with Retry-After).
            # graph_always_throttled: every Graph request gets this entry (an outage that outlasts a run).
            self.graph_throttle: list[tuple[int, str | None]] = []
            self.graph_always_throttled: tuple[int, str | None] | None = None
            # Concurrent requests per app and mailbox ("Microsoft Graph service-specific throttling limits", Outlook
            # service limits, learn.microsoft.com/graph/throttling-limits#outlook-service-limits: 4 concurrent
            # requests, 10,000 per 10 minutes): a request beyond mailbox_concurrency_limit in flight for one mailbox
            # gets 429 {"error": {"code": "ApplicationThrottled", "message": "Application is over its
            # MailboxConcurrency limit."}} with Retry-After. None: no limit. graph_delay (seconds) keeps every Graph
            # request in flight that long, so that concurrency shows. The counts are per mailbox (user address).
            self.mailbox_concurrency_limit: int | None = 4
            self.graph_delay = 0.0
            self.graph_in_flight: dict[str, int] = {}
            self.graph_max_in_flight: dict[str, int] = {}
            self.graph_concurrency_refused: dict[str, int] = {}
            # A hostile or broken answer no real Microsoft service sends, for the caps tests: {"answer": "bomb"
            # (a gzip body that inflates to bombs.BOMB_BYTES) | "drip" (one byte every bombs.DRIP_INTERVAL
            # seconds), "on": {"discovery", "token", "graph"}}. None: none.
            self.hostile: dict | None = None
            self.reset_subscriptions()
            self.add_tenant(CONSUMERS, {"outlook.com", "hotmail.com"})

    def add_tenant(self, tenant_id: str, domains, **options) -> Tenant:
        tenant = Tenant(tenant_id, set(domains), **options)
        self.tenants[tenant_id] = tenant
        return tenant

    def add_user(self, address: str, tenant: Tenant, **fields) -> User:
        user = User(address.lower(), tenant, **fields)
        if user.personal is None:
            user.personal = tenant.id == CONSUMERS
        if user.personal:
            user.mail, user.upn = None, user.upn or address
        elif user.mail is None and user.upn is None:
            user.mail = user.upn = address
        for key, name in WELL_KNOWN:
            folder_id = f"AQMk{key}{user.oid[:8]}"
            user.folders[folder_id] = Folder(folder_id, name, key)
        for key, name, parent in WELL_KNOWN_CHILDREN:
            folder_id = f"AQMk{key}{user.oid[:8]}"
            user.folders[folder_id] = Folder(folder_id, name, key, parent=f"AQMk{parent}{user.oid[:8]}")
        self.users[user.address] = user
        return user

    def deliver(self, address: str, *, subject: str, folder="inbox", internet_message_id: str | None = "",
                received: datetime | None = None, sender="kunde@example.org", sent: datetime | None = None,
                sender_name: str = "", to=(), cc=()) -> Message:
        """A message arrives in `folder` (a well-known name, a folder id or a Folder)."""
        with self.lock:
            user = self.users[address.lower()]
            target = self.folder_of(user, folder)
            self.seq += 1
            if internet_message_id == "":
                internet_message_id = f"<fake-{self.seq}.{secrets.token_hex(4)}@example.org>"
            message = Message(self.seq, self.seq, internet_message_id, subject, sender,
                              (received or datetime.now(timezone.utc)).replace(microsecond=0),
                              sent=sent, sender_name=sender_name, to=tuple(to), cc=tuple(cc), arrived=self.seq)
            target.messages.append(message)
        # Graph announces it to the subscriptions watching the folder (microsoft_subscriptions), outside the lock.
        self.notify_delivery(user, target, message)
        return message

    @staticmethod
    def folder_of(user: User, folder) -> Folder:
        if isinstance(folder, Folder):
            return folder
        return user.folders.get(folder) or next(f for f in user.folders.values() if f.well_known == folder)

    # Folders and messages as a user changes them in Outlook (ids stay; delta rounds see the change).
    def add_folder(self, address: str, name: str, *, parent=None) -> Folder:
        """A new folder at the top level, or below `parent` (a well-known name, a folder id or a Folder)."""
        with self.lock:
            user = self.users[address.lower()]
            folder = Folder(f"AAMk{secrets.token_hex(12)}", name, "",
                            parent=self.folder_of(user, parent).id if parent is not None else "")
            user.folders[folder.id] = folder
            return folder

    def rename_folder(self, folder: Folder, name: str, *, parent=None) -> None:
        """Rename a folder and, given a parent ("" = the top level), move it there."""
        with self.lock:
            folder.name = name
            if parent is not None:
                user = next(u for u in self.users.values() if folder.id in u.folders)
                folder.parent = self.folder_of(user, parent).id if parent != "" else ""

    def delete_folder(self, folder: Folder) -> None:
        """Delete a folder with everything below it."""
        with self.lock:
            user = next(u for u in self.users.values() if folder.id in u.folders)
            doomed = {folder.id}
            while True:
                below = {f.id for f in user.folders.values() if f.parent in doomed} - doomed
                if not below:
                    break
                doomed |= below
            for folder_id in doomed:
                del user.folders[folder_id]

    def move_message(self, message: Message, target: Folder) -> None:
        """Move a message (its immutable id stays): the source's delta says @removed, the target's has it as new."""
        with self.lock:
            source = next(f for u in self.users.values() for f in u.folders.values() if message in f.messages)
            source.messages.remove(message)
            self.seq += 1
            source.removed.append((self.seq, message))
            message.seq = message.arrived = self.seq
            message.flags = {}
            target.messages.append(message)

    def mark_read(self, message: Message) -> None:
        """The user reads the message: the next delta round returns only its id and the changed flag."""
        with self.lock:
            self.seq += 1
            message.seq = self.seq
            message.flags["isRead"] = True

    def grant_consent_in_entra(self, tenant: Tenant) -> None:
        """An admin's "Grant admin consent for <tenant>" in entra.microsoft.com: no redirect, no callback."""
        with self.lock:
            tenant.admin_consented = tenant.service_principal = True

    def remove_permissions_in_entra(self, tenant: Tenant) -> None:
        """An admin removes the app's granted permissions; its service principal stays."""
        with self.lock:
            tenant.admin_consented = False

    def revoke_refresh_tokens(self, address: str) -> None:
        with self.lock:
            for grant in self.refresh_tokens.values():
                if grant["user"] == address.lower():
                    grant["revoked"] = True

    def expire_access_tokens(self) -> None:
        with self.lock:
            for grant in self.access_tokens.values():
                grant["expires"] = 0

    def outage_at(self, endpoint: str, segment: str) -> dict | None:
        outage = self.identity_outage
        if not outage or endpoint not in outage.get("on", ("token", "discovery")):
            return None
        return outage if "segments" not in outage or segment.lower() in outage["segments"] else None

    def hostile_at(self, endpoint: str) -> str | None:
        hostile = self.hostile
        return hostile["answer"] if hostile and endpoint in hostile.get("on", ()) else None

    def next_graph_throttle(self) -> tuple[int, str | None] | None:
        if self.graph_throttle:
            return self.graph_throttle.pop(0)
        return self.graph_always_throttled

    def mailbox_of(self, headers) -> str | None:
        """The mailbox (user address) a bearer token reads; None for an unknown, expired or app-only token."""
        grant = self.access_tokens.get((headers.get("Authorization") or "").removeprefix("Bearer "))
        if grant is None or grant["expires"] < time.time():
            return None
        return grant["user"]

    def graph_requests(self) -> list[dict]:
        return [r for r in self.requests if r["path"].startswith("/v1.0/")]

    def seen(self, path_part: str) -> list[dict]:
        return [r for r in self.requests if path_part in r["path"]]

    # --- lifecycle ---------------------------------------------------------------
    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def start(self, port: int = 0) -> "FakeMicrosoft":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        fake = self

        class Handler(_Handler):
            pass

        Handler.fake = fake
        # Handshake in the handler thread: a stalled client cannot block accept().
        self.server = listen(Handler, context, port=port, do_handshake_on_connect=False)
        serve_in_background(self.server)
        return self

    def stop(self) -> None:
        if self.server:
            shut(self.server)

    # --- identity platform ---------------------------------------------------------
    def tenant_for(self, segment: str) -> Tenant | None:
        if segment in self.tenants:
            return self.tenants[segment]
        return next((t for t in self.tenants.values() if segment.lower() in t.domains), None)

    def openid_configuration(self, segment):
        tenant = self.tenant_for(segment)
        if segment not in ("common", "organizations", "consumers") and tenant is None:
            return 400, {"error": "invalid_tenant", "error_description": "AADSTS90002: Tenant not found."}
        issuer_tenant = tenant.id if tenant else "{tenantid}"
        return 200, {
            "authorization_endpoint": f"{self.base}/{segment}/oauth2/v2.0/authorize",
            "token_endpoint": f"{self.base}/{segment}/oauth2/v2.0/token",
            "issuer": f"{self.base}/{issuer_tenant}/v2.0",
            "jwks_uri": f"{self.base}/{segment}/discovery/v2.0/keys",
            "response_types_supported": ["code", "id_token", "code id_token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
        }

    def authorize(self, segment, q):
        """Returns (status, location or body)."""
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id:
            return 400, "AADSTS700016: Application not found in the directory."
        if redirect_uri not in self.redirect_uris:
            return 400, "AADSTS50011: The redirect URI does not match the redirect URIs configured for the application."
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256" or not q.get("code_challenge"):
            return 400, "AADSTS9002325: Proof Key for Code Exchange is required."
        state = q.get("state", "")
        if self.authorize_error:
            error, self.authorize_error = self.authorize_error, None
            return 302, _with(redirect_uri, {**error, "state": state})
        user = self.users.get((self.sign_in_as or q.get("login_hint", "")).lower())
        if user is None:
            return 400, "AADSTS50034: The user account does not exist in this directory."
        if segment == "organizations" and user.tenant.id == CONSUMERS:
            # A personal account at a work-or-school-only authority (error-code reference: AADSTS500208,
            # "The domain is not a valid login domain for the account type").
            return 302, _with(redirect_uri, {"error": "invalid_request", "state": state,
                                             "error_description": "AADSTS500208: The domain is not a valid login "
                                                                  "domain for the account type."})
        if not _tenant_accepts(segment, user.tenant):
            return 302, _with(redirect_uri, {"error": "invalid_request", "state": state,
                                             "error_description": "AADSTS50020: User account from a foreign tenant."})
        tenant = user.tenant
        if tenant.needs_admin_consent and not tenant.admin_consented and tenant.consent_error_at == "page":
            back = _with(redirect_uri, {"error": "access_denied", "error_subcode": "cancel", "state": state})
            return 200, ("Need admin approval. <a data-return href=\"" + back.replace("&", "&amp;") + "\">"
                         "Return to the application without granting consent</a>")
        if tenant.needs_admin_consent and not tenant.admin_consented and tenant.consent_error_at == "authorize":
            code = tenant.needs_admin_consent
            return 302, _with(redirect_uri, {
                "error": tenant.consent_error, "state": state,
                "error_description": f"AADSTS{code}: {CONSENT_TEXT.get(code, 'Consent required.')}",
            })
        code = secrets.token_urlsafe(24)
        self.codes[code] = {
            "redirect_uri": redirect_uri, "challenge": q["code_challenge"], "nonce": q.get("nonce", ""),
            "user": user.address, "scope": q.get("scope", ""), "issued": time.time(), "used": False,
        }
        return 302, _with(redirect_uri, {"code": code, "state": state, "client_info": self._client_info(user),
                                         "session_state": secrets.token_hex(8)})

    def token(self, segment, form):
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return _oauth_error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        grant = form.get("grant_type")
        if grant == "authorization_code":
            return self._redeem(form)
        if grant == "refresh_token":
            refresh = self.refresh_tokens.get(form.get("refresh_token", ""))
            if refresh is None:
                return _oauth_error(400, "invalid_grant", 9002313, "Invalid request. Malformed refresh token.")
            if refresh["revoked"]:
                return _oauth_error(400, "invalid_grant", 50173,
                                    "The provided grant has expired due to it being revoked.")
            return 200, self._issue(self.users[refresh["user"]], nonce=None)
        if grant == "client_credentials":
            tenant = self.tenant_for(segment)
            if tenant is None or not form.get("scope", "").endswith("/.default"):
                return _oauth_error(400, "invalid_request", 90002, "Tenant not found.")
            if not (tenant.admin_consented or tenant.service_principal):
                return _oauth_error(400, "unauthorized_client", 700016,
                                    f"Application with identifier '{self.client_id}' was not found in the "
                                    f"directory '{segment}'.")
            token = "app-" + secrets.token_urlsafe(24)
            self.access_tokens[token] = {"user": None, "tenant": tenant.id, "expires": time.time() + 3599}
            return 200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599, "access_token": token}
        return _oauth_error(400, "unsupported_grant_type", 70003, "The grant type is not supported.")

    def _redeem(self, form):
        issued = self.codes.get(form.get("code", ""))
        if issued is None:
            return _oauth_error(400, "invalid_grant", 9002313, "Invalid request. Malformed code.")
        if issued["used"]:
            return _oauth_error(400, "invalid_grant", 54005, "OAuth2 Authorization code was already redeemed.")
        issued["used"] = True  # even a failed redemption burns the code, as the real one does
        if form.get("redirect_uri") != issued["redirect_uri"]:
            return _oauth_error(400, "invalid_grant", 50148, "The redirect_uri does not match the authorization code.")
        if s256(form.get("code_verifier", "")) != issued["challenge"]:
            return _oauth_error(400, "invalid_grant", 501481,
                                "The Code_Verifier does not match the code_challenge supplied in the request.")
        if time.time() - issued["issued"] > 600:
            return _oauth_error(400, "invalid_grant", 70008, "The provided authorization code has expired.")
        user = self.users[issued["user"]]
        tenant = user.tenant
        if tenant.needs_admin_consent and not tenant.admin_consented and tenant.consent_error_at == "token":
            code = tenant.needs_admin_consent
            return _oauth_error(400, "invalid_grant", code, CONSENT_TEXT.get(code, "Consent required."))
        return 200, self._issue(user, nonce=issued["nonce"])

    def _issue(self, user: User, *, nonce):
        access, refresh = "at-" + secrets.token_urlsafe(24), "rt-" + secrets.token_urlsafe(24)
        self.access_tokens[access] = {"user": user.address, "expires": time.time() + self.access_token_lifetime}
        self.refresh_tokens[refresh] = {"user": user.address, "revoked": False}
        claims = {
            "iss": f"{self.base}/{user.tenant.id}/v2.0", "aud": self.client_id, "sub": secrets.token_hex(8),
            "oid": user.oid, "tid": user.tenant.id, "preferred_username": user.upn or user.mail,
            "name": user.address, "iat": int(time.time()), "exp": int(time.time()) + 3600, "ver": "2.0",
        }
        if nonce:
            claims["nonce"] = nonce  # as the authorize request sent it (msal sends a hash)
        id_token = ".".join([b64url(b'{"alg":"RS256","typ":"JWT"}'), b64url(json.dumps(claims).encode()), "c2ln"])
        return {
            "token_type": "Bearer", "scope": "Mail.Read User.Read openid profile email",
            "expires_in": self.access_token_lifetime, "ext_expires_in": self.access_token_lifetime,
            "access_token": access, "refresh_token": refresh, "id_token": id_token,
            "client_info": self._client_info(user),
        }

    def _client_info(self, user: User) -> str:
        return b64url(json.dumps({"uid": user.oid, "utid": user.tenant.id}).encode())

    def admin_consent(self, segment, q):
        redirect_uri = q.get("redirect_uri", "")
        if q.get("client_id") != self.client_id or redirect_uri not in self.redirect_uris:
            return 400, "AADSTS50011: The redirect URI does not match."
        tenant = self.tenant_for(segment)
        if tenant is None or segment in ("common", "organizations", "consumers"):
            return 400, "AADSTS90002: Tenant not found."
        state = q.get("state", "")
        if self.admin_consent_answer != "accept":
            return 302, _with(redirect_uri, {"error": "access_denied", "state": state, "admin_consent": "False",
                                             "error_description": "AADSTS65004: User declined to consent."})
        tenant.admin_consented = tenant.service_principal = True
        return 302, _with(redirect_uri, {"admin_consent": "True", "tenant": tenant.id, "state": state,
                                         "scope": q.get("scope", "")})


def return_link(page: str) -> str:
    """The "Return to the application without granting consent" link of the blocking page."""
    import html
    return html.unescape(re.search(r'data-return href="([^"]+)"', page)[1])


def _tenant_accepts(segment: str, tenant: Tenant) -> bool:
    if segment == "common":
        return True
    if segment == "organizations":
        return tenant.id != CONSUMERS
    if segment == "consumers":
        return tenant.id == CONSUMERS
    return segment == tenant.id or segment.lower() in tenant.domains


def _with(url: str, params: dict) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def _oauth_error(status, error, code, text):
    return status, {"error": error, "error_description": f"AADSTS{code}: {text}", "error_codes": [code],
                    "timestamp": datetime.now(timezone.utc).isoformat(), "trace_id": secrets.token_hex(8)}


class _Handler(BaseHTTPRequestHandler):
    fake: FakeMicrosoft = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # quiet
        pass

    def _record(self, query):
        self.fake.requests.append({
            "method": self.command, "path": urlsplit(self.path).path, "query": query,
            "prefer": self.headers.get("Prefer", ""), "authorization": bool(self.headers.get("Authorization")),
        })

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self._record(query)
        path = parts.path
        endpoint = ("discovery" if path.endswith("/openid-configuration") else
                    "graph" if path.startswith("/v1.0/") else "")
        if answer := self.fake.hostile_at(endpoint):
            return self._hostile(answer)  # outside the lock: a drip must not hold up other requests
        with self.fake.lock:
            if match := re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", path):
                if outage := self.fake.outage_at("discovery", match[1]):
                    return self._outage(outage)
                return self._json(*self.fake.openid_configuration(match[1]))
            if match := re.fullmatch(r"/([^/]+)/oauth2/v2\.0/authorize", path):
                return self._answer(*self.fake.authorize(match[1], query))
            if match := re.fullmatch(r"/([^/]+)/v2\.0/adminconsent", path):
                return self._answer(*self.fake.admin_consent(match[1], query))
            if path.startswith("/v1.0/"):
                if throttled := self.fake.next_graph_throttle():
                    return self._graph_throttled(*throttled)
                mailbox = self.fake.mailbox_of(self.headers)
                if mailbox is None:
                    return self._json(*self.fake.graph(path, query, self.headers))
        if path.startswith("/v1.0/"):
            return self._graph_in_flight(mailbox, path, query)
        self._json(404, {"error": "not_found"})

    def _graph_in_flight(self, mailbox, path, query):
        """A Graph request of one mailbox, counted while in flight (outside the fake's lock, so requests overlap)."""
        fake = self.fake
        with fake.lock:
            in_flight = fake.graph_in_flight.get(mailbox, 0) + 1
            if fake.mailbox_concurrency_limit is not None and in_flight > fake.mailbox_concurrency_limit:
                fake.graph_concurrency_refused[mailbox] = fake.graph_concurrency_refused.get(mailbox, 0) + 1
                return self._json(429, {"error": {"code": "ApplicationThrottled",
                                                  "message": "Application is over its MailboxConcurrency limit."}},
                                  headers={"Retry-After": "1"})
            fake.graph_in_flight[mailbox] = in_flight
            fake.graph_max_in_flight[mailbox] = max(fake.graph_max_in_flight.get(mailbox, 0), in_flight)
        try:
            if fake.graph_delay:
                time.sleep(fake.graph_delay)
            with fake.lock:
                answer = fake.graph(path, query, self.headers)
        finally:
            with fake.lock:
                fake.graph_in_flight[mailbox] -= 1
        self._json(*answer)

    def do_POST(self):
        parts = urlsplit(self.path)
        if parts.path.startswith("/v1.0/subscriptions"):
            return self._subscriptions()
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        self._record({k: v for k, v in form.items() if k in ("grant_type", "scope", "redirect_uri")})
        if parts.path.endswith("/token") and (answer := self.fake.hostile_at("token")):
            return self._hostile(answer)
        with self.fake.lock:
            if match := re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", parts.path):
                if outage := self.fake.outage_at("token", match[1]):
                    return self._outage(outage)
                return self._json(*self.fake.token(match[1], form))
        self._json(404, {"error": "not_found"})

    def _subscriptions(self):
        """POST/PATCH/DELETE on /v1.0/subscriptions (microsoft_subscriptions), JSON in and out."""
        path = urlsplit(self.path).path
        self._record({})
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return self._json(400, {"error": {"code": "BadRequest", "message": "Invalid JSON."}})
        with self.fake.lock:
            status, answer = self.fake.subscription_request(self.command, path, body if isinstance(body, dict) else {},
                                                            self.headers)
        if answer is None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._json(status, answer)

    do_PATCH = do_DELETE = _subscriptions

    def _answer(self, status, body):
        if status == 302:
            self.send_response(302)
            self.send_header("Location", body)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = f"<html><body><h1>Microsoft</h1><p>{body}</p></body></html>".encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _hostile(self, answer: str):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if answer == "bomb":
            data = bombs.bomb()
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True  # the client stopped reading at its cap
            return
        self.send_header("Content-Length", "10000")
        self.end_headers()
        self.wfile.flush()
        bombs.drip(self.wfile.write)
        self.close_connection = True

    def _outage(self, outage: dict):
        status = int(outage.get("status", 503))
        data = (f"<html><head><title>{status}</title></head><body><h2>Service Unavailable</h2>"
                "<p>Sorry, but we're having trouble signing you in.</p></body></html>").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        if outage.get("retry_after") is not None:
            self.send_header("Retry-After", str(outage["retry_after"]))
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _graph_throttled(self, status: int, retry_after: str | None):
        code = {429: "TooManyRequests", 503: "serviceNotAvailable", 504: "UnknownError"}.get(status, "generalException")
        body = {"error": {"code": code, "message": "Too many requests" if status == 429 else "Service unavailable",
                          "innerError": {"date": datetime.now(timezone.utc).isoformat(),
                                         "request-id": secrets.token_hex(8)}}}
        self._json(status, body, headers={"Retry-After": retry_after} if retry_after is not None else None)

    def _json(self, status, body, headers: dict | None = None):
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
