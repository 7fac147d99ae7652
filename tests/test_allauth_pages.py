"""allauth's pages and mails speak to users formally ("Sie") and look like the rest of the portal.

Every allauth page a user of the portal can reach (the linked ones: sign-in, sign-out, password reset with
its mail; and the ones reachable by address: password change and set, sign-up open or closed, e-mail
management, re-authentication, an inactive account) is rendered in German with its error states, and its
text is searched for the informal form. allauth's own German catalog speaks with "du"; the portal's
templates and locale/de (overrides of allauth's texts) replace it, and the last test checks every allauth
text the account pages and mails can show, so an allauth upgrade that adds one fails here.
"""

import ast
import re
from pathlib import Path

import allauth
import pytest
from django.core import mail
from django.urls import reverse
from django.utils import translation

pytestmark = pytest.mark.django_db

# The informal address and the informal imperatives allauth's German catalog uses.
# Lower-case forms where the capitalised word is also a noun ("Versuche", "Rufe").
INFORMAL = re.compile(
    r"\b(?:[Dd]u|[Dd]ich|[Dd]ir|[Dd]ein\w*|[Gg]ib|[Ww]ähle|bestätige|versuche|Versuche es|[Kk]ontaktiere|[Ll]ass|"
    r"erstelle|folge|[Üü]berprüfe|[Vv]erwende|habe|rufe|[Mm]elde|[Kk]licke?)\b"
)
ALLAUTH_PO = Path(allauth.__file__).parent / "locale" / "de" / "LC_MESSAGES" / "django.po"


def visible_text(html: str) -> str:
    """What a reader sees (and a screen reader reads): tags stripped, attribute values that are read kept."""
    labels = " ".join(re.findall(r'(?:aria-label|placeholder|title|alt)="([^"]*)"', html))
    return re.sub(r"<[^>]+>", " ", html) + " " + labels


def informal_words(text: str) -> list[str]:
    return INFORMAL.findall(text)


def assert_portal_page(response) -> str:
    """The page is the portal's (its header, skip link and main), its forms and buttons in the portal's style,
    and says nothing informal."""
    assert response.status_code == 200, response.status_code
    html = response.content.decode()
    assert '<a class="skip-link" href="#main">' in html and '<header class="topbar">' in html
    main = html[html.index('<main id="main"'):html.index("</main>")]
    assert main.count("<h1") == 1
    assert all('class="form"' in tag for tag in re.findall(r"<form\b[^>]*>", main)), "a form without the portal style"
    assert all('class="button' in tag or 'class="link"' in tag for tag in re.findall(r"<button\b[^>]*>", main)), \
        "a button without the portal style"
    assert not informal_words(visible_text(html)), informal_words(visible_text(html))
    return html


def reset_link(message) -> str:
    return re.search(r"http://testserver(/accounts/password/reset/key/\S+/)", message.body).group(1)


# --- pages -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "account_login", "account_reset_password", "account_reset_password_done", "account_signup",
    "account_inactive", "account_reset_password_from_key_done",
])
def test_every_anonymous_page_is_formal_and_in_the_portal_layout(client, name):
    assert_portal_page(client.get(reverse(name)))


@pytest.mark.parametrize("name", [
    "account_logout", "account_change_password", "account_email", "account_reauthenticate",
])
def test_every_signed_in_page_is_formal_and_in_the_portal_layout(signed_in, name):
    assert_portal_page(signed_in.get(reverse(name)))


def test_the_sign_out_asks_formally(signed_in):
    html = assert_portal_page(signed_in.get(reverse("account_logout")))
    assert "<h1>Abmelden</h1>" in html and "<p>Möchten Sie sich wirklich abmelden?</p>" in html
    assert 'class="button primary">Abmelden</button>' in html

    after = signed_in.post(reverse("account_logout"), follow=True)
    assert "Sie haben sich abgemeldet." in after.content.decode()
    assert not informal_words(visible_text(after.content.decode()))


def test_the_closed_sign_up_says_who_gives_access(client):
    html = assert_portal_page(client.get(reverse("account_signup")))
    assert "<h1>Registrierung geschlossen</h1>" in html and "richtet der Support für Sie ein" in html


def test_an_open_sign_up_is_formal_with_its_errors(client, settings):
    settings.ACCOUNT_ALLOW_SIGNUP = True
    html = assert_portal_page(client.get(reverse("account_signup")))
    assert "<h1>Registrieren</h1>" in html and 'name="password1"' in html

    response = client.post(reverse("account_signup"), {
        "email": "neu@example.com", "password1": "ein-langes-passwort-1", "password2": "ein-anderes-passwort-2"})
    html = assert_portal_page(response)
    assert "Bitte geben Sie zweimal dasselbe Passwort ein." in html


def test_the_login_error_is_formal(client, user):
    html = assert_portal_page(client.post(reverse("account_login"), {"login": user.email, "password": "falsch"}))
    assert 'role="alert"' in html


def test_the_password_change_asks_formally_for_the_current_password(signed_in):
    html = assert_portal_page(signed_in.get(reverse("account_change_password")))
    assert "<h1>Passwort ändern</h1>" in html and 'name="oldpassword"' in html

    html = assert_portal_page(signed_in.post(reverse("account_change_password"), {
        "oldpassword": "", "password1": "ein-langes-passwort-1", "password2": "ein-langes-passwort-1"}))
    assert 'id="id_oldpassword_error"' in html


def test_the_password_set_page_is_formal(signed_in, user):
    user.set_unusable_password()
    user.save()
    signed_in.force_login(user)  # a new password hash ends the old session
    html = assert_portal_page(signed_in.get(reverse("account_set_password")))
    assert "<h1>Passwort festlegen</h1>" in html


def test_the_whole_password_reset_is_formal(client, user, mailoutbox):
    assert_portal_page(client.post(reverse("account_reset_password"), {"email": user.email}, follow=True))
    assert len(mailoutbox) == 1
    link = reset_link(mailoutbox[0])

    form = client.get(link, follow=True)
    html = assert_portal_page(form)
    assert "<h1>Neues Passwort festlegen</h1>" in html
    action = form.redirect_chain[-1][0] if form.redirect_chain else link
    mismatch = assert_portal_page(client.post(action, {"password1": "ein-langes-passwort-1",
                                                       "password2": "ein-anderes-passwort-2"}))
    assert "Bitte geben Sie zweimal dasselbe Passwort ein." in mismatch

    done = client.post(action, {"password1": "ein-langes-passwort-1", "password2": "ein-langes-passwort-1"},
                       follow=True)
    assert "<h1>Passwort geändert</h1>" in assert_portal_page(done)


# --- mails -------------------------------------------------------------------------------------------------


def test_the_reset_mail_is_formal_and_plain(client, user, mailoutbox):
    client.post(reverse("account_reset_password"), {"email": user.email})

    message = mailoutbox[0]
    assert message.subject.endswith("Neues Passwort für Ihren CRM-Zugang")
    assert message.body.startswith("Guten Tag,\n\nFür Ihren CRM-Zugang wurde ein neues Passwort angefordert.")
    assert "Mit freundlichen Grüßen" in message.body and reset_link(message)
    assert not informal_words(message.subject + message.body), message.body


def test_the_mail_to_an_unknown_address_is_formal_and_offers_no_sign_up(client, mailoutbox):
    client.post(reverse("account_reset_password"), {"email": "niemand@example.com"})

    message = mailoutbox[0]
    assert message.subject.endswith("Kein CRM-Zugang zu dieser Adresse")
    assert "Für niemand@example.com wurde ein neues Passwort angefordert." in message.body
    assert "wenden Sie sich bitte an den Support" in message.body and "/accounts/signup/" not in message.body
    assert not informal_words(message.subject + message.body), message.body


def test_the_mails_are_english_for_english_readers(client, user, mailoutbox):
    client.post(reverse("set_language"), {"language": "en", "next": "/"})
    client.post(reverse("account_reset_password"), {"email": user.email})
    client.post(reverse("account_reset_password"), {"email": "niemand@example.com"})

    reset, unknown = mailoutbox
    assert reset.subject.endswith("New password for your CRM account")
    assert reset.body.startswith("Hello,\n\nA new password was requested for your CRM account.")
    assert "Kind regards" in reset.body
    assert "no CRM account" in unknown.body
    assert not re.search(r"[äöüß]", reset.body + unknown.body)


def test_the_pages_are_english_for_english_readers(signed_in):
    signed_in.post(reverse("set_language"), {"language": "en", "next": "/"})
    html = signed_in.get(reverse("account_logout")).content.decode()
    assert "<h1>Sign out</h1>" in html and "Do you really want to sign out?" in html


# --- allauth's catalog -------------------------------------------------------------------------------------


def allauth_account_msgids() -> list[str]:
    """allauth's msgids that its account app (Python code, page and mail templates) can show."""
    msgids = []
    for block in ALLAUTH_PO.read_text(encoding="utf-8").split("\n\n"):
        references = " ".join(line for line in block.splitlines() if line.startswith("#:"))
        if not re.search(r"(?<!social)account/\w+\.py|templates/account/", references):
            continue
        if match := re.search(r'^msgid ((?:".*"\n)+)', block + "\n", re.MULTILINE):
            msgids.append("".join(ast.literal_eval(line) for line in match.group(1).splitlines()))
    return msgids


def test_it_overrides_every_informal_allauth_text():
    msgids = allauth_account_msgids()
    assert len(msgids) > 100, "allauth's catalog was not read"
    with translation.override("de"):
        informal = {msgid: translation.gettext(msgid) for msgid in msgids
                    if informal_words(translation.gettext(msgid))}
    assert not informal, "add these to locale/de/LC_MESSAGES/django.po in the formal form:\n" + "\n".join(
        f"{msgid!r}: {german!r}" for msgid, german in informal.items())
