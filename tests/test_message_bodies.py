"""What a user reads: the message page fetches the body from the provider on the first open, then from the cache.

IMAP against the real Dovecot, Graph and EWS against their fakes over the network. Round trips are counted
(Dovecot's logins, the fakes' requests); the HTML a user sees is sanitized (sync.sanitize) and remote images
load only on request.
"""

import base64
import email
import email.policy
import re
import tracemalloc
from datetime import datetime, timezone
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

import pytest
from django.db import DataError, InterfaceError, OperationalError
from django.urls import reverse
from django.utils import translation

from migration import services as migration_services, steps
from portal.devservers import free_port, make_message
from sync import crypto, mime
from sync.bodies import MESSAGES, message_for
from sync.exchange import client as ews
from sync.imap import bodies as imap_bodies
from sync.models import MailAccount, MessageBody, SyncedMessage
from sync.sanitize import has_blocked_images, sanitize, with_remote_images
from sync.runs import sync_account
from tests.conftest import wait_for
from tests.fakes.fixtures import EWS_PASSWORD, EWS_USER, fake_ews  # noqa: F401 - fixtures
from tests.fakes.microsoft_fixtures import (  # noqa: F401 - fixtures
    fake_microsoft_server, microsoft, ms_account, sign_in,
)

BODIES = Path(__file__).parent / "corpus" / "bodies"
HTML_MAIL = (BODIES / "html-with-script-and-remote-image.eml").read_bytes()
ATTACHMENTS_MAIL = (BODIES / "attachments-encoded-names.eml").read_bytes()
BROKEN_MAIL = (BODIES / "broken-parts.eml").read_bytes()


def _page(client, message, **query) -> str:
    response = client.get(reverse("message-detail", args=[message.pk]), query)
    assert response.status_code == 200
    return response.content.decode()


def _shown_html(page: str) -> str:
    """The mail's own HTML as the page embeds it."""
    match = re.search(r'<div class="mail-html"[^>]*>(.*?)</div>\s*(?:<details|<section|</article>)', page, re.S)
    assert match, "no HTML body on the page"
    return match[1]


# --- the sanitizer --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dirty, absent, kept", [
    ('<p>Hallo<script>alert(1)</script></p>', ["<script", "alert"], "<p>Hallo</p>"),
    ('<img src="x" onerror="alert(1)" alt="Bild">', ["onerror", "alert", 'src="x"'], 'alt="Bild"'),
    ('<p onclick="steal()" onmouseover="steal()">Text</p>', ["onclick", "onmouseover", "steal"], "<p>Text</p>"),
    ('<a href="javascript:alert(1)">Gewinn</a>', ["javascript", "alert"], ">Gewinn</a>"),
    ('<a href="JaVaScRiPt&#58;alert(1)">x</a>', ["alert", "avaScript"], ">x</a>"),
    ('<style>body{display:none}</style><p style="position:fixed">T</p>', ["<style", "display", "position"], "<p>T</p>"),
    ('<iframe src="https://evil.example/">f</iframe><p>ok</p>', ["iframe", "evil"], "<p>ok</p>"),
    ('<form action="https://evil.example/"><input name="password"><button>Los</button></form>',
     ["<form", "<input", "<button", "evil"], "Los"),
    ('<svg><script>alert(1)</script></svg><math><mi>x</mi></math>T', ["<svg", "alert", "<math"], "T"),
    ('<a href="/admin/">intern</a>', ['href="/admin/"'], ">intern</a>"),
    ('<div class="topbar" id="main">T</div>', ["topbar", "main"], "<div>T</div>"),
    ('<meta http-equiv="refresh" content="0;url=https://evil.example/"><base href="https://evil.example/">T',
     ["refresh", "<base", "evil"], "T"),
    ('<table background="https://tracker.example/bg.png"><tr><td>c</td></tr></table>', ["tracker"], "<td>c</td>"),
    ('<img data-remote-src="javascript:alert(1)">', ["javascript"], "<img>"),
])
def test_it_sanitizes_what_a_mail_may_hold(dirty, absent, kept):
    for clean in (sanitize(dirty), with_remote_images(sanitize(dirty))):
        for needle in absent:
            assert needle not in clean
        assert kept in clean


def test_it_opens_links_in_a_new_tab_without_a_referrer():
    clean = sanitize('<a href="https://firma.example/angebot?a=1&b=2">Angebot</a> <a href="mailto:a@b.de">M</a>')
    assert clean == ('<a href="https://firma.example/angebot?a=1&amp;b=2" target="_blank" rel="noopener noreferrer">'
                     'Angebot</a> <a href="mailto:a@b.de" target="_blank" rel="noopener noreferrer">M</a>')


def test_it_blocks_remote_images_until_they_are_allowed():
    stored = sanitize('<p><img alt="a&gt;b" src="https://tracker.example/o.gif?u=1&amp;x=2" width="1"></p>'
                      '<img src="cid:logo@x" alt="Logo"><img src="data:image/png;base64,AAAA" alt="Daten">')
    assert ' src="' not in stored and has_blocked_images(stored)
    assert stored == ('<p><img alt="a&gt;b" data-remote-src="https://tracker.example/o.gif?u=1&amp;x=2" width="1">'
                      '</p><img alt="Logo"><img alt="Daten">')
    assert with_remote_images(stored) == (
        '<p><img alt="a&gt;b" src="https://tracker.example/o.gif?u=1&amp;x=2" width="1"></p>'
        '<img alt="Logo"><img alt="Daten">')


def test_it_leaves_text_that_shows_html_code_alone():
    clean = sanitize('<pre>&lt;img src="https://x.example/a.png"&gt;</pre> src="y"')
    assert clean == '<pre>&lt;img src="https://x.example/a.png"&gt;</pre> src="y"'
    assert not has_blocked_images(clean) and with_remote_images(clean) == clean


# --- reading MIME -----------------------------------------------------------------------------------------------


def test_it_reads_text_html_and_attachment_names_sizes_and_types():
    content = mime.parse(ATTACHMENTS_MAIL)
    assert content.text == "Im Anhang finden Sie die Unterlagen für März."
    assert content.html == ""
    assert content.attachments == [
        {"name": "Angebot März.pdf", "content_type": "application/pdf", "size": 2048},  # RFC 2231
        {"name": "Grüße.png", "content_type": "image/png", "size": 100},  # RFC 2047 in name=
        {"name": "Preisliste übersicht.csv", "content_type": "text/csv", "size": 8},  # raw Latin-1 bytes
        {"name": "Weitergeleitet.eml", "content_type": "message/rfc822", "size": 150},  # not looked into
    ]


def test_it_reads_broken_parts_without_giving_up():
    content = mime.parse(BROKEN_MAIL)
    assert content.text == "Grüße aus Köln, € 5 Rabatt."  # unknown charset: windows-1252 guessed
    assert content.html.startswith("<p>Hallo <b>Welt</b></p>")  # broken base64: what can be read
    assert [(a["name"], a["content_type"]) for a in content.attachments] == [
        ("daten.bin", "application/octet-stream"), ("ohne-ende.zip", "application/zip")]


# --- IMAP on the real Dovecot -----------------------------------------------------------------------------------


def _logins(dovecot, address) -> int:
    log = Path(dovecot.base, "dovecot.log")
    return log.read_text(errors="replace").count(f"Login: user=<{address}>") if log.exists() else 0


def _settled_logins(dovecot, address) -> int:
    # Dovecot's log process writes asynchronously: wait until the count stops moving.
    last = [-1]

    def stable():
        now = _logins(dovecot, address)
        same, last[0] = now == last[0], now
        return same

    wait_for(stable, timeout=5, interval=0.1)
    return last[0]


@pytest.fixture
def synced(imap_account, dovecot, mailbox, mail_settings):
    """Deliver the corpus mails and import them with the V2 poll (headers only); {subject: row}."""
    dovecot.deliver(mailbox[0], HTML_MAIL, ATTACHMENTS_MAIL, BROKEN_MAIL, make_message(subject="Nur Text"))
    assert sync_account(imap_account.pk) == 4
    assert not MessageBody.objects.exists()
    return {m.subject: m for m in SyncedMessage.objects.filter(account=imap_account)}


@pytest.mark.django_db
def test_it_lists_headers_only_and_links_each_message(signed_in, synced):
    row = synced["Angebot für Sie"]
    assert (row.sender, row.recipients, row.cc) == (
        "Firma <vertrieb@firma.example>", "Anna Muster <anna@example.org>", "Chef <chef@example.org>")
    page = signed_in.get(reverse("message-list")).content.decode()
    assert f'<a href="{reverse("message-detail", args=[row.pk])}">Angebot für Sie</a>' in page
    assert not MessageBody.objects.exists()  # the list fetches nothing


@pytest.mark.django_db
def test_it_opens_an_imap_message_once_from_the_mailbox_then_from_the_cache(signed_in, synced, dovecot, mailbox):
    message = synced["Angebot für Sie"]
    before = _settled_logins(dovecot, mailbox[0])

    page = _page(signed_in, message)

    assert _settled_logins(dovecot, mailbox[0]) == before + 1
    for shown in ("Angebot für Sie", "Firma &lt;vertrieb@firma.example&gt;", "Anna Muster &lt;anna@example.org&gt;",
                  "Chef &lt;chef@example.org&gt;", "01.07.2025", "Sehr geehrte Frau Muster"):
        assert shown in page
    html = _shown_html(page)
    assert "<h1>Angebot für Sie</h1>" in html and "<b>Angebot</b>" in html
    for absent in ("<script", "pwned", "onerror", "onload", "javascript:", "<iframe", "<form", "<style", "style=",
                   "Newsletter"):
        assert absent not in html
    assert '<a href="https://firma.example/angebot" target="_blank" rel="noopener noreferrer">' in html
    assert 'data-remote-src="https://tracker.example/open.gif?u=42"' in html and "tracker.example" not in html.replace(
        'data-remote-src="https://tracker.example/open.gif?u=42"', "")
    assert "Externe Bilder wurden blockiert" in page and 'href="?images=1">Bilder anzeigen</a>' in page
    assert "Textfassung anzeigen" in page  # the text/plain alternative, one click away

    cached = MessageBody.objects.get(message=message)
    assert cached.text == "Sehr geehrte Frau Muster,\nanbei unser Angebot.\n" and "<script" not in cached.html

    again = _page(signed_in, message)
    with_images = _page(signed_in, message, images="1")
    assert _settled_logins(dovecot, mailbox[0]) == before + 1  # the cache: no second session
    assert _shown_html(again) == html
    assert '<img src="https://tracker.example/open.gif?u=42" alt="Logo der Firma"' in _shown_html(with_images)
    assert "Externe Bilder wieder blockieren" in with_images and "<script" not in _shown_html(with_images)


@pytest.mark.django_db
def test_it_tells_the_browser_to_load_nothing_foreign(signed_in, synced):
    message = synced["Angebot für Sie"]
    response = signed_in.get(reverse("message-detail", args=[message.pk]))
    csp = response["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "img-src 'self' data:;" in csp and "frame-ancestors 'none'" in csp
    assert response["Referrer-Policy"] == "no-referrer"
    allowed = signed_in.get(reverse("message-detail", args=[message.pk]), {"images": "1"})
    assert "img-src 'self' data: https: http:;" in allowed["Content-Security-Policy"]
    # No inline script on the page at all (the portal's own scripts come from static files).
    assert not re.search(r"<script(?![^>]*\bsrc=)", response.content.decode())


@pytest.mark.django_db
def test_it_shows_attachments_with_names_types_and_sizes_never_their_content(signed_in, synced):
    page = _page(signed_in, synced["Anhaenge mit Namen"])
    assert "Im Anhang finden Sie die Unterlagen für März." in page
    assert "Anhänge (4)" in page
    for name, kind, size in [("Angebot März.pdf", "application/pdf", "2,0\xa0KB"), ("Grüße.png", "image/png", "100"),
                             ("Preisliste übersicht.csv", "text/csv", "8"),
                             ("Weitergeleitet.eml", "message/rfc822", "150")]:
        assert re.search(rf'<span class="name">{re.escape(name)}</span>\s*<span class="hint">{re.escape(kind)} · '
                         rf'{re.escape(size)}', page), name
    stored = MessageBody.objects.get(message=synced["Anhaenge mit Namen"])
    assert "JVBERi" not in str(stored.attachments) and "%PDF" not in stored.text + stored.html  # no content kept
    assert set(stored.attachments[0]) == {"name", "content_type", "size"}


@pytest.mark.django_db
def test_it_shows_a_message_with_broken_parts(signed_in, synced):
    page = _page(signed_in, synced["Kaputte Teile"])
    assert "Hallo <b>Welt</b>" in page and "daten.bin" in page


@pytest.mark.django_db
def test_it_shows_plain_text_as_text(signed_in, synced):
    message = SyncedMessage.objects.get(subject="Nur Text")
    page = _page(signed_in, message)
    assert '<pre class="mail-text" data-testid="mail-text"' in page and "Hallo!" in page
    assert "mail-html" not in page and "Bilder anzeigen" not in page


@pytest.mark.django_db
def test_it_opens_a_v3_imap_message_from_another_folder(signed_in, imap_account, dovecot, mailbox, mail_settings):
    dovecot.deliver(mailbox[0], make_message(subject="Im Ordner", body="Im Projektordner."), folder="Projekte")
    MailAccount.objects.filter(pk=imap_account.pk).update(engine="v3", status="active")
    assert sync_account(imap_account.pk) == 1
    message = SyncedMessage.objects.get(subject="Im Ordner")
    assert message.folder == "Projekte" and message.imported_by == "v3"
    assert "Im Projektordner." in _page(signed_in, message)


def _move(dovecot, address, subject, target):
    client = dovecot.client(address)
    try:
        client.select_folder("INBOX")
        uids = client.search(["SUBJECT", subject])
        if target:
            if not client.folder_exists(target):
                client.create_folder(target)
            client.copy(uids, target)
        client.delete_messages(uids)
        client.expunge()
    finally:
        client.logout()


@pytest.mark.django_db
def test_it_finds_a_message_moved_to_another_folder_by_its_message_id(signed_in, synced, dovecot, mailbox):
    message = synced["Anhaenge mit Namen"]
    _move(dovecot, mailbox[0], "Anhaenge mit Namen", "Ablage Köln")  # a non-ASCII name: modified UTF-7
    page = _page(signed_in, message)
    assert "Im Anhang finden Sie die Unterlagen für März." in page


@pytest.mark.django_db
def test_it_finds_a_message_in_its_folder_under_a_new_uid(signed_in, synced, dovecot, mailbox):
    # Expunged and appended again (a client "restoring" it, a server rebuilding its index): same folder, new UID.
    message = synced["Anhaenge mit Namen"]
    _move(dovecot, mailbox[0], "Anhaenge mit Namen", None)
    dovecot.deliver(mailbox[0], ATTACHMENTS_MAIL)
    assert "Im Anhang finden Sie die Unterlagen für März." in _page(signed_in, message)


@pytest.mark.django_db
def test_it_never_shows_another_message_that_holds_the_stored_uid(signed_in, synced):
    # As after a UIDVALIDITY change: the stored UID now names another message.
    mine, other = synced["Nur Text"], synced["Angebot für Sie"]
    SyncedMessage.objects.filter(pk=mine.pk).update(provider_uid=other.provider_uid)
    mine.refresh_from_db()
    page = _page(signed_in, mine)
    assert "Hallo!" in page and "Sehr geehrte Frau Muster" not in page


@pytest.mark.django_db
def test_it_says_so_when_the_message_is_no_longer_in_the_mailbox(signed_in, synced, dovecot, mailbox):
    message = synced["Nur Text"]
    _move(dovecot, mailbox[0], "Nur Text", None)
    page = _page(signed_in, message)
    assert "Diese Nachricht ist im Postfach nicht mehr vorhanden." in page
    assert "Nur Text" in page and "kunde@example.org" in page  # the headers are still there
    assert not MessageBody.objects.filter(message=message).exists()


@pytest.mark.django_db
def test_it_shows_a_mailbox_outage_and_caches_nothing_until_it_works(signed_in, synced, dovecot, imap_account):
    message = synced["Nur Text"]
    MailAccount.objects.filter(pk=imap_account.pk).update(imap_port=free_port())  # nothing listens there
    page = _page(signed_in, message)
    assert "Das Postfach ist gerade nicht erreichbar." in page and 'role="alert"' in page
    assert not MessageBody.objects.exists()
    MailAccount.objects.filter(pk=imap_account.pk).update(imap_port=dovecot.tls_port)
    assert "Hallo!" in _page(signed_in, message)


@pytest.mark.django_db
def test_a_refused_password_stops_further_logins_of_a_v3_account(signed_in, synced, dovecot, mailbox, imap_account):
    message = synced["Nur Text"]
    MailAccount.objects.filter(pk=imap_account.pk).update(
        engine="v3", secret_encrypted=crypto.encrypt_json({"password": "veraltet"}))
    before = _settled_logins(dovecot, mailbox[0])
    page = _page(signed_in, message)
    assert "Das Postfach hat die Anmeldung abgelehnt." in page
    account = MailAccount.objects.get(pk=imap_account.pk)
    assert (account.status, account.last_sync_error) == ("reconnect", "auth_failed")
    page = _page(signed_in, message)  # asks nobody: a refused password is not tried again
    assert "Das Postfach hat die Anmeldung abgelehnt." in page
    assert _settled_logins(dovecot, mailbox[0]) == before
    assert not MessageBody.objects.exists()


# --- who may read what ------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_answers_404_for_another_users_message_and_asks_no_provider(client, other_user, synced, dovecot, mailbox):
    message = synced["Angebot für Sie"]
    before = _settled_logins(dovecot, mailbox[0])
    client.force_login(other_user)
    response = client.get(reverse("message-detail", args=[message.pk]))
    assert response.status_code == 404 and "Sehr geehrte" not in response.content.decode()
    assert client.get(reverse("message-detail", args=[10**9])).status_code == 404
    assert _settled_logins(dovecot, mailbox[0]) == before and not MessageBody.objects.exists()


@pytest.mark.django_db
def test_it_requires_a_login(client, synced):
    url = reverse("message-detail", args=[synced["Nur Text"].pk])
    response = client.get(url)
    assert response.status_code == 302 and response.url == f"{reverse('account_login')}?next={url}"


# --- Microsoft Graph ----------------------------------------------------------------------------------------------


@pytest.fixture
def graph_account(client, user, ms_account, microsoft):
    """anna@contoso.com, migrated to V3 through the real sign-in."""
    migration = migration_services.start_migration(user=user, account=ms_account)
    steps.run_migration(migration.pk)
    client.force_login(user)
    sign_in(client, microsoft, migration)
    assert steps.run_migration(migration.pk) == "done"
    ms_account.refresh_from_db()
    return ms_account


def _graph_reads(fake) -> list[str]:
    return [r["path"] for r in fake.requests if r["path"].startswith("/v1.0/me/messages")]


@pytest.mark.django_db
def test_it_opens_a_graph_message_with_two_requests_then_from_the_cache(client, graph_account, microsoft):
    delivered = microsoft.deliver(graph_account.address, subject="Graph-Angebot")
    microsoft.set_content(
        delivered, html='<p>Hallo aus <b>Graph</b></p><script>alert(1)</script><img src="https://t.example/p.gif">',
        attachments=[("Vertrag.pdf", "application/pdf", 1536000)])
    sync_account(graph_account.pk)
    message = SyncedMessage.objects.get(account=graph_account, subject="Graph-Angebot")
    assert message.provider_id and not _graph_reads(microsoft)

    page = _page(client, message)
    assert _graph_reads(microsoft) == [f"/v1.0/me/messages/{message.provider_id}",
                                       f"/v1.0/me/messages/{message.provider_id}/attachments"]
    reads = [r for r in microsoft.requests if r["path"].startswith("/v1.0/me/messages")]
    assert reads[0]["query"]["$select"] == "body,hasAttachments"
    assert reads[1]["query"]["$select"] == "name,contentType,size"  # never contentBytes
    assert all('IdType="ImmutableId"' in r["prefer"] for r in reads)
    html = _shown_html(page)
    assert "Hallo aus <b>Graph</b>" in html and "<script" not in html and ' src="https://t.example' not in html
    assert "Vertrag.pdf" in page and "application/pdf · 1,5\xa0MB" in page

    _page(client, message)
    assert len(_graph_reads(microsoft)) == 2  # cached


@pytest.mark.django_db
def test_it_finds_a_message_v2_imported_by_its_message_id(client, graph_account, microsoft):
    delivered = microsoft.deliver(graph_account.address, subject="Von V2")
    microsoft.set_content(delivered, text="Nur Text\r\naus Exchange.")
    message = SyncedMessage.objects.create(
        account=graph_account, dedup_key=delivered.internet_message_id.strip("<>"),
        message_id=delivered.internet_message_id, folder="INBOX", subject="Von V2", imported_by="v2")
    page = _page(client, message)
    assert "Nur Text\naus Exchange." in page
    lookup = next(r for r in microsoft.requests if r["path"] == "/v1.0/me/messages")
    assert lookup["query"]["$filter"] == f"internetMessageId eq '{delivered.internet_message_id}'"


@pytest.mark.django_db
def test_it_refreshes_a_refused_graph_token_once_and_keeps_the_new_cache(client, graph_account, microsoft):
    delivered = microsoft.deliver(graph_account.address, subject="Nach Ablauf")
    microsoft.set_content(delivered, text="Trotzdem lesbar.")
    sync_account(graph_account.pk)
    message = SyncedMessage.objects.get(account=graph_account, subject="Nach Ablauf")
    before = MailAccount.objects.get(pk=graph_account.pk).token_cache_encrypted
    microsoft.expire_access_tokens()  # Microsoft refuses the token MSAL still thinks valid: 401, refresh, retry
    assert "Trotzdem lesbar." in _page(client, message)
    assert MailAccount.objects.get(pk=graph_account.pk).token_cache_encrypted != before


@pytest.mark.django_db
def test_it_says_so_when_graph_no_longer_has_the_message(client, graph_account, microsoft):
    message = SyncedMessage.objects.create(account=graph_account, dedup_key="weg@x", message_id="<weg@x>",
                                           folder="INBOX", subject="Gelöscht", provider_id="imm-999", imported_by="v3")
    page = _page(client, message)
    assert "Diese Nachricht ist im Postfach nicht mehr vorhanden." in page and "Gelöscht" in page
    assert not MessageBody.objects.exists()


@pytest.mark.django_db
def test_a_revoked_grant_asks_to_reconnect(client, graph_account, microsoft):
    message = SyncedMessage.objects.create(account=graph_account, dedup_key="a@x", folder="INBOX", subject="A",
                                           provider_id="imm-1", imported_by="v3")
    microsoft.revoke_refresh_tokens(graph_account.address)
    microsoft.expire_access_tokens()
    page = _page(client, message)
    assert "Bitte verbinden Sie das Konto" in page
    assert MailAccount.objects.get(pk=graph_account.pk).status == "reconnect"
    calls = len(microsoft.requests)
    _page(client, message)
    assert len(microsoft.requests) == calls  # not tried again until the user re-connects


# --- Exchange (EWS) --------------------------------------------------------------------------------------------


@pytest.fixture
def exchange_account(db, make_account, user, fake_ews):
    account = make_account(user, "anna@firma.test", provider_kind="exchange", engine="v3")
    server = ews.EwsSettings(url=fake_ews.url, username=EWS_USER, address=account.address, auth_type="basic",
                             ca_pem=fake_ews.cert_pem)
    ews.apply_to_account(account, server=server, password=EWS_PASSWORD)
    account.save()
    return account


def _ews_row(account, item) -> SyncedMessage:
    # What the EWS engine stores for an item: its headers and its item id.
    return SyncedMessage.objects.create(
        account=account, dedup_key=item["message_id"].strip("<>"), message_id=item["message_id"], folder="INBOX",
        subject=item["subject"], sender=item["sender"], received_at=item["received"], provider_id=item["id"],
        imported_by="v3")


@pytest.mark.django_db
def test_it_opens_an_exchange_message_with_one_getitem_then_from_the_cache(signed_in, exchange_account, fake_ews):
    item = fake_ews.deliver("inbox", subject="Exchange-Angebot", received=datetime(2025, 7, 1, 9, tzinfo=timezone.utc))
    item["body"] = ("HTML", '<p>Hallo aus <i>Exchange</i></p><img src="http://t.example/p.gif" onerror="x()">')
    item["attachments"] = [("Preise.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet", 5300)]
    message = _ews_row(exchange_account, item)
    fake_ews.calls.clear()

    page = _page(signed_in, message)
    assert [c for c in fake_ews.calls if c != "ConvertId"] == ["GetItem"]  # ConvertId: the server's version
    html = _shown_html(page)
    assert "Hallo aus <i>Exchange</i>" in html and "onerror" not in html and ' src="http://t.example' not in html
    assert "Preise.xlsx" in page and "5,2\xa0KB" in page

    fake_ews.calls.clear()
    _page(signed_in, message)
    assert fake_ews.calls == []  # cached


@pytest.mark.django_db
def test_it_finds_an_exchange_message_v2_imported_by_its_message_id(signed_in, exchange_account, fake_ews):
    fake_ews.deliver("inbox", subject="Anderes")
    item = fake_ews.deliver("inbox", subject="Von V2 übernommen")
    item["body"] = ("Text", "Aus der Zeit vor V3.")
    message = SyncedMessage.objects.create(
        account=exchange_account, dedup_key=item["message_id"].strip("<>"), message_id=item["message_id"],
        folder="INBOX", subject=item["subject"], provider_uid=17, imported_by="v2")  # V2: an IMAP UID, no item id
    fake_ews.calls.clear()
    page = _page(signed_in, message)
    assert "Aus der Zeit vor V3." in page
    assert [c for c in fake_ews.calls if c in ("FindItem", "GetItem")] == ["FindItem", "GetItem"]


@pytest.mark.django_db
def test_it_says_so_when_exchange_no_longer_has_the_item(signed_in, exchange_account, fake_ews):
    item = fake_ews.deliver("inbox", subject="Bald weg")
    message = _ews_row(exchange_account, item)
    fake_ews.folders["inbox"].remove(item)
    assert "Diese Nachricht ist im Postfach nicht mehr vorhanden." in _page(signed_in, message)
    assert not MessageBody.objects.exists()


@pytest.mark.django_db
def test_it_shows_an_exchange_error_instead_of_failing(signed_in, exchange_account, fake_ews):
    item = fake_ews.deliver("inbox", subject="Störung")
    message = _ews_row(exchange_account, item)
    fake_ews.failures["GetItem"] = "ErrorMailboxStoreUnavailable"
    page = _page(signed_in, message)
    assert "Der Inhalt dieser Nachricht konnte nicht geladen werden." in page and "Störung" in page
    assert not MessageBody.objects.exists()
    del fake_ews.failures["GetItem"]
    item["body"] = ("Text", "Wieder da.")
    assert "Wieder da." in _page(signed_in, message)


# --- language ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [*MESSAGES, "unknown"])
def test_it_translates_every_body_error(code):
    with translation.override("de"):
        german = str(message_for(code))
    with translation.override("en"):
        english = str(message_for(code))
    assert german and english and german != english
    assert not any(umlaut in english for umlaut in "äöüÄÖÜß")


@pytest.mark.django_db
def test_it_shows_the_message_page_in_english(signed_in, synced):
    signed_in.post(reverse("set_language"), {"language": "en", "next": "/"})
    page = _page(signed_in, synced["Angebot für Sie"])
    assert "Show images" in page and "Back to emails" in page and "Show plain text version" in page
    assert "Bilder anzeigen" not in page


# --- NUL bytes, lone surrogates and a cache the database refuses ----------------------------------------------------

UTF16_TEXT = "Grüße aus Köln,\r\nIhr Team"


def _nul_mail(subject: str, parts: list[tuple[str, bytes]]) -> bytes:
    """A multipart/mixed message whose parts are (MIME header lines, encoded body)."""
    head = (f"From: kunde@example.org\r\nTo: anna@example.org\r\nSubject: {subject}\r\n"
            f"Date: Tue, 01 Jul 2025 12:00:00 +0000\r\nMessage-ID: <{subject.replace(' ', '-')}@example.org>\r\n"
            'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="nul"\r\n\r\n').encode()
    body = b"".join(b"--nul\r\n" + header.encode() + b"\r\n\r\n" + content + b"\r\n" for header, content in parts)
    return head + body + b"--nul--\r\n"


NUL_MAILS = {
    # Outlook and some scanners write UTF-16 text in Base64 and name no charset.
    "UTF-16 ohne Zeichensatz": _nul_mail("UTF-16 ohne Zeichensatz", [
        ("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64",
         base64.encodebytes(UTF16_TEXT.encode("utf-16-le")))]),
    "UTF-16 mit BOM": _nul_mail("UTF-16 mit BOM", [
        ("Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64",
         base64.encodebytes(UTF16_TEXT.encode("utf-16")))]),
    "QP mit Null": _nul_mail("QP mit Null", [
        ("Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable",
         b"Hallo=00 Welt=\r\n=00!"),
        ("Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable",
         b"<p>Hallo=00 <b>Welt</b>=C3=BC=00</p>"),
        ("Content-Type: application/pdf\r\nContent-Disposition: attachment; filename*=utf-8''Ver%00trag.pdf\r\n"
         "Content-Transfer-Encoding: base64", base64.encodebytes(b"%PDF-1.4 x"))]),
}


@pytest.mark.django_db
@pytest.mark.parametrize("subject, text, html, names", [
    ("UTF-16 ohne Zeichensatz", "Grüße aus Köln,\nIhr Team", "", []),
    ("UTF-16 mit BOM", "Grüße aus Köln,\nIhr Team", "", []),
    ("QP mit Null", "Hallo Welt!", "<p>Hallo <b>Welt</b>ü</p>", ["Vertrag.pdf"]),
])
def test_it_shows_and_caches_imap_bodies_that_hold_nul(signed_in, imap_account, dovecot, mailbox, mail_settings,
                                                        subject, text, html, names):
    dovecot.deliver(mailbox[0], NUL_MAILS[subject])
    assert sync_account(imap_account.pk) == 1
    message = SyncedMessage.objects.get(account=imap_account, subject=subject)
    page = _page(signed_in, message)
    cached = MessageBody.objects.get(message=message)
    assert (cached.text, cached.html, [a["name"] for a in cached.attachments]) == (text, html, names)
    assert "\x00" not in page and (text.split(",")[0] if text else html) in page.replace("&lt;", "<").replace(
        "&gt;", ">")


@pytest.mark.django_db
def test_it_shows_and_caches_graph_bodies_and_attachment_names_that_hold_nul(client, graph_account, microsoft):
    delivered = microsoft.deliver(graph_account.address, subject="Null von Graph")
    microsoft.set_content(delivered, html="<p>Hallo\u0000 aus <b>Graph</b> \ud83d</p>",
                          attachments=[("Ver\u0000trag\udc80.pdf", "application/pdf\u0000", 1536)])
    sync_account(graph_account.pk)
    message = SyncedMessage.objects.get(account=graph_account, subject="Null von Graph")
    page = _page(client, message)
    assert "Hallo aus <b>Graph</b>" in _shown_html(page) and "Vertrag?.pdf" in page
    cached = MessageBody.objects.get(message=message)
    assert cached.html == "<p>Hallo aus <b>Graph</b> ?</p>"
    assert cached.attachments == [{"name": "Vertrag?.pdf", "content_type": "application/pdf", "size": 1536}]

    text_only = microsoft.deliver(graph_account.address, subject="Text mit Null")
    microsoft.set_content(text_only, text="Zeile\u00001\r\nZeile 2")
    sync_account(graph_account.pk)
    message = SyncedMessage.objects.get(account=graph_account, subject="Text mit Null")
    assert "Zeile1\nZeile 2" in _page(client, message)
    assert MessageBody.objects.get(message=message).text == "Zeile1\nZeile 2"


@pytest.mark.django_db
@pytest.mark.parametrize("error", [OperationalError("could not extend file: No space left on device"),
                                   DataError("value too long"), InterfaceError("connection already closed")])
def test_it_shows_the_body_uncached_when_the_database_refuses_to_keep_it(signed_in, synced, monkeypatch, error):
    message = synced["Nur Text"]

    def refuse(*args, **kwargs):
        raise error

    monkeypatch.setattr(MessageBody.objects, "get_or_create", refuse)
    page = _page(signed_in, message)
    assert "Hallo!" in page and str(MESSAGES["failed"]) not in page
    monkeypatch.undo()
    assert not MessageBody.objects.filter(message=message).exists()
    assert "Hallo!" in _page(signed_in, message)  # the next open caches it
    assert MessageBody.objects.filter(message=message).exists()


# --- big IMAP messages: only the structure, the part headers and the text parts are fetched ---------------------------


def _logouts(dovecot, address) -> list[int]:
    """The bytes Dovecot sent in each finished session of `address` ("Logged out in=... out=N")."""
    log = Path(dovecot.base, "dovecot.log")
    text = log.read_text(errors="replace") if log.exists() else ""
    return [int(n) for n in re.findall(rf"imap\({re.escape(address)}\).*Logged out in=\d+ out=(\d+)", text)]


def _sent_in_next_session(dovecot, address, open_page) -> int:
    before = len(_logouts(dovecot, address))
    open_page()
    wait_for(lambda: len(_logouts(dovecot, address)) > before, timeout=5, interval=0.05)
    return _logouts(dovecot, address)[before]


def _big_mail(subject: str, attachment_bytes: int, *, text: str = "Der Plan ist im Anhang.") -> bytes:
    message = EmailMessage()
    message["From"], message["To"], message["Subject"] = "kunde@example.org", "anna@example.org", subject
    message["Date"] = "Tue, 01 Jul 2025 13:00:00 +0000"
    message["Message-ID"] = make_msgid(domain="example.org")
    message.set_content(text)
    message.add_alternative(f"<p>{text}</p><script>alert(1)</script>", subtype="html")
    message.add_attachment(bytes(attachment_bytes), maintype="application", subtype="pdf",
                           filename="Großer Plan März.pdf")
    message.add_attachment(email.message_from_bytes(make_message(subject="Weitergeleitet groß"),
                                                    policy=email.policy.default))
    return message.as_bytes()


@pytest.mark.django_db
def test_it_opens_a_big_imap_message_without_fetching_its_attachments(signed_in, imap_account, dovecot, mailbox,
                                                                      mail_settings):
    big = 6 * 1024 * 1024  # 6 MB of PDF: 8.3 MB as Base64
    dovecot.deliver(mailbox[0], _big_mail("Großer Anhang", big))
    assert sync_account(imap_account.pk) == 1
    message = SyncedMessage.objects.get(account=imap_account, subject="Großer Anhang")

    tracemalloc.start()
    try:
        sent = _sent_in_next_session(dovecot, mailbox[0], lambda: _page(signed_in, message))
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sent < 100_000, sent  # the structure, part headers and text; not the 8 MB of the attachment
    assert peak < 5_000_000, peak
    cached = MessageBody.objects.get(message=message)
    assert cached.text == "Der Plan ist im Anhang.\n"
    assert cached.html == "<p>Der Plan ist im Anhang.</p>\n"
    (pdf, forwarded) = cached.attachments
    assert (pdf["name"], pdf["content_type"]) == ("Großer Plan März.pdf", "application/pdf")
    assert abs(pdf["size"] - big) < 100  # counted back from the Base64 size
    assert (forwarded["name"], forwarded["content_type"]) == ("Weitergeleitet groß.eml", "message/rfc822")
    page = _page(signed_in, message)
    assert "Großer Plan März.pdf" in page and "application/pdf · 6,0\xa0MB" in page


@pytest.mark.django_db
def test_it_shows_the_start_of_a_huge_text_and_says_it_is_cut(signed_in, imap_account, dovecot, mailbox,
                                                              mail_settings, monkeypatch):
    line = "Zeile mit Text, die sich wiederholt.\n"
    single = make_message(subject="Riesiger Text", body=line * 80_000)  # one text/plain part, ~3 MB
    dovecot.deliver(mailbox[0], single, _big_mail("Langer Text mit Anhang", 2_000_000, text=line * 60_000))
    assert sync_account(imap_account.pk) == 2
    for subject in ("Riesiger Text", "Langer Text mit Anhang"):
        message = SyncedMessage.objects.get(account=imap_account, subject=subject)
        sent = _sent_in_next_session(dovecot, mailbox[0], lambda: _page(signed_in, message))
        assert sent < 2 * imap_bodies.TEXT_MAX + 100_000, (subject, sent)
        cached = MessageBody.objects.get(message=message)
        assert cached.text.startswith(line * 100) and cached.text.endswith("\n[…]")
        assert len(cached.text) < imap_bodies.TEXT_MAX + 1000


@pytest.mark.django_db
def test_it_shows_a_big_message_as_it_shows_a_small_one(signed_in, synced, dovecot, mailbox, monkeypatch):
    """The corpus once whole (BODY[]) and once piece by piece (BODYSTRUCTURE, part headers, text parts)."""
    whole = {}
    for subject, message in synced.items():
        whole[subject] = _page(signed_in, message) and MessageBody.objects.get(message=message)
    MessageBody.objects.all().delete()
    monkeypatch.setattr(imap_bodies, "WHOLE_MAX", 0)
    for subject, message in synced.items():
        _page(signed_in, message)
        pieces = MessageBody.objects.get(message=message)
        assert (pieces.text, pieces.html) == (whole[subject].text, whole[subject].html), subject
        assert [(a["name"], a["content_type"]) for a in pieces.attachments] == [
            (a["name"], a["content_type"]) for a in whole[subject].attachments], subject
        for got, exact in zip(pieces.attachments, whole[subject].attachments):
            assert abs(got["size"] - exact["size"]) <= max(8, exact["size"] // 20), (subject, got, exact)
