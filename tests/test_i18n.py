"""German by default, English on request, and an English catalog that is complete and compiled.

The msgids are German, so German needs no catalog of its own; English comes
from locale/en. The compiled .mo is committed (the portal runs without
gettext installed), so these tests read it with the standard library.
"""

import ast
import gettext
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.urls import reverse
from django.utils import translation

from migration import errors
from migration.models import Migration
from migration.selectors import current_campaign
from tests.test_allauth_pages import informal_words

LOCALE_DIR = Path(settings.LOCALE_PATHS[0]) / "en" / "LC_MESSAGES"
PO_FILE = LOCALE_DIR / "django.po"
MO_FILE = LOCALE_DIR / "django.mo"
# German overrides of django-allauth's informal texts (tests/test_allauth_pages.py checks their tone).
DE_DIR = Path(settings.LOCALE_PATHS[0]) / "de" / "LC_MESSAGES"
ROOT = Path(settings.BASE_DIR)
TEMPLATES_DIR = ROOT / "templates"
# Everything makemessages reads for the portal's catalog: Python (gettext, lazy, format strings) and
# templates (pages and the .txt mail templates).
SOURCES = ("manage.py", "portal", "sync", "migration", "templates")
PLACEHOLDER = re.compile(r"%\(\w+\)[sd]|\{\{\s*\w+\s*\}\}")


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def parse_po(path: Path) -> list[dict]:
    """Minimal .po reader: [{msgid, msgstr, flags}] without the header (polib is not a dependency)."""
    entries = []
    for block in path.read_text(encoding="utf-8").split("\n\n"):
        entry = {"msgid": "", "msgstr": "", "flags": set()}
        field = None
        for line in block.splitlines():
            if line.startswith("#,"):
                entry["flags"].update(flag.strip() for flag in line[2:].split(","))
            elif line.startswith("#~"):
                field = None  # an obsolete entry: makemessages keeps it, gettext ignores it
            elif line.startswith("msgid_plural") or line.startswith("msgstr["):
                raise AssertionError(f"plural entries are not handled by this reader: {block!r}")
            elif line.startswith(("msgid ", "msgstr ")):
                field, _, literal = line.partition(" ")
                entry[field] = ast.literal_eval(literal)
            elif line.startswith('"') and field:
                entry[field] += ast.literal_eval(line)
        if entry["msgid"]:
            entries.append(entry)
    return entries


ENTRIES = parse_po(PO_FILE)


@pytest.fixture
def signed_in(client, user):
    client.force_login(user)
    return client


def switch_to_english(client):
    response = client.post(reverse("set_language"), {"language": "en", "next": reverse("dashboard")})
    assert response.status_code == 302
    assert response.cookies[settings.LANGUAGE_COOKIE_NAME].value == "en"


@pytest.mark.django_db
def test_it_speaks_german_by_default(signed_in):
    html = signed_in.get(reverse("settings-mail")).content.decode()
    assert '<html lang="de">' in html
    assert "Persönliche E-Mail-Synchronisierung" in html
    assert ">Einstellungen</a>" in html
    assert "Personal email sync" not in html


@pytest.mark.django_db
def test_it_speaks_english_after_the_language_switch(signed_in, make_account, user):
    make_account(user, "anna@gmx.de")
    switch_to_english(signed_in)

    html = signed_in.get(reverse("settings-mail")).content.decode()

    assert '<html lang="en">' in html
    assert ">Settings</a>" in html and ">Overview</a>" in html and ">Emails</a>" in html
    assert "Personal email sync" in html
    assert 'class="button danger">Migrate to V3</button>' in html
    assert "Einstellungen" not in html and "Zu V3 migrieren" not in html
    # The banner is English too, with dates English readers cannot misread (18 Jul 2025, not 18.07.2025).
    migrate_by = current_campaign().migrate_by
    assert f"Please migrate your email sync to V3 by {migrate_by.day} {migrate_by:%b %Y}." in html
    assert f"{migrate_by:%d.%m.%Y}" not in html


@pytest.mark.django_db
def test_it_switches_back_to_german(signed_in):
    switch_to_english(signed_in)
    signed_in.post(reverse("set_language"), {"language": "de", "next": "/"})
    assert ">Einstellungen</a>" in signed_in.get(reverse("dashboard")).content.decode()


@pytest.mark.parametrize("code", [*errors.MESSAGES, "some_unknown_code"])
def test_it_translates_every_migration_error(code):
    with translation.override("de"):
        german = str(errors.message_for(code))
    with translation.override("en"):
        english = str(errors.message_for(code))
    assert german and english
    assert english != german
    assert not any(umlaut in english for umlaut in "äöüÄÖÜß")


def test_it_says_what_went_wrong_in_english():
    with translation.override("en"):
        assert str(errors.message_for("auth_failed")).startswith("The sign-in was rejected.")
        assert "app password" in str(errors.message_for("auth_failed"))
        assert str(errors.message_for("nonsense")) == "The migration failed. Please try again."


@pytest.mark.django_db
def test_it_shows_a_failed_migration_in_english(signed_in, make_account, user):
    account = make_account(user, "anna@gmx.de")
    migration = Migration.objects.create(
        account=account, user=user, campaign=current_campaign(), provider_kind="imap", status="failed",
        error_code="tls_failed",
    )
    switch_to_english(signed_in)
    html = signed_in.get(reverse("migration-detail", args=[migration.pk])).content.decode()
    assert "No secure connection (TLS) could be established." in html
    assert "Try again" in html
    assert "Migrate anna@gmx.de to V3" in html


# --- the catalog itself -------------------------------------------------------------------------------------


def test_it_has_a_catalog_with_entries():
    assert len(ENTRIES) > 50, "the English .po looks empty: run makemessages -l en"


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda entry: entry["msgid"][:40])
def test_it_translates_every_entry(entry):
    assert entry["msgstr"].strip(), f"untranslated: {entry['msgid']!r}"
    assert "fuzzy" not in entry["flags"], f"fuzzy: {entry['msgid']!r}"
    assert sorted(PLACEHOLDER.findall(entry["msgstr"])) == sorted(PLACEHOLDER.findall(entry["msgid"]))


@pytest.mark.parametrize("folder", [LOCALE_DIR, DE_DIR], ids=["en", "de"])
def test_it_ships_a_compiled_catalog_that_matches_the_po(folder):
    """The committed .mo must hold exactly the .po's translations (run msgfmt after editing)."""
    entries = parse_po(folder / "django.po")
    with (folder / "django.mo").open("rb") as mo:
        compiled = gettext.GNUTranslations(mo)
    catalog = {msgid: msgstr for msgid, msgstr in compiled._catalog.items() if msgid}
    assert entries and all(entry["msgstr"].strip() for entry in entries)
    assert catalog == {entry["msgid"]: entry["msgstr"] for entry in entries}


@pytest.fixture(scope="module")
def source_msgids(tmp_path_factory) -> set[str]:
    """Every msgid in the portal's sources, as Django's makemessages (xgettext) extracts them.

    Run on a copy, so the committed catalog is never touched; the same extraction a developer runs.
    """
    if not shutil.which("xgettext"):
        pytest.fail("xgettext is missing: install Debian's gettext package (scripts/test does)")
    copy = tmp_path_factory.mktemp("makemessages")
    for name in SOURCES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, copy / name, ignore=shutil.ignore_patterns("__pycache__", "locale"))
        else:
            shutil.copy2(source, copy / name)
    (copy / "locale").mkdir()
    # Every kind of template file there is (.html pages, .txt mails, the .svg chart), not only the defaults.
    extensions = ",".join(sorted({"py"} | {path.suffix[1:] for path in TEMPLATES_DIR.rglob("*.*")}))
    subprocess.run([sys.executable, "manage.py", "makemessages", "-l", "en", "--no-location", "--verbosity", "0",
                    "--extension", extensions], cwd=copy, check=True, timeout=300)
    return {entry["msgid"] for entry in parse_po(copy / "locale" / "en" / "LC_MESSAGES" / "django.po")}


def test_it_has_every_source_string_in_the_catalog(source_msgids):
    """A _("...") in Python (also with %(name)s placeholders) or a {% trans %}/{% blocktrans %} in a page or
    mail template that is not in the English catalog would stay German for English readers."""
    assert len(source_msgids) > 300
    missing = sorted(source_msgids - {entry["msgid"] for entry in ENTRIES})
    assert not missing, "run makemessages -l en and translate:\n" + "\n".join(missing)


def test_it_has_no_stale_entries(source_msgids):
    """Entries no source uses any more are texts nobody reviews; they go."""
    stale = sorted({entry["msgid"] for entry in ENTRIES} - source_msgids)
    assert not stale, "remove from the .po:\n" + "\n".join(stale)


def test_it_keeps_user_visible_text_out_of_javascript():
    """The scripts take their words from the page (data-* attributes the template translates), so the
    catalog covers them: a string literal of words would be text no translation reaches."""
    literal = re.compile(r"""(["'])((?:(?!\1)[^\\\n])*)\1""")
    words = re.compile(r"[A-Za-zÄÖÜäöüß]+(?:[ ,.!?:;–]+[A-Za-zÄÖÜäöüß]+)+[.!?…]?")
    texts = [(path.name, match.group(2)) for path in (ROOT / "static").rglob("*.js")
             for match in literal.finditer(path.read_text(encoding="utf-8"))
             if (" " in match.group(2) and words.fullmatch(match.group(2))) or re.search("[äöüÄÖÜß]", match.group(2))]
    assert not texts


def test_it_has_every_template_string_in_the_catalog():
    """A {% trans "..." %} added to a template without makemessages would stay German in English."""
    msgids = {entry["msgid"] for entry in ENTRIES}
    simple_trans = re.compile(r"""\{%\s*trans(?:late)?\s+(["'])(.+?)\1\s*%\}""")
    missing = {
        (str(path.relative_to(TEMPLATES_DIR)), match.group(2))
        for path in TEMPLATES_DIR.rglob("*.*")
        for match in simple_trans.finditer(path.read_text(encoding="utf-8"))
        if match.group(2) not in msgids
    }
    assert not missing


@pytest.mark.parametrize("msgid, english", [
    ("Einstellungen", "Settings"),
    ("Persönliche E-Mail-Synchronisierung", "Personal email sync"),
    ("Zu V3 migrieren", "Migrate to V3"),
    ("Übersicht", "Overview"),
    ("E-Mails", "Emails"),
    ("Migration abgeschlossen", "Migration complete"),
    ("Migration fortsetzen", "Continue migration"),
])
def test_it_uses_the_product_labels(msgid, english):
    with translation.override("en"):
        assert translation.gettext(msgid) == english
    with translation.override("de"):
        assert translation.gettext(msgid) == msgid


# --- tone and terms ------------------------------------------------------------------------------------------

# One word for one thing (README, "Words"): the words on the left were used for the same things as the right.
RETIRED_WORDS = {
    "Anmeldedaten": "Zugangsdaten", "Serverdaten": "Servereinstellungen", "Verbindungsdaten": "Servereinstellungen",
    "Benutzerkonto": "CRM-Zugang", "Anbieterart kann": "Postfächer dieser Art", "Knopf": "Schaltfläche",
    "Exchange-Administration": "IT-Abteilung",
}


def test_every_german_text_is_formal():
    informal = {entry["msgid"]: informal_words(entry["msgid"]) for entry in ENTRIES if informal_words(entry["msgid"])}
    assert not informal


def test_every_german_text_uses_the_portals_words():
    found = [(word, better, entry["msgid"]) for entry in ENTRIES for word, better in RETIRED_WORDS.items()
             if word in entry["msgid"]]
    assert not found, "\n".join(f"{word} -> {better}: {msgid}" for word, better, msgid in found)
