"""A user opens a synced HTML mail in Chromium: the text is there, no script of the mail runs, and its
remote image is fetched from its server only after "Bilder anzeigen". The mail comes from the real
Dovecot through the V2 poll (headers only) and its body on the first open."""

import base64
from email.message import EmailMessage

import pytest
from playwright.sync_api import expect

from sync.models import MessageBody, SyncedMessage
from sync.runs import sync_account
from tests.browser.conftest import TIMEOUT, sign_in
from tests.conftest import wait_for
from tests.fakes.fixtures import web  # noqa: F401 - fixture

pytestmark = pytest.mark.django_db(transaction=True)

PIXEL = base64.b64decode("R0lGODlhAQABAIAAAP///wAAACH5BAEAAAAALAAAAAABAAEAAAICRAEAOw==")  # 1x1 GIF


def _newsletter(tracker_url: str) -> bytes:
    message = EmailMessage()
    message["From"] = "Firma Beispiel <vertrieb@firma.example>"
    message["To"] = "Anna <anna@example.org>"
    message["Subject"] = "Ihr Angebot für Juli"
    message["Message-ID"] = "<newsletter-7@firma.example>"
    message.set_content("Sehr geehrte Frau Muster, anbei Ihr Angebot.")
    message.add_alternative(f"""<html><head><script>window.pwned = "head";</script>
<style>body {{ display: none }}</style></head><body onload="window.pwned = 'onload'">
<h2>Sehr geehrte Frau Muster,</h2>
<p>anbei Ihr <b>Angebot</b> für Juli.</p>
<p><img src="{tracker_url}" alt="Logo der Firma Beispiel" width="160" height="40"></p>
<p><img src="x" onerror="window.pwned = 'onerror'" alt="kaputtes Bild"></p>
<p><a href="javascript:window.pwned = 'link'">Gewinn abholen</a></p>
<script>window.pwned = "body";</script>
</body></html>""", subtype="html")
    message.add_attachment(b"%PDF-1.4 " + b"0" * 3000, maintype="application", subtype="pdf",
                           filename="Angebot Juli.pdf")
    return message.as_bytes()


def test_it_opens_an_html_mail_sanitized_and_loads_remote_images_only_on_request(
    page, live_server, imap_account, dovecot, mailbox, mail_settings, web, artifacts  # noqa: F811
):
    tracker = web({"/open.gif": (200, {"Content-Type": "image/gif"}, PIXEL)})
    dovecot.deliver(mailbox[0], _newsletter(tracker.url("/open.gif?u=anna")))
    assert sync_account(imap_account.pk) == 1
    message = SyncedMessage.objects.get(account=imap_account)
    assert not MessageBody.objects.exists()

    sign_in(page, live_server, imap_account.owner.email)
    page.get_by_role("navigation", name="Hauptnavigation").get_by_role("link", name="E-Mails").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("E-Mails")
    page.get_by_role("link", name="Ihr Angebot für Juli").click()

    expect(page.get_by_role("heading", level=1)).to_have_text("Ihr Angebot für Juli")
    body = page.get_by_test_id("mail-html")
    expect(body).to_contain_text("Sehr geehrte Frau Muster,", timeout=TIMEOUT)
    expect(body).to_contain_text("anbei Ihr Angebot für Juli.")
    expect(page.locator(".mail-meta")).to_contain_text("Firma Beispiel <vertrieb@firma.example>")
    expect(page.locator(".mail-attachments")).to_contain_text("Angebot Juli.pdf")
    expect(page.locator(".mail-attachments")).to_contain_text("application/pdf · 2,9 KB")
    # Nothing of the mail ran or loaded: no script element of the mail (the portal's only script is its own
    # static forms.js), no handler, no remote image.
    expect(page.locator("script")).to_have_count(1)
    expect(page.locator("script[src$='/static/js/forms.js']")).to_have_count(1)
    expect(body.locator("script")).to_have_count(0)
    assert page.evaluate("() => window.pwned") is None
    assert page.evaluate("() => document.title") == "Ihr Angebot für Juli · CRM"
    expect(body.get_by_text("Gewinn abholen")).to_be_visible()  # the text stays, the javascript: link is gone
    expect(body.locator("a[href^='javascript' i]")).to_have_count(0)
    remote = page.evaluate("() => Array.from(document.images).map(i => i.getAttribute('src')).filter(Boolean)")
    assert remote == []
    expect(page.get_by_test_id("images-blocked")).to_contain_text("Externe Bilder wurden blockiert")
    page.wait_for_load_state("networkidle")
    assert tracker.requests == []
    page.screenshot(path=str(artifacts / "message-1-images-blocked.png"), full_page=True)

    # With the keyboard alone: focus "Bilder anzeigen" and press Enter.
    page.get_by_role("link", name="Bilder anzeigen").focus()
    page.keyboard.press("Enter")
    expect(page.get_by_role("link", name="Externe Bilder wieder blockieren")).to_be_visible()
    expect(body.get_by_role("img", name="Logo der Firma Beispiel")).to_have_attribute(
        "src", tracker.url("/open.gif?u=anna"))
    wait_for(lambda: tracker.requests)
    assert [path for _method, path, _headers, _body in tracker.requests] == ["/open.gif?u=anna"]
    assert "Referer" not in tracker.requests[0][2]  # the tracker never learns the CRM's address
    expect(page.locator("script:not([src$='/static/js/forms.js'])")).to_have_count(0)
    assert page.evaluate("() => window.pwned") is None
    page.screenshot(path=str(artifacts / "message-2-images-shown.png"), full_page=True)

    page.set_viewport_size({"width": 390, "height": 844})  # a phone
    page.get_by_role("link", name="Externe Bilder wieder blockieren").click()
    expect(page.get_by_role("link", name="Bilder anzeigen")).to_be_visible()
    page.screenshot(path=str(artifacts / "message-3-phone.png"), full_page=True)
    # The message itself fits a phone's width (the CRM's top bar is the shell's, not this page's).
    wide = page.evaluate("""() => Array.from(document.querySelectorAll('main *'))
        .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
        .map(e => e.tagName + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))""")
    assert wide == [], "the message is wider than a phone"
    assert MessageBody.objects.filter(message=message).count() == 1
