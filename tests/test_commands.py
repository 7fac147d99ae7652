"""Operator commands: add_user and import_v2_accounts (the demo commands: test_demo_commands.py)."""

import io
import json
import sys
from datetime import datetime, timedelta, timezone

import pytest
from django.contrib.auth import get_user_model
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from migration.management.commands.add_user import Command as AddUser
from portal.devservers import make_message
from sync import crypto
from sync import v2
from sync.models import FolderState, MailAccount, SyncedMessage

User = get_user_model()
PASSWORD = "Ein-sehr-geheimes-Wort-42"


@pytest.fixture(autouse=True)
def _fast_password_hashing(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def _run(*args, **kwargs):
    out, err = io.StringIO(), io.StringIO()
    call_command(*args, stdout=out, stderr=err, **kwargs)
    return out.getvalue()


# --- add_user ------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_creates_a_login_from_the_first_line_of_stdin(monkeypatch, client):
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{PASSWORD}\nsecond line is ignored\n"))
    assert "created user neu@example.com" in _run("add_user", "neu@example.com")
    user = User.objects.get(username="neu@example.com")
    assert user.email == "neu@example.com" and user.check_password(PASSWORD)
    assert not user.is_staff and not user.is_superuser
    response = client.post(reverse("account_login"), {"login": "neu@example.com", "password": PASSWORD})
    assert response.status_code == 302 and response.url == reverse("dashboard")


@pytest.mark.django_db
@pytest.mark.parametrize("flags, staff, superuser", [(["--staff"], True, False), (["--superuser"], True, True)])
def test_it_creates_staff_and_superusers(monkeypatch, flags, staff, superuser):
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    _run("add_user", "hilfe@example.com", *flags)
    user = User.objects.get(username="hilfe@example.com")
    assert (user.is_staff, user.is_superuser) == (staff, superuser)


@pytest.mark.django_db
def test_it_updates_a_login_and_keeps_its_rights(monkeypatch):
    User.objects.create_user("Chef@Example.com", "Chef@Example.com", "alt-passwort-1", is_staff=True)
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert "updated staff" in _run("add_user", "chef@example.com")
    user = User.objects.get()
    assert user.check_password(PASSWORD) and user.is_staff


@pytest.mark.django_db
def test_it_prompts_on_a_terminal_and_refuses_different_passwords(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    answers = iter([PASSWORD, PASSWORD + "x"])
    monkeypatch.setattr("getpass.getpass", lambda prompt: next(answers))
    with pytest.raises(CommandError, match="do not match"):
        call_command("add_user", "tippfehler@example.com", stdin=Terminal())
    assert not User.objects.exists()


def test_it_never_takes_the_password_as_an_argument():
    options = [o for action in AddUser().create_parser("manage.py", "add_user")._actions for o in action.option_strings]
    assert not [o for o in options if "pass" in o]
    for extra in (["geheim"], ["--password", "geheim"]):
        with pytest.raises(CommandError, match="unrecognized arguments"):
            call_command("add_user", "x@example.com", *extra, stdin=io.StringIO(PASSWORD))


@pytest.mark.django_db
@pytest.mark.parametrize("email, stdin, error", [
    ("kein-at-zeichen", PASSWORD, "not an e-mail address"),
    ("x@example.com", "", "no password"),
    ("x@example.com", "password", "password rejected"),  # too common
    ("x@example.com", "kurz", "password rejected"),
])
def test_it_rejects_bad_input_and_creates_nothing(email, stdin, error):
    with pytest.raises(CommandError, match=error):
        call_command("add_user", email, stdin=io.StringIO(stdin + "\n"))
    assert not User.objects.exists()


# --- import_v2_accounts -------------------------------------------------------------------------------------


def _account(owner="anna@example.com", address="anna@gmx.de", **fields):
    entry = {
        "owner": owner, "address": address, "provider_kind": "imap", "provider_name": "gmx",
        "imap": {"host": "imap.gmx.net", "port": 993, "security": "ssl", "username": address},
        "password": f"pw-{address}-Zz9",
        "folders": [{"name": "INBOX", "v2_high_water": "2025-06-30T14:05:00+02:00",
                     "v2_last_poll_at": "2025-06-30T14:10:00+02:00"}],
        "imported": [
            {"message_id": "<eins@kunde.example>", "folder": "INBOX", "subject": "Eins", "from": "k@kunde.example",
             "received_at": "2025-06-29T10:00:00+02:00", "uid": 11, "size": 1200},
            # The same message again, without brackets: one row.
            {"message_id": "eins@kunde.example", "folder": "INBOX", "subject": "Eins", "received_at": "2025-06-29"
                                                                                                     "T10:00:00+02:00"},
            {"folder": "INBOX", "subject": "Ohne ID", "from": "k@kunde.example", "to": address,
             "received_at": "2025-06-30T14:05:00+02:00", "uid": 12},
        ],
    }
    entry.update(fields)
    return entry


@pytest.fixture
def import_file(tmp_path):
    def write(*accounts):
        path = tmp_path / "v2.json"
        path.write_text(json.dumps({"accounts": list(accounts)}))
        return str(path)

    return write


def _db_state():
    return {
        model.__name__: list(model.objects.order_by("pk").values())
        for model in (User, MailAccount, FolderState, SyncedMessage)
    }


@pytest.mark.django_db
def test_it_imports_accounts_with_their_sync_state(user, import_file):
    out = _run("import_v2_accounts", import_file(_account(), _account(address="anna@web.de", provider_name="webde",
                                                                       folders=[], imported=[])))
    assert "accounts 2 created, 0 updated, 0 unchanged, 0 skipped; messages imported: 2" in out
    account = MailAccount.objects.get(address="anna@gmx.de")
    assert (account.owner, account.engine, account.provider_name, account.imap_host) == (user, "v2", "gmx", "imap.gmx.net")
    messages = {m.dedup_key: m for m in SyncedMessage.objects.filter(account=account)}
    assert messages["eins@kunde.example"].provider_uid == 11 and messages["eins@kunde.example"].imported_by == "v2"
    fallback = next(m for key, m in messages.items() if key.startswith("sha256:"))
    assert fallback.subject == "Ohne ID" and fallback.received_at == datetime(2025, 6, 30, 12, 5, tzinfo=timezone.utc)
    state = FolderState.objects.get(account=account, name="INBOX")
    assert state.v2_high_water == datetime(2025, 6, 30, 12, 5, tzinfo=timezone.utc)
    assert state.v2_last_poll_at == datetime(2025, 6, 30, 12, 10, tzinfo=timezone.utc)


@pytest.mark.django_db
def test_it_changes_nothing_when_the_same_file_is_imported_again(user, import_file):
    path = import_file(_account(), _account(address="anna@web.de"))
    _run("import_v2_accounts", path)
    before = _db_state()
    assert "0 created, 0 updated, 2 unchanged, 0 skipped; messages imported: 0" in _run("import_v2_accounts", path)
    assert _db_state() == before


@pytest.mark.django_db
def test_it_never_rewinds_a_high_water_mark(user, import_file):
    _run("import_v2_accounts", import_file(_account()))
    older = _account(folders=[{"name": "INBOX", "v2_high_water": "2025-05-01T08:00:00Z"}])
    _run("import_v2_accounts", import_file(older))
    state = FolderState.objects.get(name="INBOX")
    assert state.v2_high_water == datetime(2025, 6, 30, 12, 5, tzinfo=timezone.utc)


@pytest.mark.django_db
@pytest.mark.parametrize("bad, error", [
    ({"address": "kein-at"}, "accounts[1].address: not an e-mail address"),
    ({"owner": None}, "accounts[1].owner: required"),
    ({"provider_name": "compuserve"}, "accounts[1].provider_name: must be one of"),
    ({"imap": {"host": "imap.gmx.net", "port": 99999}}, "accounts[1].imap.port: expected a whole number"),
    ({"imap": {"host": "imap.gmx.net", "security": "none"}}, "accounts[1].imap.security: must be one of"),
    ({"password": ""}, "accounts[1].password: required"),
    ({"folders": [{"name": "INBOX", "v2_high_water": "gestern"}]}, "accounts[1].folders[0].v2_high_water: expected"),
    ({"folders": [{"name": "INBOX", "v2_highwater": "2025-06-30T14:05:00Z"}]},
     "accounts[1].folders[0].v2_highwater: unknown field"),
    ({"imported": [{"subject": "ohne alles"}]}, "accounts[1].imported[0].message_id: a message without a usable message_id"),
        ({"imported": [{"subject": "x", "date": "irgendwann"}]}, "accounts[1].imported[0].date: not an RFC 5322 date"),
    ({"address": "anna@gmx.de"}, "accounts[1].address: same owner and address as accounts[0]"),
    ({"owner": "niemand@example.com"}, "accounts[1].owner: no such user"),
])
def test_it_validates_the_whole_file_and_writes_nothing_on_error(user, import_file, bad, error):
    before = _db_state()
    err = io.StringIO()
    entry = _account(address="zweites@gmx.de")
    entry.update(bad)
    path = import_file(_account(), entry)
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_v2_accounts", path, stdout=io.StringIO(), stderr=err)
    assert error in err.getvalue()
    assert "pw-" not in err.getvalue()  # values, least of all passwords, are never echoed
    assert _db_state() == before


@pytest.mark.django_db
def test_it_refuses_a_broken_file_without_echoing_it(tmp_path):
    path = tmp_path / "kaputt.json"
    path.write_text('{"accounts": [{"password": "streng-geheim", }]}')
    with pytest.raises(CommandError, match="not valid JSON") as raised:
        call_command("import_v2_accounts", str(path))
    assert "streng-geheim" not in str(raised.value)


@pytest.mark.django_db
def test_it_never_downgrades_an_account_already_on_v3(user, make_account, import_file):
    migrated = make_account(user, "anna@gmx.de", engine="v3", imap_host="imap.neu.example")
    before = _db_state()
    out = _run("import_v2_accounts", import_file(_account()))
    assert "accounts[0] anna@gmx.de: already on V3" in out and "1 skipped" in out
    assert _db_state() == before
    migrated.refresh_from_db()
    assert migrated.engine == "v3"


@pytest.mark.django_db
def test_it_stores_the_password_encrypted_only(user, import_file, caplog):
    entry = _account()
    out = _run("import_v2_accounts", import_file(entry))
    account = MailAccount.objects.get()
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM sync_mailaccount WHERE id = %s", [account.pk])
        row = cursor.fetchone()
    assert not [column for column in row if entry["password"] in str(column)]
    assert crypto.decrypt_json(account.secret_encrypted) == {"password": entry["password"]}
    assert entry["password"] not in out + caplog.text


@pytest.mark.django_db
def test_it_creates_missing_owners_only_when_asked(import_file):
    path = import_file(_account(owner="neu@example.com"))
    with pytest.raises(CommandError):
        call_command("import_v2_accounts", path, stdout=io.StringIO(), stderr=io.StringIO())
    assert not User.objects.exists()
    assert "users created: 1" in _run("import_v2_accounts", path, "--create-users")
    owner = User.objects.get()
    assert owner.email == "neu@example.com" and not owner.has_usable_password()
    assert MailAccount.objects.get().owner == owner


@pytest.mark.django_db
def test_it_imports_nothing_in_a_dry_run(import_file):
    before = _db_state()
    out = _run("import_v2_accounts", import_file(_account(owner="neu@example.com")), "--create-users", "--dry-run")
    assert "dry run, nothing saved: accounts 1 created" in out and "users created: 1" in out
    assert _db_state() == before


@pytest.mark.django_db
def test_it_shares_dedup_keys_with_the_v2_engine(user, dovecot, mailbox, mail_settings, import_file):
    address, password = mailbox
    when = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(hours=3)
    dovecot.deliver(address, make_message(subject="mit ID", message_id="<mit-id@kunde.example>", date=when),
                    make_message(subject="ohne ID", to=address, message_id=None, date=when), when=when)
    entry = _account(address=address, provider_name="other", password=password,
                     imap={"host": "127.0.0.1", "port": dovecot.tls_port, "security": "ssl"},
                     folders=[{"name": "INBOX", "v2_high_water": when.isoformat()}],
                     imported=[{"message_id": "<mit-id@kunde.example>", "received_at": when.isoformat()},
                               {"subject": "ohne ID", "from": "kunde@example.org", "to": address,
                                "received_at": when.isoformat()}])
    _run("import_v2_accounts", import_file(entry))
    account = MailAccount.objects.get(address=address)
    assert v2.poll(account) == 0  # V2 (and V3, same key) recognise both imported messages
    assert SyncedMessage.objects.filter(account=account).count() == 2


@pytest.mark.django_db
def test_it_keeps_imported_messages_apart_that_differ_only_in_their_delivery_time(user, import_file):
    # No Message-ID, no Date: what V2 knew is the delivery time, and it tells the orders apart.
    orders = [{"folder": "INBOX", "subject": "Ihre Bestellung", "from": "shop@example.org",
               "received_at": f"2025-06-{day:02d}T10:00:00Z"} for day in (1, 2, 3)]
    out = _run("import_v2_accounts", import_file(_account(imported=orders + orders[:1])))
    assert "messages imported: 3" in out
    assert SyncedMessage.objects.filter(subject="Ihre Bestellung").count() == 3
