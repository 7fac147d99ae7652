"""Exchange (EWS) push for the listener of sync.imap.idle: a pull subscription on the Inbox per account.

Why pull (Subscribe with PullSubscriptionRequest, then GetEvents every
EWS_PULL_SECONDS) and not streaming (GetStreamingEvents, one HTTP answer kept
open for up to 30 minutes): every request stays a short request and answer
through the sync's own connection (sync.exchange.connection.open_account: the
egress guard's pinned address, TLS against the name, NTLM with the channel
binding, the byte and time caps EWS_MAX_RESPONSE_BYTES/_SECONDS). A streaming
answer would have to be exempted from the time cap that protects every other
EWS answer, and read through a second code path. A pull subscription also
keeps its events on the server between two GetEvents (Microsoft, "Pull
notifications with EWS"): a dropped HTTP connection loses nothing while the
subscription lives. The price is one small GetEvents per account every
EWS_PULL_SECONDS on a kept-alive connection (NTLM signs in once per TCP
connection), not a login.

An event is never trusted as content: NewMailEvent, CreatedEvent, MovedEvent or
CopiedEvent only queue the account's ordinary sync run (debounced by the
listener), which reads the mailbox through SyncFolderItems. ModifiedEvent,
DeletedEvent (read flags, deletions: the CRM keeps what it imported) and event
types exchangelib does not know are ignored.

A subscription Exchange no longer knows (ErrorSubscriptionNotFound,
ErrorExpiredSubscription, ErrorInvalidSubscription, ErrorInvalidWatermark:
it timed out, the mailbox moved, the server restarted) is made again, and the
account is made due for a catch-up run, so mail of the gap is not missed.
A server that refuses subscriptions (an error answer to Subscribe that names
no busy or unavailable server) leaves the account on normal polling with the
code PUSH_UNSUPPORTED on MailAccount.push_error, which support staff see in
the admin; new connection settings clear it (sync.exchange.client.apply_to_account).
"""

import logging
import threading

from django.conf import settings
from exchangelib.errors import (
    ErrorAccessDenied, ErrorExpiredSubscription, ErrorNonExistentMailbox, ErrorInvalidSubscription, ErrorInvalidWatermark, ErrorSubscriptionNotFound,
    ErrorSubscriptionUnsubsribed, ResponseMessageError,
)
from exchangelib.properties import CopiedEvent, CreatedEvent, DistinguishedFolderId, Mailbox, MovedEvent, NewMailEvent
from exchangelib.services import GetEvents, SubscribeToPull, Unsubscribe

from sync import egress
from sync.backoff import reconnect_delay
from sync.errors import MailboxError
from sync.exchange.connection import TRANSIENT, EwsSettings, mailbox_errors, open_account

logger = logging.getLogger(__name__)

PUSH_UNSUPPORTED = "ews_push_unsupported"
# What the subscription asks for; of these, NEW_MAIL queue a sync (see the module docstring).
EVENT_TYPES = ("NewMailEvent", "CreatedEvent", "MovedEvent", "CopiedEvent")
NEW_MAIL = (NewMailEvent, CreatedEvent, MovedEvent, CopiedEvent)
LOST = (ErrorSubscriptionNotFound, ErrorExpiredSubscription, ErrorInvalidSubscription, ErrorInvalidWatermark,
        ErrorSubscriptionUnsubsribed)
MAX_PAGES = 20  # GetEvents answers with MoreEvents per check; a server that never stops is not followed further


class SubscriptionLost(Exception):
    """Exchange no longer knows the subscription or its watermark: subscribe again and catch up."""


class PushUnsupported(Exception):
    """The server refuses pull subscriptions: the account stays on polling."""


def subscribe(account) -> tuple[str, str]:
    """Subscribe (PullSubscriptionRequest) to the Inbox's new-mail events; returns (SubscriptionId, Watermark).

    Timeout: EWS_PULL_TIMEOUT_MINUTES without a GetEvents, then Exchange drops it.
    Raises PushUnsupported for an error answer that is not passing (TRANSIENT),
    MailboxError or what exchangelib raises otherwise (the caller maps it).
    """
    inbox = DistinguishedFolderId(id="inbox", mailbox=Mailbox(email_address=account.primary_smtp_address))
    try:
        return SubscribeToPull(account=account).get(
            folders=[inbox], event_types=EVENT_TYPES, watermark=None, timeout=settings.EWS_PULL_TIMEOUT_MINUTES)
    except TRANSIENT + (ErrorAccessDenied, ErrorNonExistentMailbox):
        raise  # busy, or this login may not open the mailbox: the connection's errors, tried again later
    except ResponseMessageError as error:
        raise PushUnsupported(type(error).__name__) from None


def new_mail(account, subscription_id: str, watermark: str) -> tuple[bool, str]:
    """GetEvents since the watermark: (whether any event announces mail, the watermark to ask with next).

    Follows MoreEvents up to MAX_PAGES answers. Raises SubscriptionLost (see LOST).
    """
    service, announced = GetEvents(account=account), False
    for _page in range(MAX_PAGES):
        try:
            notification = service.get(subscription_id=subscription_id, watermark=watermark)
        except LOST as error:
            raise SubscriptionLost(type(error).__name__) from None
        for event in notification.events or ():
            announced = announced or isinstance(event, NEW_MAIL)
            # Every event (StatusEvent too) carries the bookmark to go on from (Microsoft: "GetEvents": the
            # watermark of the last event of the last answer).
            watermark = event.watermark or watermark
        if not notification.more_events:
            break
    return announced, watermark


def unsubscribe(account, subscription_id: str) -> None:
    """Unsubscribe when the watch stops; a failure is only logged (Exchange drops it after its Timeout anyway)."""
    try:
        Unsubscribe(account=account).get(expect_result=None, subscription_id=subscription_id)
    except Exception as error:  # noqa: BLE001 - best effort on the way out
        logger.info("EWS unsubscribe failed (%s)", type(error).__name__)


class EwsWatch(threading.Thread):
    """One Exchange account in the listener: connect, subscribe, GetEvents every EWS_PULL_SECONDS, trigger
    a sync on new mail; resubscribe when the subscription is lost, reconnect with back-off when the
    connection fails. Same attributes as sync.imap.idle.Connection (stop, connected, refused, connects),
    plus `unsupported` (PUSH_UNSUPPORTED once the server refused the subscription) and `resubscribed`.
    Never touches the database (the listener's main thread does)."""

    def __init__(self, target, listener):
        super().__init__(name=f"ews-{target.account_id}", daemon=True)
        self.target, self.listener = target, listener
        self.stop = threading.Event()
        self.connected = False
        self.refused = False  # a wrong password: not retried until the secret changes
        self.unsupported = ""
        self.connects = 0
        self.resubscribed = 0
        self.start_after = 0.0  # seconds to wait before the first connect (the listener's ramp)

    def run(self) -> None:
        if self.stop.wait(self.start_after):
            return
        failures = 0
        key = destination(self.target.server)
        while not self.stop.is_set():
            if not self.listener.destinations.take(key):
                self.stop.wait(reconnect_delay(failures := failures + 1))
                continue
            try:
                with mailbox_errors(), open_account(self.target.server, self.target.password) as account:
                    self._watch(account)
                    failures = 0
            except PushUnsupported as error:
                logger.warning("EWS push for account %s: the server refuses subscriptions (%s); it stays on polling",
                               self.target.account_id, error)
                self.unsupported = PUSH_UNSUPPORTED
                return
            except MailboxError as error:
                if error.code == "auth_failed":
                    logger.warning("EWS push for account %s: the password is refused; not retried until it changes",
                                   self.target.account_id)
                    self.refused = True
                    return
                failures += 1
                logger.info("EWS push for account %s: %s, retrying", self.target.account_id, error.code)
            except Exception as error:  # noqa: BLE001 - any broken connection: logged, reconnected after a back-off
                failures += 1
                logger.info("EWS push for account %s dropped (%s), reconnecting", self.target.account_id,
                            type(error).__name__)
            finally:
                self.connected = False
                self.listener.destinations.give(key)
            self.stop.wait(reconnect_delay(failures))

    def _watch(self, account) -> None:
        subscription, watermark = subscribe(account)
        # Mail may have come while nothing watched: the account is made due (as for an IDLE connect).
        self.listener.catch_up(self.target.account_id)
        self.connected = True
        self.connects += 1
        try:
            while not self.stop.wait(settings.EWS_PULL_SECONDS):
                try:
                    announced, watermark = new_mail(account, subscription, watermark)
                except SubscriptionLost as error:
                    logger.info("EWS push for account %s: subscription lost (%s), subscribing again",
                                self.target.account_id, error)
                    subscription, watermark = subscribe(account)
                    self.resubscribed += 1
                    self.listener.catch_up(self.target.account_id)
                    continue
                if announced:
                    self.listener.trigger(self.target.account_id)
        finally:
            if self.stop.is_set():
                unsubscribe(account, subscription)


def destination(server: EwsSettings) -> tuple[str, int]:
    """(host, port) of the EWS URL: the listener's per-destination cap counts it with the IMAP servers."""
    _scheme, host, port = egress.split_url(server.url)
    return egress.ascii_host(host), port
