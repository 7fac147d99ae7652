"""Texts users read on the login step: each thing said once, and the port explained where it is typed."""

import re

import pytest
from django.urls import reverse
from django.utils import translation

from migration import errors
from migration.models import Migration, Status
from migration.selectors import current_campaign
from sync.providers import IMAP_PROVIDERS

pytestmark = pytest.mark.django_db

PAIRS = "993 mit SSL/TLS"


def _text(html: str) -> str:
    main = html[html.index('<main id="main"'):html.index("</main>")]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", main))


def test_the_ionos_choice_says_once_that_the_mailbox_may_be_microsoft(signed_in, user, make_account):
    account = make_account(user, "info@ionos.de")
    ionos_hint = str(IMAP_PROVIDERS["ionos"].hints[0])
    migration = Migration.objects.create(
        account=account, user=user, campaign=current_campaign(), provider_kind="imap", status=Status.AWAITING_USER,
        detected={"candidates": ["ionos", "microsoft365"], "label": "IONOS", "hints": [ionos_hint]})

    text = _text(signed_in.get(reverse("migration-detail", args=[migration.pk])).content.decode())

    assert "Ihre Adresse liegt bei IONOS. Dort kann das Postfach über IMAP oder über Microsoft laufen." in text
    assert text.count("über Microsoft") == 1, text
    assert ionos_hint not in text
    assert "Weiter mit IMAP (IONOS)" in text and "Weiter mit Microsoft" in text


def test_the_imap_form_still_gives_the_ionos_hint_after_the_choice(signed_in, user, make_account):
    account = make_account(user, "info@ionos.de")
    ionos_hint = str(IMAP_PROVIDERS["ionos"].hints[0])
    migration = Migration.objects.create(
        account=account, user=user, campaign=current_campaign(), provider_kind="imap", status=Status.AWAITING_USER,
        detected={"candidates": ["ionos", "microsoft365"], "chosen": "ionos", "host": "imap.ionos.de", "port": 993,
                  "security": "ssl", "username": account.address, "hints": [ionos_hint]})

    text = _text(signed_in.get(reverse("migration-detail", args=[migration.pk])).content.decode())

    assert text.count(ionos_hint) == 1


def test_the_port_field_says_which_port_goes_with_which_encryption(signed_in, user, make_account):
    account = make_account(user, "anna@gmx.de")
    migration = Migration.objects.create(
        account=account, user=user, campaign=current_campaign(), provider_kind="imap", status=Status.AWAITING_USER,
        detected={"host": "imap.gmx.net", "port": 993, "security": "ssl", "username": account.address})

    html = signed_in.get(reverse("migration-detail", args=[migration.pk])).content.decode()

    port = re.search(r'<input type="number" name="port"[^>]*>', html).group(0)
    assert 'aria-describedby="id_port_helptext"' in port
    assert ('<small class="help" id="id_port_helptext">993 mit SSL/TLS (fast immer richtig) oder 143 mit '
            'STARTTLS.</small>') in html


def test_the_tls_error_names_the_usual_pairs():
    assert str(errors.message_for("tls_failed")).endswith(
        "Bitte prüfen Sie unter „Servereinstellungen“ Port und Verschlüsselung: 993 mit SSL/TLS oder 143 mit STARTTLS.")
    with translation.override("en"):
        assert "993 with SSL/TLS or 143 with STARTTLS" in str(errors.message_for("tls_failed"))
