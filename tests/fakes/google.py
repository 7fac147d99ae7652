"""A fake Google identity platform over HTTPS on 127.0.0.1: authorization, token, userinfo, Gmail sendAs.

It speaks the documented protocol (https://developers.google.com/identity/protocols/oauth2/web-server):
/o/oauth2/v2/auth redirects to the registered redirect_uri with code and state, or with
error=access_denied / admin_policy_enforced (a Workspace whose admin restricts third-party
apps); /token checks the client secret, the redirect URI and the PKCE S256 verifier, issues a
refresh token (access_type=offline) and answers invalid_grant for a revoked one; /v1/userinfo
and /gmail/v1/users/me/settings/sendAs check the bearer token.

    fake.add_user("anna@gmail.com", aliases=["anna@firma.test"])
    fake.signs_in_as = "other@gmail.com"      # the user picks another account at Google
    fake.unticks_mail_scope = True            # granular consent: mail access unticked
    fake.admin_restricted.add("firma.test")   # Workspace domain whose admin blocks the app
    fake.revoke("anna@gmail.com")             # the user removes the app's access

For Gmail's IMAP, a real Dovecot (tests.fakes.google_fixtures.gmail_dovecot) checks each
XOAUTH2 token at this fake's tokeninfo endpoint (Google's
https://oauth2.googleapis.com/tokeninfo?access_token=..., which answers the token's
email and scope, or 400 for a token that is unknown, expired or revoked), served
over plain HTTP on 127.0.0.1 (tokeninfo_base) so Dovecot needs no CA for it.
"""

import base64
import hashlib
import json
import secrets
import ssl
import tempfile
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from portal.devservers import make_certificate
from tests.fakes.local_server import listen, serve_in_background, shut

MAIL_SCOPE = "https://mail.google.com/"


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


class FakeGoogle:
    def __init__(self, *, client_id="crm.apps.googleusercontent.example", client_secret="fake-google-secret"):
        self.client_id, self.client_secret = client_id, client_secret
        self.workdir = Path(tempfile.mkdtemp(prefix="fake-google-"))
        self.cert_path, self.key_path = make_certificate(self.workdir)
        self.lock = threading.RLock()
        self.server = self.tokeninfo_server = None
        self.reset()

    def reset(self):
        with self.lock:
            self.redirect_uris: set[str] = set()
            self.users: dict[str, dict] = {}
            self.codes: dict[str, dict] = {}
            self.refresh_tokens: dict[str, str] = {}  # token -> address
            self.access_tokens: dict[str, str] = {}  # token -> address
            self.admin_restricted: set[str] = set()
            self.signs_in_as: str | None = None
            self.unticks_mail_scope = False
            self.denies = False
            self.requests: list[dict] = []
            self.tokeninfo_checks = 0

    # --- test controls ---------------------------------------------------------------------------------------
    def add_user(self, address: str, *, aliases=()):
        self.users[address.lower()] = {"sub": secrets.token_hex(8), "aliases": [a.lower() for a in aliases]}

    def revoke(self, address: str) -> None:
        with self.lock:
            for store in (self.refresh_tokens, self.access_tokens):
                for token in [t for t, a in store.items() if a == address.lower()]:
                    del store[token]

    @property
    def base(self) -> str:
        return f"https://127.0.0.1:{self.server.server_address[1]}"

    def start(self) -> "FakeGoogle":
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert_path, self.key_path)
        handler = type("Handler", (_Handler,), {"fake": self})
        self.server = listen(handler, context, do_handshake_on_connect=False)
        serve_in_background(self.server)
        self.tokeninfo_server = listen(handler)  # plain HTTP, for Dovecot's oauth2 passdb
        serve_in_background(self.tokeninfo_server)
        return self

    @property
    def tokeninfo_base(self) -> str:
        return f"http://127.0.0.1:{self.tokeninfo_server.server_address[1]}"

    def stop(self) -> None:
        for server in (self.server, self.tokeninfo_server):
            if server:
                shut(server)

    # --- protocol ---------------------------------------------------------------------------------------------
    def authorize(self, q: dict) -> tuple[int, dict, bytes]:
        if q.get("client_id") != self.client_id or q.get("redirect_uri") not in self.redirect_uris:
            return 400, {}, b"Error 400: redirect_uri_mismatch"  # Google shows an error page, no redirect
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return 400, {}, b"Error 400: invalid_request"
        # Google knows a googlemail.com address as the same gmail.com account.
        address = (self.signs_in_as or q.get("login_hint", "")).lower().replace("@googlemail.com", "@gmail.com")
        domain = address.rpartition("@")[2]
        if domain in self.admin_restricted:
            return self._back(q, error="admin_policy_enforced")
        if self.denies or address not in self.users:
            return self._back(q, error="access_denied")
        scopes = q.get("scope", "").split()
        if self.unticks_mail_scope:
            scopes = [s for s in scopes if s != MAIL_SCOPE]
        code = secrets.token_urlsafe(16)
        self.codes[code] = {"address": address, "challenge": q.get("code_challenge"), "scopes": scopes,
                            "redirect_uri": q["redirect_uri"], "offline": q.get("access_type") == "offline"}
        return self._back(q, code=code)

    @staticmethod
    def _back(q, **params):
        return 302, {"Location": f"{q['redirect_uri']}?{urlencode({**params, 'state': q.get('state', '')})}"}, b""

    def token(self, form: dict) -> tuple[int, dict]:
        if form.get("client_id") != self.client_id or form.get("client_secret") != self.client_secret:
            return 401, {"error": "invalid_client"}
        if form.get("grant_type") == "authorization_code":
            grant = self.codes.pop(form.get("code", ""), None)
            if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
                return 400, {"error": "invalid_grant"}
            if s256(form.get("code_verifier", "")) != grant["challenge"]:
                return 400, {"error": "invalid_grant", "error_description": "Invalid code verifier."}
            answer = self._issue(grant["address"], grant["scopes"])
            if grant["offline"]:
                refresh = secrets.token_urlsafe(24)
                self.refresh_tokens[refresh] = grant["address"]
                answer["refresh_token"] = refresh
            return 200, answer
        if form.get("grant_type") == "refresh_token":
            address = self.refresh_tokens.get(form.get("refresh_token", ""))
            if address is None:
                return 400, {"error": "invalid_grant", "error_description": "Token has been expired or revoked."}
            if address.rpartition("@")[2] in self.admin_restricted:
                return 400, {"error": "admin_policy_enforced"}
            return 200, self._issue(address, ["openid", "email", MAIL_SCOPE])
        return 400, {"error": "unsupported_grant_type"}

    def _issue(self, address: str, scopes) -> dict:
        access = "ya29." + secrets.token_urlsafe(24)
        self.access_tokens[access] = address
        return {"access_token": access, "expires_in": 3599, "token_type": "Bearer", "scope": " ".join(scopes)}

    def bearer(self, headers) -> str | None:
        value = headers.get("Authorization", "")
        return self.access_tokens.get(value[7:]) if value.startswith("Bearer ") else None


class _Handler(BaseHTTPRequestHandler):
    fake: FakeGoogle = None
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        with self.fake.lock:
            self.fake.requests.append({"method": "GET", "path": parts.path, "query": query})
            if parts.path == "/o/oauth2/v2/auth":
                return self._send(*self.fake.authorize(query))
            if parts.path == "/tokeninfo":
                self.fake.tokeninfo_checks += 1
                address = self.fake.access_tokens.get(query.get("access_token", ""))
                if address is None:
                    return self._json(400, {"error_description": "Invalid Value"})
                return self._json(200, {"email": address, "email_verified": "true", "expires_in": "3500",
                                        "scope": MAIL_SCOPE})
            address = self.fake.bearer(self.headers)
            if address is None:
                return self._json(401, {"error": {"code": 401, "status": "UNAUTHENTICATED"}})
            if parts.path == "/v1/userinfo":
                return self._json(200, {"sub": self.fake.users[address]["sub"], "email": address,
                                        "email_verified": True})
            if parts.path == "/gmail/v1/users/me/settings/sendAs":
                return self._json(200, {"sendAs": [{"sendAsEmail": a} for a in
                                                   [address, *self.fake.users[address]["aliases"]]]})
        self._json(404, {"error": "not_found"})

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        with self.fake.lock:
            self.fake.requests.append({"method": "POST", "path": self.path, "grant_type": form.get("grant_type")})
            if self.path == "/token":
                return self._json(*self.fake.token(form))
        self._json(404, {"error": "not_found"})

    def _json(self, status: int, body: dict):
        self._send(status, {"Content-Type": "application/json"}, json.dumps(body).encode())

    def _send(self, status: int, headers: dict, body: bytes):
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
