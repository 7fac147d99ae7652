"""The one message identity (sync.identity) and the tolerant header reader (sync.headers)."""

from datetime import datetime, timedelta, timezone

import pytest

from sync import headers, identity
from sync.identity import FetchedMessage

UTC = timezone.utc


@pytest.mark.parametrize("raw, expected", [
    ("<4711@mail.example.org>", "4711@mail.example.org"),
    ("  <4711@mail.example.org>  ", "4711@mail.example.org"),
    ("4711@mail.example.org", "4711@mail.example.org"),  # exports without brackets
    ("(Kommentar) <4711@mail.example.org>", "4711@mail.example.org"),
    ("<a@b> <second@id>", "a@b"),  # some clients write two: the first counts
    ('<"quoted local"@example.org>', ""),  # white space inside: not usable
    ('<"quoted.local"@example.org>', '"quoted.local"@example.org'),
    ("<abc@[192.0.2.1]>", "abc@[192.0.2.1]"),
    ("<CaseSensitive@Example.ORG>", "CaseSensitive@Example.ORG"),
])
def test_it_normalises_usable_message_ids(raw, expected):
    assert identity.normalize_message_id(raw) == expected


@pytest.mark.parametrize("raw", [
    "", None, "<>", "< >", "<no-at-sign>", "<@example.org>", "<local@>", "<a b@example.org>",
    "<[83c48dddbea7492e873224a5ae1c04be-JFBVALKQOJXWILKNK4YVA7CBPJ2XEZKEMV3E64DTPRCW2YLJNR6EK6DPKNWXI4A=@microsoft.com]>",
    "<" + "x" * 300 + "@example.org>", "<a@b@c>", "<<a@b>>",
])
def test_it_refuses_unusable_message_ids(raw):
    assert identity.normalize_message_id(raw) == ""


def test_it_keys_one_message_the_same_whatever_engine_read_it():
    sent = datetime(2025, 7, 1, 7, 0, tzinfo=UTC)
    # IMAP: the Date header parsed; Graph: sentDateTime; EWS: DateTimeSent in another zone.
    imap = FetchedMessage(subject="ohne ID (Import)", sender="Kunde <KUNDE@example.org>", sent_at=sent)
    graph = FetchedMessage(subject="ohne  ID (import)", sender="kunde@example.org",
                           sent_at=sent.astimezone(timezone(timedelta(hours=2))))
    ews = FetchedMessage(subject="ohne ID (Import) ", sender='"Kunde" <kunde@example.org>', sent_at=sent,
                         received_at=sent + timedelta(minutes=3))
    assert imap.dedup_key == graph.dedup_key == ews.dedup_key
    assert imap.dedup_key.startswith("sha256:")


def test_it_tells_messages_apart_that_differ_in_any_field():
    base = dict(subject="Angebot", sender="chef@example.org", sent_at=datetime(2025, 11, 3, 9, tzinfo=UTC))
    keys = {FetchedMessage(**base).dedup_key}
    keys.add(FetchedMessage(**{**base, "subject": "Angebot (korrigiert)"}).dedup_key)
    keys.add(FetchedMessage(**{**base, "sender": "assistenz@example.org"}).dedup_key)
    keys.add(FetchedMessage(**{**base, "sent_at": base["sent_at"] + timedelta(seconds=1)}).dedup_key)
    assert len(keys) == 4


def test_it_uses_the_delivery_time_when_the_date_is_missing():
    # IMAP COPY/MOVE and Exchange keep the delivery time: copies in two folders are one message.
    received = datetime(2025, 7, 1, 7, 0, 5, tzinfo=UTC)
    assert FetchedMessage(subject="x", received_at=received).dedup_key == \
        FetchedMessage(subject="x", sent_at=received).dedup_key
    assert FetchedMessage(subject="x", received_at=received).dedup_key != \
        FetchedMessage(subject="x", received_at=received + timedelta(hours=1)).dedup_key


@pytest.mark.parametrize("raw", [
    "Müller, Hans <hans@example.org>",  # decoded "Nachname, Vorname" (RFC 2047 =2C in the name)
    '"Müller, Hans" <HANS@example.org>',
    "Hans (Büro; Zimmer 3) <hans@example.org>",
    "hans@example.org <hans@example.org>",
    "Info@Firma <hans@example.org>",
    "hans@example.org",
    "<hans@example.org>",
])
def test_it_reads_the_sender_address_whatever_the_display_name_holds(raw):
    assert identity.normalize_address(raw) == "hans@example.org"


def test_it_keeps_a_crafted_message_id_from_taking_a_collision_key():
    key = identity.collision_key("dup@example.org", "fp")
    assert identity.normalize_message_id(f"<{key}>") != key  # a space is never part of a usable id


def test_it_matches_fingerprints_on_the_fields_both_sides_know():
    full = identity.fingerprint(sent_at=datetime(2025, 1, 1, tzinfo=UTC), sender="a@b.example", subject="Hallo")
    no_sender = identity.fingerprint(sent_at=datetime(2025, 1, 1, tzinfo=UTC), sender="", subject="Hallo")
    other = identity.fingerprint(sent_at=datetime(2025, 1, 1, tzinfo=UTC), sender="c@d.example", subject="Hallo")
    assert identity.same_message(full, no_sender)
    assert not identity.same_message(full, other)
    assert identity.same_message("", other)  # rows stored before fingerprints existed


@pytest.mark.parametrize("written", [
    "Tue, 1 Jul 2025 09:00:00 +0200",
    "Tue, 01 Jul 2025 09:00:00 +0200 (CEST)",
    "1 Jul 2025 09:00:00 +0200",
    "Tue,  1 Jul 2025 07:00:00 GMT",
    "Tue, 01 Jul 2025 07:00:00 +0000 (UTC)",
    "tue, 01 jul 2025 09:00:00 +0200",
    "Tue, 1 Jul 25 09:00:00 +0200",  # obsolete two-digit year (RFC 5322 section 4.3)
])
def test_it_reads_every_legal_form_of_one_date(written):
    assert headers.parse_date(written) == datetime(2025, 7, 1, 7, 0, tzinfo=UTC)


def test_it_reads_a_leap_second_as_the_second_before():
    assert headers.parse_date("Wed, 31 Dec 2025 23:59:60 +0000") == datetime(2025, 12, 31, 23, 59, 59, tzinfo=UTC)


@pytest.mark.parametrize("written", ["", "gestern", "Tue, 32 Jul 2025 09:00:00 +0200", "Mon, 1 Jan 1601 00:00 +0000",
                                     "Fri, 31 Dec 9999 23:59:59 +0000", "1 Jul 2025 25:61:00 +0200"])
def test_it_gives_no_date_for_unreadable_or_absurd_dates(written):
    assert headers.parse_date(written) is None


@pytest.mark.parametrize("raw, hint, expected", [
    (b"=?utf-8?q?Gr=C3=BC=C3=9Fe?= =?iso-8859-1?q?_aus_K=F6ln?=", "", "Grüße aus Köln"),
    (b"=?UTF-8?B?w5xiZXJ3ZWlzdW5n?=", "", "Überweisung"),
    ("Grüße aus Köln".encode("cp1252"), "", "Grüße aus Köln"),  # raw 8-bit Windows-1252
    ("Привет из Москвы".encode("koi8-r"), "koi8-r", "Привет из Москвы"),  # the Content-Type's charset
    ("Grüße".encode("utf-8"), "iso-8859-1", "Grüße"),  # UTF-8 first, whatever the hint says
    (b"=?x-unbekannt?q?K=F6ln?=", "", "Köln"),  # an unknown charset: the fallback chain
    (b"=?utf-8?b?!!kaputt?=", "", "=?utf-8?b?!!kaputt?="),  # broken Base64 stays as written
    (b"Zeile eins\r\n  Zeile zwei", "", "Zeile eins Zeile zwei"),
    (b"=?utf-8?q?eins?=\r\n =?utf-8?q?zwei?=", "", "einszwei"),  # RFC 2047 6.2: no space between words
    (b"mit\x00Null", "", "mitNull"),  # PostgreSQL refuses NUL in text
])
def test_it_decodes_header_values_without_replacement_characters(raw, hint, expected):
    assert headers.decode_value(raw, hint) == expected


def test_it_splits_a_header_block_tolerantly():
    block = (b"Subject: eins\r\n zwei\r\nkaputte Zeile ohne Doppelpunkt\r\nMessage-ID: <>\r\n"
             b"Content-Type: text/plain; charset=\"KOI8-R\"\r\n\r\nBody: nicht mehr Kopf\r\n")
    fields = headers.split_fields(block)
    assert fields == {"subject": [b"eins zwei"], "message-id": [b"<>"],
                      "content-type": [b'text/plain; charset="KOI8-R"']}
    assert headers.charset_hint(fields) == "koi8-r"
    assert headers.split_fields(None) == {}
