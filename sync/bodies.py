"""What a user reads: a synced message's body and attachment list, fetched when first opened, then kept.

The sync stores headers only (From, To, Cc, subject, dates). The first time a
user opens a message, body_for() asks the provider for it once (IMAP: the
message's MIME source, or for a big message only its structure, part headers
and text parts, see sync.imap.bodies; Graph and EWS: the body and the
attachment list),
sanitizes the HTML (sync.sanitize) and keeps the result in MessageBody; every
later open reads that row and makes no provider round trip. Attachments are
listed (decoded name, content type, size in bytes); their content is never
stored. The README ("Message bodies") says why and what it costs.

What is stored is cleaned first (sync.mime.clean: no NUL, no lone surrogates
in text, HTML or attachment names; PostgreSQL refuses both). If the database
still refuses the row (full disk, a lost connection, a value it rejects), the
page shows the body anyway, uncached; the next open tries to cache it again.

Errors: BodyUnavailable with a code message_for() translates; nothing is
cached then, so the next open tries again. A mailbox that refuses the stored
password or grant is handled as the sync handles it (the account asks to be
re-connected), so opening messages never repeats a refused login.
"""

import logging

from django.db import Error as DbError, IntegrityError, transaction
from django.utils.translation import gettext_lazy as _

from portal.logsafe import describe
from sync import crypto, mime
from sync.errors import MailboxError
from sync.exchange import bodies as ews_bodies
from sync.exchange.client import error_code as ews_error_code
from sync.google import engine as google_engine
from sync.google.oauth import GoogleError
from sync.imap import bodies as imap_bodies
from sync.microsoft import bodies as graph_bodies
from sync.microsoft.client import MicrosoftError
from sync.microsoft.graph import GraphNotFound
from sync.models import AccountStatus, MailAccount, MessageBody, ProviderKind, SyncedMessage
from sync.sanitize import sanitize
from sync.services import PASSWORD_REFUSED, mark_reconnect, record_v3_failure

logger = logging.getLogger(__name__)

MESSAGES = {
    "not_found": _("Diese Nachricht ist im Postfach nicht mehr vorhanden. Sie wurde dort vermutlich gelöscht."),
    "reconnect": _(
        "Das Postfach hat die Anmeldung abgelehnt. Bitte verbinden Sie das Konto unter „Einstellungen → "
        "Persönliche E-Mail-Synchronisierung“ neu, dann lässt sich die Nachricht wieder öffnen."
    ),
    "unreachable": _("Das Postfach ist gerade nicht erreichbar. Bitte versuchen Sie es in einigen Minuten erneut."),
    "not_connected": _("Der Inhalt kann nicht geladen werden, weil für dieses Konto keine Zugangsdaten gespeichert sind."),
    "failed": _("Der Inhalt dieser Nachricht konnte nicht geladen werden. Bitte versuchen Sie es später erneut."),
    "mailbox_denied": _(
        "Exchange hat die Anmeldung angenommen, aber dieses Konto darf das Postfach nicht öffnen. Bitte wenden Sie "
        "sich an Ihre IT-Abteilung."
    ),
    "too_large": _(
        "Diese Nachricht ist zu groß, um sie hier anzuzeigen. Bitte öffnen Sie sie in Ihrem E-Mail-Programm."
    ),
}
# Provider error codes (sync.errors.MailboxError, sync.microsoft.client.MicrosoftError) -> a MESSAGES key.
_CODES = {
    "auth_failed": "reconnect", "ews_auth_failed": "reconnect", "ms_reconnect": "reconnect",
    "unreachable": "unreachable", "ms_unreachable": "unreachable", "ms_mailbox_busy": "unreachable",
    "too_slow": "unreachable", "ms_too_slow": "unreachable", "response_too_slow": "unreachable",
    "login_slow": "unreachable",
    "too_large": "too_large", "ms_too_large": "too_large", "response_too_large": "too_large",
    "ews_mailbox_denied": "mailbox_denied",
}


class BodyUnavailable(Exception):
    """The body could not be fetched; code: a key of MESSAGES."""

    def __init__(self, code: str):
        super().__init__(code)
        self.code = code


def message_for(code: str) -> str:
    return MESSAGES.get(code, MESSAGES["failed"])


def body_for(message: SyncedMessage) -> MessageBody:
    """The message's MessageBody: the cached row, else fetched from the provider (one session) and stored.

    Raises BodyUnavailable. Two opens at the same moment may both fetch; the
    first stored row wins and both return it.
    """
    cached = MessageBody.objects.filter(message=message).first()
    if cached is not None:
        return cached
    content = mime.clean(_fetch(message))
    fields = {"text": content.text, "html": mime.clean(mime.Content(html=sanitize(content.html))).html,
              "attachments": content.attachments}
    try:
        with transaction.atomic():  # a refused INSERT leaves the request's transaction usable
            body, _created = MessageBody.objects.get_or_create(message=message, defaults=fields)
    except IntegrityError:  # the message was deleted meanwhile (its account removed)
        raise BodyUnavailable("not_found") from None
    except (DbError, UnicodeError) as error:  # DatabaseError, InterfaceError (a lost connection), an encoding
        logger.warning("The body of message %s is shown uncached: the database refused it (%s)", message.pk,
                       type(error).__name__)
        return MessageBody(message=message, **fields)
    return body


def _fetch(message: SyncedMessage) -> mime.Content:
    account = message.account
    if account.status == AccountStatus.RECONNECT:
        # The provider refused the stored password or grant: trying again would not help
        # (and a refused password tried again and again locks Windows accounts).
        raise BodyUnavailable("reconnect")
    try:
        if account.provider_kind == ProviderKind.IMAP:
            if not account.secret_encrypted or not account.imap_host:
                raise BodyUnavailable("not_connected")
            return imap_bodies.fetch_content(account, message)
        if account.provider_kind == ProviderKind.MICROSOFT:
            if not account.token_cache_encrypted:
                raise BodyUnavailable("not_connected")
            return graph_bodies.fetch_content(account, message)
        if account.provider_kind == ProviderKind.GOOGLE:
            if not account.token_cache_encrypted or not account.imap_host:
                raise BodyUnavailable("not_connected")
            return imap_bodies.fetch_content(account, message, access_token=google_engine.access_token_for(account))
        if account.provider_kind == ProviderKind.EXCHANGE:
            if not account.secret_encrypted or not account.ews_url:
                raise BodyUnavailable("not_connected")
            return ews_bodies.fetch_content(account, message)
        raise BodyUnavailable("not_connected")
    except (imap_bodies.MessageGone, ews_bodies.ItemGone, GraphNotFound):
        raise BodyUnavailable("not_found") from None
    except MailboxError as error:
        code = ews_error_code(error.code) if account.provider_kind == ProviderKind.EXCHANGE else error.code
        _refused(account, code)
        raise BodyUnavailable(_CODES.get(code, "failed")) from None
    except MicrosoftError as error:
        if error.code == "ms_reconnect":
            mark_reconnect(account_id=account.pk, expected=account.token_cache_encrypted)
        raise BodyUnavailable(_CODES.get(error.code, "failed")) from None
    except GoogleError as error:
        raise BodyUnavailable("reconnect" if error.permanent else "failed") from None
    except crypto.SecretUnreadable:
        logger.warning("Credentials of account %s cannot be decrypted with the configured keys", account.pk)
        raise BodyUnavailable("failed") from None
    except BodyUnavailable:
        raise
    except Exception as error:  # noqa: BLE001 - a provider answer nobody foresaw: said on the page, logged for support
        logger.error("Fetching the body of message %s failed unexpectedly (%s)", message.pk, describe(error))
        raise BodyUnavailable("failed") from None


def _refused(account: MailAccount, code: str) -> None:
    # The sync's rule for a refused password (sync.services.record_v3_failure): ask for a new one, stop trying.
    if code in PASSWORD_REFUSED and account.engine == "v3":
        record_v3_failure(account_id=account.pk, error_code=code)
