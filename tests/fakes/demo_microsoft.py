"""The demo's Microsoft 365 tenant: FakeMicrosoft on 127.0.0.1:1443, run by ./scripts/run.

    python -m tests.fakes.demo_microsoft              serve until Ctrl-C or SIGTERM
    python -m tests.fakes.demo_microsoft --deliver 3  3 new messages for the demo user, then exit

A demo double like the demo Dovecot (manage.py demo_mailserver), not product
code: one tenant (demo-m365.localhost) whose admin has consented, one user
(DEMO_M365_USER) whose inbox holds the demo seed mail with the Message-IDs
demo_data's stand-in V2 history uses, so the V3 handoff dedupes against it.
Its certificate, key and state live in PORTAL_DATA_DIR/demo-microsoft: the
state file keeps tokens, subscriptions and delivered mail across restarts, so
an account migrated yesterday still syncs and gets its notifications.
--deliver talks to a small admin endpoint (plain HTTP, 127.0.0.1:1444, JSON
only); each delivered message makes the fake POST a change notification with
the subscription's clientState to the portal, as Graph does.
"""

import argparse
import json
import os
import shutil
import signal
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from email.utils import parseaddr
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import requests

from portal.devservers import make_certificate
from tests.fakes.local_server import listen, serve_in_background, shut
from tests.fakes.microsoft import FakeMicrosoft

DEMO_M365_USER = "ben@demo-m365.localhost"  # migration.demo.DEMO_M365_ACCOUNT names the same mailbox
DEMO_M365_TENANT = "5d3e9a41-7c2b-4f08-9e61-2a4b6c8d0e1f"
DEMO_M365_OID = "0d3e00be000000000000000000000001"  # fixed: folder ids derive from it and must survive restarts
PORT = 1443
ADMIN_PORT = 1444
CERT_DAYS_KEPT = 20  # make_certificate issues 30-day certificates: a kept one is replaced well before it runs out


def data_dir() -> Path:
    return Path(os.environ.get("PORTAL_DATA_DIR") or Path.cwd() / "var") / "demo-microsoft"


def _certificate(base: Path) -> tuple[Path, Path]:
    cert, key = base / "cert.pem", base / "key.pem"
    if cert.is_file() and key.is_file() and time.time() - cert.stat().st_mtime < CERT_DAYS_KEPT * 86400:
        return cert, key
    return make_certificate(base)


class DemoTenant:
    """The fake with the demo tenant and user, its state file and the admin endpoint."""

    def __init__(self, *, base: Path, site_url: str, redirect_paths: tuple[str, ...], seed: list[dict]):
        base.mkdir(parents=True, exist_ok=True)
        self.state_file = base / "state.json"
        self.fake = FakeMicrosoft()
        shutil.rmtree(self.fake.workdir, ignore_errors=True)  # its throw-away certificate: ours is kept
        self.fake.cert_path, self.fake.key_path = _certificate(base)
        self.fake.page_size = 25
        self.fake.redirect_uris = {site_url.rstrip("/") + path for path in redirect_paths}
        tenant = self.fake.add_tenant(DEMO_M365_TENANT, {"demo-m365.localhost"}, admin_consented=True,
                                      service_principal=True)
        self.fake.add_user(DEMO_M365_USER, tenant, oid=DEMO_M365_OID)
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else {}
        self.delivered = state.get("delivered") or seed
        # Replayed in order, the messages get the sequence numbers they had: old delta links stay valid.
        for item in self.delivered:
            self._deliver_quietly(item)
        self.fake.refresh_tokens.update(state.get("refresh_tokens", {}))
        self.fake.access_tokens.update(state.get("access_tokens", {}))
        for sub in state.get("subscriptions", {}).values():
            self.fake.subscriptions[sub["id"]] = {**sub, "expires": datetime.fromisoformat(sub["expires"])}
        self.admin = None
        self._saved = ""

    def _deliver_quietly(self, item: dict):
        name, address = parseaddr(item["sender"])
        with self.fake.lock:  # no subscription exists yet while replaying: nothing is announced
            return self.fake.deliver(DEMO_M365_USER, subject=item["subject"], sender=address, sender_name=name,
                                     internet_message_id=item["message_id"], to=(DEMO_M365_USER,),
                                     received=datetime.fromisoformat(item["received"]))

    def deliver(self, count: int) -> list[int]:
        """count new messages; returns the HTTP status of each notification the portal answered."""
        statuses = []
        for number in range(1, count + 1):
            now = datetime.now(timezone.utc).replace(microsecond=0)
            item = {"subject": f"Neue Nachricht {number} ({now.astimezone():%H:%M:%S})",
                    "sender": "Demo-Absender <absender@demo.localhost>", "received": now.isoformat(),
                    "message_id": f"<neu-{now:%Y%m%d%H%M%S}-{number}.ben@demo-m365.localhost>"}
            with self.fake.lock:
                self.delivered.append(item)
            before = len(self.fake.posts_to_portal)
            self.fake.deliver(DEMO_M365_USER, subject=item["subject"], sender="absender@demo.localhost",
                              sender_name="Demo-Absender", internet_message_id=item["message_id"],
                              to=(DEMO_M365_USER,), received=now)
            statuses += [post["status"] for post in self.fake.posts_to_portal[before:]]
        self.save()
        return statuses

    def save(self) -> None:
        """Write the state file when it changed (atomically: a crash leaves the old one)."""
        with self.fake.lock:
            state = {"delivered": self.delivered, "refresh_tokens": self.fake.refresh_tokens,
                     "access_tokens": self.fake.access_tokens,
                     "subscriptions": {key: {**sub, "expires": sub["expires"].isoformat()}
                                       for key, sub in self.fake.subscriptions.items()}}
            text = json.dumps(state, indent=1, sort_keys=True)
            # A long-running demo must not keep every request it ever served.
            del self.fake.requests[:-500], self.fake.posts_to_portal[:-500]
        if text != self._saved:
            temporary = self.state_file.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(self.state_file)
            self._saved = text

    def start(self, *, port: int = PORT, admin_port: int = ADMIN_PORT) -> "DemoTenant":
        self.fake.start(port=port)
        demo = self

        class Admin(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                # JSON only: a web page in the user's browser cannot send that to 127.0.0.1 without a preflight.
                if self.path != "/deliver" or self.headers.get("Content-Type") != "application/json":
                    return self._send(404, {"error": "POST /deliver with a JSON body"})
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                count = int(body.get("count", 1))
                self._send(200, {"delivered": count, "notifications": demo.deliver(count)})

            def _send(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.admin = listen(Admin, port=admin_port)
        serve_in_background(self.admin)
        return self

    def stop(self) -> None:
        if self.admin:
            shut(self.admin)
        self.fake.stop()
        self.save()


def seed_of(messages, now: datetime) -> list[dict]:
    """migration.demo.SEED_MESSAGES as the demo user's first mail (those with a Message-ID)."""
    return [{"subject": m.subject, "sender": m.sender, "message_id": m.message_id(DEMO_M365_USER),
             "received": (now - m.age).replace(microsecond=0).isoformat()} for m in messages if m.with_message_id]


def deliver(count: int, *, admin_port: int = ADMIN_PORT) -> dict:
    """Ask the running demo tenant for count new messages; raises requests.RequestException when it is down."""
    response = requests.post(f"http://127.0.0.1:{admin_port}/deliver", json={"count": count}, timeout=60)
    response.raise_for_status()
    return response.json()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fakes.demo_microsoft", description=__doc__.split("\n")[0])
    parser.add_argument("--deliver", type=int, metavar="N", help="deliver N new messages to the demo user and exit")
    parser.add_argument("--port", type=int, default=PORT)
    parser.add_argument("--admin-port", type=int, default=ADMIN_PORT)
    args = parser.parse_args(argv)
    if args.deliver is not None:
        try:
            answer = deliver(max(args.deliver, 1), admin_port=args.admin_port)
        except requests.RequestException as error:
            print(f"the demo Microsoft tenant does not answer on 127.0.0.1:{args.admin_port} ({type(error).__name__})"
                  ": is ./scripts/run running?", file=sys.stderr)
            return 1
        sent = answer["notifications"]
        print(f"{answer['delivered']} new message(s) for {DEMO_M365_USER}; "
              + (f"change notifications answered {sent}" if sent else
                 "no subscription yet (migrate the account first): it arrives at the next poll"))
        return 0
    base = data_dir()
    base.mkdir(parents=True, exist_ok=True)
    _certificate(base)  # before Django reads the settings: MS_CA_FILE must name an existing file
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")
    import django

    django.setup()
    from django.conf import settings
    from django.urls import reverse

    from migration.demo import SEED_MESSAGES

    demo = DemoTenant(base=base, site_url=settings.SITE_URL, seed=seed_of(SEED_MESSAGES, datetime.now(timezone.utc)),
                      redirect_paths=(reverse("microsoft-callback"), reverse("microsoft-admin-callback")))
    try:
        demo.start(port=args.port, admin_port=args.admin_port)
    except OSError as error:
        print(f"127.0.0.1:{args.port} or :{args.admin_port} is in use ({error.strerror}): is the demo Microsoft "
              "tenant running already?", file=sys.stderr)
        return 1
    print(f"demo Microsoft 365 on {demo.fake.base} (admin http://127.0.0.1:{args.admin_port}), user "
          f"{DEMO_M365_USER}, client id {demo.fake.client_id}", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1):
            demo.save()
    except KeyboardInterrupt:
        pass
    demo.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
