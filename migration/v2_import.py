"""Import legacy V2 accounts with their sync state (format: docs/import-format.md).

Two passes, so a bad file changes nothing: parse_accounts() checks the whole
file without touching the database; import_accounts() resolves the owners and
writes everything in one transaction. Re-importing the same file is a no-op.
Passwords are encrypted at once and never appear in an error, a log or a repr.
"""

from dataclasses import dataclass, field
from datetime import datetime, timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.validators import validate_email
from django.db import transaction
from django.db.models import Q
from django.utils.dateparse import parse_datetime

from sync import crypto
from sync import services as sync_services
from sync import headers
from sync.identity import FetchedMessage, normalize_message_id
from sync.imap.client import ImapSettings
from sync.models import Engine, FolderState, MailAccount, ProviderKind, Security
from sync.providers import IMAP_PROVIDERS

PROVIDER_NAMES = sorted(IMAP_PROVIDERS) + ["other"]
# Strict keys: a typo such as "v2_highwater" must not silently drop a high-water mark.
ACCOUNT_KEYS = {"owner", "address", "provider_kind", "provider_name", "imap", "password", "folders", "imported"}
IMAP_KEYS = {"host", "port", "security", "username"}
FOLDER_KEYS = {"name", "v2_high_water", "v2_last_poll_at"}
MESSAGE_KEYS = {"message_id", "folder", "subject", "from", "to", "date", "received_at", "uid", "size"}
MAX_HEADER = 10_000


class ImportInvalid(Exception):
    def __init__(self, errors: list[str]):
        super().__init__(f"{len(errors)} errors")
        self.errors = errors


@dataclass(frozen=True)
class FolderRow:
    name: str
    v2_high_water: datetime | None
    v2_last_poll_at: datetime | None


@dataclass(frozen=True)
class AccountRow:
    index: int
    owner: str
    address: str
    provider_kind: str
    provider_name: str
    server: ImapSettings | None
    password: str = field(repr=False)
    folders: tuple[FolderRow, ...]
    messages: tuple[tuple[str, FetchedMessage], ...]  # (folder, message)


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)
    messages: int = 0
    users_created: int = 0


class _Reader:
    """Reads one JSON object, collecting "path: problem" errors instead of stopping."""

    def __init__(self, obj, where: str, keys: set[str], errors: list[str]):
        self.where, self.errors = where, errors
        self.obj = obj if isinstance(obj, dict) else {}
        if not isinstance(obj, dict):
            errors.append(f"{where}: expected an object")
        for key in sorted(set(self.obj) - keys):
            errors.append(f"{where}.{key}: unknown field")

    def fail(self, key: str, problem: str) -> None:
        self.errors.append(f"{self.where}.{key}: {problem}")

    def text(self, key: str, *, required: bool = False, default: str = "", max_length: int = 255) -> str:
        value = self.obj.get(key)
        if value is None or value == "":
            if required:
                self.fail(key, "required")
            return default
        if not isinstance(value, str):
            self.fail(key, "expected a string")
            return default
        if len(value) > max_length:
            self.fail(key, f"longer than {max_length} characters")
        return value.strip()

    def choice(self, key: str, choices: list[str], *, default: str) -> str:
        value = self.text(key, default=default)
        if value not in choices:
            self.fail(key, "must be one of " + ", ".join(choices))
        return value

    def email(self, key: str) -> str:
        value = self.text(key, required=True, max_length=254)
        if value:
            try:
                validate_email(value)
            except ValidationError:
                self.fail(key, "not an e-mail address")
        return value

    def integer(self, key: str, *, default: int | None, low: int, high: int) -> int | None:
        value = self.obj.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.fail(key, f"expected a whole number from {low} to {high}")
            return default
        return value

    def when(self, key: str) -> datetime | None:
        value = self.obj.get(key)
        if value is None:
            return None
        try:
            parsed = parse_datetime(value) if isinstance(value, str) else None
        except ValueError:  # well-formed but impossible, e.g. month 13
            parsed = None
        if parsed is None:
            self.fail(key, "expected an ISO 8601 date and time, e.g. 2025-06-30T14:05:00+02:00")
            return None
        # Without an offset the export meant UTC (documented).
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt_timezone.utc)

    def items(self, key: str) -> list:
        value = self.obj.get(key, [])
        if not isinstance(value, list):
            self.fail(key, "expected a list")
            return []
        return value


def parse_accounts(data) -> list[AccountRow]:
    """Validate the whole file; raise ImportInvalid with every problem found."""
    if not isinstance(data, dict) or not isinstance(data.get("accounts"), list):
        raise ImportInvalid(['file: expected an object {"accounts": [...]}'])
    errors, rows, seen = [], [], {}
    for index, item in enumerate(data["accounts"]):
        row = _parse_account(index, item, errors)
        key = (row.owner.lower(), row.address.lower())
        if all(key) and key in seen:
            errors.append(f"accounts[{index}].address: same owner and address as accounts[{seen[key]}]")
        seen.setdefault(key, index)
        rows.append(row)
    if errors:
        raise ImportInvalid(errors)
    return rows


def _parse_account(index: int, item, errors: list[str]) -> AccountRow:
    where = f"accounts[{index}]"
    reader = _Reader(item, where, ACCOUNT_KEYS, errors)
    address = reader.email("address")
    # V2 never knew Google as a kind of its own (a Gmail account was IMAP there); "google" is V3's.
    kind = reader.choice("provider_kind", [k for k in ProviderKind.values if k != ProviderKind.GOOGLE],
                         default=ProviderKind.IMAP)
    server, password = None, ""
    # V2 polled over IMAP: an IMAP account needs its server and password; for
    # Microsoft/Exchange accounts they are optional (V3 signs in differently).
    if "imap" in reader.obj or "password" in reader.obj or kind == ProviderKind.IMAP:
        imap = _Reader(reader.obj.get("imap"), f"{where}.imap", IMAP_KEYS, errors)
        server = ImapSettings(
            host=imap.text("host", required=True),
            port=imap.integer("port", default=993, low=1, high=65535),
            security=imap.choice("security", list(Security.values), default=Security.SSL),
            username=imap.text("username", default=address),
        )
        password = reader.obj.get("password")
        if not isinstance(password, str) or not password:
            reader.fail("password", "required (a non-empty string)")  # the value itself is never echoed
            password = ""
    folders, names = [], set()
    for position, entry in enumerate(reader.items("folders")):
        folder = _Reader(entry, f"{where}.folders[{position}]", FOLDER_KEYS, errors)
        row = FolderRow(folder.text("name", required=True), folder.when("v2_high_water"), folder.when("v2_last_poll_at"))
        if row.name in names:
            folder.fail("name", "listed twice")
        names.add(row.name)
        folders.append(row)
    messages = [
        _parse_message(_Reader(entry, f"{where}.imported[{position}]", MESSAGE_KEYS, errors))
        for position, entry in enumerate(reader.items("imported"))
    ]
    return AccountRow(
        index=index, owner=reader.email("owner"), address=address, provider_kind=kind,
        provider_name=reader.choice("provider_name", PROVIDER_NAMES, default="other"), server=server,
        password=password, folders=tuple(folders), messages=tuple(messages),
    )


def _parse_message(reader: _Reader) -> tuple[str, FetchedMessage]:
    # Long values are accepted and cut when stored, like the engines do.
    message_id = reader.text("message_id", max_length=MAX_HEADER)
    received_at = reader.when("received_at")
    date_text = reader.text("date", max_length=MAX_HEADER)
    sent_at = headers.parse_date(date_text)
    if date_text and sent_at is None:
        # The fallback identity needs the date as every engine reads it; an unreadable one is refused.
        reader.fail("date", "not an RFC 5322 date, e.g. Mon, 30 Jun 2025 14:01:00 +0200")
    if not normalize_message_id(message_id) and not (sent_at or received_at):
        # Without either, all such messages would share one identity and collapse into one row.
        reader.fail("message_id", "a message without a usable message_id needs date or received_at")
    message = FetchedMessage(
        message_id=message_id[:998], subject=reader.text("subject", max_length=MAX_HEADER)[:500],
        sender=reader.text("from", max_length=MAX_HEADER)[:500], to=reader.text("to", max_length=MAX_HEADER)[:2000],
        sent_at=sent_at, received_at=received_at, size=reader.integer("size", default=0, low=0, high=2**31 - 1),
        uid=reader.integer("uid", default=None, low=1, high=2**63 - 1),
    )
    return reader.text("folder", default="INBOX"), message


def import_accounts(rows: list[AccountRow], *, create_users: bool, dry_run: bool = False) -> ImportSummary:
    """Write the parsed rows in one transaction (rolled back again for a dry run)."""
    summary = ImportSummary()
    with transaction.atomic():
        owners = _owners(rows, create_users=create_users, summary=summary)
        for row in rows:
            owner = owners[row.owner.lower()]
            outcome, added = _import_account(row, owner)
            if outcome == "skipped":
                summary.skipped.append(f"accounts[{row.index}] {row.address}: already on V3, left as it is")
                continue
            setattr(summary, outcome, getattr(summary, outcome) + 1)
            summary.messages += added
            sync_services.invalidate_banner(owner.pk)  # runs on commit only, so not for a dry run
        if dry_run:
            transaction.set_rollback(True)
    return summary


def _owners(rows: list[AccountRow], *, create_users: bool, summary: ImportSummary) -> dict:
    User = get_user_model()
    owners, errors = {}, []
    for row in rows:
        key = row.owner.lower()
        if key in owners:
            continue
        found = list(User.objects.filter(Q(username__iexact=row.owner) | Q(email__iexact=row.owner))[:2])
        if len(found) > 1:
            errors.append(f"accounts[{row.index}].owner: more than one user has this address")
        elif found:
            owners[key] = found[0]
        elif create_users:
            # No usable password: staff set one later (add_user, admin); nobody can sign in before.
            owners[key] = User.objects.create_user(username=row.owner, email=row.owner, password=None)
            summary.users_created += 1
        else:
            errors.append(f"accounts[{row.index}].owner: no such user (add it, or use --create-users)")
    if errors:
        raise ImportInvalid(errors)
    return owners


def _import_account(row: AccountRow, owner) -> tuple[str, int]:
    account = MailAccount.objects.select_for_update().filter(owner=owner, address__iexact=row.address).first()
    if account is not None and account.engine == Engine.V3:
        return "skipped", 0  # V3 owns its state now: never downgrade, never touch
    created = account is None
    if created:
        account = MailAccount(owner=owner, address=row.address, engine=Engine.V2)
    before = _values(account)
    account.provider_kind, account.provider_name = row.provider_kind, row.provider_name
    if row.server is not None:
        unchanged_secret = account.secret_encrypted if _stored_password(account) == row.password else None
        sync_services.set_imap_credentials(account=account, server=row.server, password=row.password)
        if unchanged_secret:
            # Fernet ciphertext differs on every call: keep the old one so a re-import changes nothing.
            account.secret_encrypted = unchanged_secret
    changed = created or _values(account) != before
    if changed:
        account.save()
    changed |= _merge_folders(account, row.folders)
    added = 0
    for folder in sorted({folder for folder, _ in row.messages}):
        batch = [message for name, message in row.messages if name == folder]
        added += sync_services.store_messages(account=account, folder=folder, messages=batch, engine=Engine.V2)
    return ("created" if created else "updated" if changed or added else "unchanged"), added


def _merge_folders(account: MailAccount, folders: tuple[FolderRow, ...]) -> bool:
    changed = False
    for row in folders:
        state, created = FolderState.objects.select_for_update().get_or_create(account=account, name=row.name)
        # An older export must not rewind a mark that V2 has moved on since.
        high_water = _latest(state.v2_high_water, row.v2_high_water)
        last_poll = _latest(state.v2_last_poll_at, row.v2_last_poll_at)
        if created or (high_water, last_poll) != (state.v2_high_water, state.v2_last_poll_at):
            FolderState.objects.filter(pk=state.pk).update(v2_high_water=high_water, v2_last_poll_at=last_poll)
            changed = True
    return changed


def _latest(*values: datetime | None) -> datetime | None:
    present = [value for value in values if value is not None]
    return max(present) if present else None


def _stored_password(account: MailAccount) -> str | None:
    try:
        return sync_services.password_of(account) if account.secret_encrypted else None
    except crypto.SecretUnreadable:
        return None  # made with a retired key: store it again with the current one


def _values(account: MailAccount) -> list:
    return [getattr(account, f.attname) for f in MailAccount._meta.concrete_fields]
