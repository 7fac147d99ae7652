"""Microsoft Graph change notifications: one subscription per V3 Microsoft account on its inbox messages.

A notification only says "something was created in the inbox": it queues a
delta sync of that account (sync.microsoft.webhook), its content is never
trusted. Polling stays as the safety net at SYNC_PUSH_POLL_SECONDS for
accounts with a live subscription (pushed_accounts_q, read by the fan-out).

Protocol sources (Microsoft Graph v1.0 docs): "Create subscription" (Graph
validates notificationUrl and lifecycleNotificationUrl by POSTing
?validationToken=... and expects the token back, text/plain, within 10
seconds), "subscription resource type" (maximum length per resource: Outlook
messages under 7 days), "Update subscription" (PATCH expirationDateTime),
"Delete subscription", "subscription: reauthorize", "Reduce missing
subscriptions and change notifications" (lifecycle events
reauthorizationRequired, subscriptionRemoved, missed).

Subscriptions are made when a sync run of an eligible account ends well
(ensure: after the handoff to V3 and after a re-connect the first run
follows at once) and by beat (maintain: create, renew, remove). Graph must
reach SITE_URL: with the embedded default (http://127.0.0.1) nothing is
subscribed and the account polls at the normal interval (enabled()).
"""

import hmac
import ipaddress
import logging
import secrets
from datetime import datetime, timedelta
from urllib.parse import quote, urlsplit

from django.conf import settings
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from sync import crypto, queue
from sync.microsoft import client
from sync.microsoft.client import MicrosoftError
from sync.microsoft.graph import Graph, graph_time
from sync.models import AccountStatus, Engine, GraphSubscription, MailAccount, ProviderKind
from sync.services import microsoft_tokens_of, save_microsoft_cache

logger = logging.getLogger(__name__)

# The inbox only: new mail lands there; mail filed elsewhere by a rule is caught by the safety-net poll.
RESOURCE = "me/mailFolders('inbox')/messages"
CHANGE_TYPE = "created"
LIFECYCLE_EVENTS = ("reauthorizationRequired", "subscriptionRemoved", "missed")
# Accounts beat looks after per pass (each costs a request to Graph): the rest follow at the next pass.
MAINTAIN_BATCH = 500
# The account the row belongs to can carry a subscription: V3, Microsoft, neither stopped nor waiting to re-connect.
ELIGIBLE = (Q(engine=Engine.V3, provider_kind=ProviderKind.MICROSOFT)
            & ~Q(status__in=[AccountStatus.STOPPED, AccountStatus.RECONNECT]))


def public_site(url: str) -> bool:
    """Whether Graph could deliver to this SITE_URL: https, and a host name that is neither loopback,
    private, link-local nor "localhost" (Graph refuses http notification URLs)."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or not host or host == "localhost" or host.endswith((".localhost", ".local")):
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return "." in host  # a DNS name; single labels (intranet names) are not public
    return address.is_global


def enabled() -> bool:
    """MS_GRAPH_NOTIFICATIONS: on, off, or auto (on when SITE_URL is public: public_site)."""
    mode = settings.MS_GRAPH_NOTIFICATIONS
    return mode == "on" or (mode == "auto" and public_site(settings.SITE_URL))


def notification_url() -> str:
    """The absolute URL Graph posts change notifications to (SITE_URL + the endpoint's path)."""
    return settings.SITE_URL.rstrip("/") + reverse("graph-notifications")


def lifecycle_url() -> str:
    """The absolute URL Graph posts lifecycle notifications to (reauthorizationRequired, subscriptionRemoved,
    missed; Microsoft Graph docs "Reduce missing subscriptions and change notifications")."""
    return settings.SITE_URL.rstrip("/") + reverse("graph-lifecycle")


def pushed_accounts_q(now: datetime) -> Q:
    """A Q on MailAccount: accounts with a live subscription at `now` (polled every SYNC_PUSH_POLL_SECONDS)."""
    return Q(graph_subscription__expires_at__gt=now) & ~Q(graph_subscription__subscription_id="")


def client_state_of(row: GraphSubscription) -> str:
    """The subscription's clientState secret ("" when unreadable: nothing then verifies against it)."""
    try:
        return str(crypto.decrypt_json(row.client_state_encrypted).get("client_state") or "")
    except crypto.SecretUnreadable:
        return ""


def verify(subscription_id: str, given_state: str) -> tuple[GraphSubscription | None, str]:
    """Check one notification: (the subscription's row, "") when its id is ours and its clientState matches
    (compared in constant time), else (None, a rejection code for the log)."""
    if not subscription_id or len(subscription_id) > 200 or not isinstance(given_state, str):
        return None, "graph_notify_malformed"
    row = GraphSubscription.objects.filter(subscription_id=subscription_id).first()
    if row is None:
        return None, "graph_notify_unknown_subscription"
    expected = client_state_of(row)
    if not expected:  # its secret cannot be read (keys rotated away): support needs to know it is not a forgery
        return None, "graph_notify_secret_unreadable"
    if not hmac.compare_digest(expected.encode(), given_state.encode()):
        return None, "graph_notify_bad_client_state"
    return row, ""


class _Session:
    """A Graph client for one account's subscription requests; a refreshed token cache is saved."""

    def __init__(self, account: MailAccount):
        tokens = microsoft_tokens_of(account)
        token, refreshed = client.access_token(tokens.get("cache", ""),
                                               home_account_id=tokens.get("home_account_id", ""))
        if refreshed:
            stored = save_microsoft_cache(account_id=account.pk, cache=refreshed,
                                          home_account_id=tokens["home_account_id"],
                                          expected=account.token_cache_encrypted)
            # The next session of this object starts from the rotated refresh token, not the old one.
            account.token_cache_encrypted = stored or account.token_cache_encrypted
        self.graph = Graph(token, mailbox=tokens.get("home_account_id") or account.address)

    def __enter__(self) -> Graph:
        return self.graph

    def __exit__(self, *exc):
        self.graph.close()


def _code_of(status: int) -> str:
    if status == 401:
        return "ms_reconnect"
    if status == 403:
        return "ms_graph_denied"
    if status == 429 or status >= 500:
        return "ms_unreachable"
    return "ms_subscription_refused"  # 400: Graph could not validate our endpoint, or refused the request


def _failed(account_id: int, code: str, what: str) -> None:
    """A subscription request failed: the code on the row (support staff see it in the admin) and a log line."""
    logger.warning("Graph subscription %s of account %s failed: %s", what, account_id, code)
    GraphSubscription.objects.filter(account_id=account_id).update(error_code=code, attempted_at=timezone.now())


def subscribe(account_id: int) -> bool:
    """Create the account's subscription (replacing one it had); True when Graph accepted it.

    Graph validates both URLs during the request; a refusal (400) or any
    other failure is recorded as error_code on the row, and the account keeps
    polling at the normal interval. Errors are not raised.
    """
    account = MailAccount.objects.filter(ELIGIBLE, pk=account_id).first()
    if account is None or not enabled():
        return False
    row, _ = GraphSubscription.objects.get_or_create(account=account)
    if row.subscription_id:
        remove_at_graph(account, row.subscription_id)  # one subscription per account, never two
    GraphSubscription.objects.filter(pk=row.pk).update(subscription_id="", attempted_at=timezone.now())
    client_state = secrets.token_urlsafe(64)[:128]  # Graph allows up to 128 characters
    expires = timezone.now() + timedelta(minutes=settings.MS_GRAPH_SUBSCRIPTION_MINUTES)
    body = {"changeType": CHANGE_TYPE, "notificationUrl": notification_url(), "lifecycleNotificationUrl": lifecycle_url(),
            "resource": RESOURCE, "expirationDateTime": graph_time(expires), "clientState": client_state}
    try:
        with _Session(account) as graph:
            status, answer = graph.send("POST", "/v1.0/subscriptions", body)
    except (MicrosoftError, crypto.SecretUnreadable) as error:
        _failed(account.pk, getattr(error, "code", "secret_unreadable"), "create")
        return False
    if status != 201 or not str(answer.get("id") or ""):
        _failed(account.pk, _code_of(status) if status != 201 else "ms_protocol", "create")
        return False
    GraphSubscription.objects.filter(pk=row.pk).update(
        subscription_id=str(answer["id"])[:200], client_state_encrypted=crypto.encrypt_json({"client_state": client_state}),
        expires_at=_expiry(answer, expires), error_code="")
    logger.info("Graph subscription created for account %s", account.pk)
    return True


def _expiry(answer: dict, asked: datetime) -> datetime:
    """The expirationDateTime Graph granted (it may shorten what was asked), else what was asked."""
    try:
        return datetime.fromisoformat(str(answer["expirationDateTime"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return asked


def renew(row: GraphSubscription) -> bool:
    """PATCH the subscription's expirationDateTime MS_GRAPH_SUBSCRIPTION_MINUTES ahead; a subscription Graph
    no longer knows (404) is created again. False (and the code recorded) on failure."""
    expires = timezone.now() + timedelta(minutes=settings.MS_GRAPH_SUBSCRIPTION_MINUTES)
    try:
        with _Session(row.account) as graph:
            status, answer = graph.send("PATCH", f"/v1.0/subscriptions/{quote(row.subscription_id, safe='')}",
                                        {"expirationDateTime": graph_time(expires)})
    except (MicrosoftError, crypto.SecretUnreadable) as error:
        _failed(row.account_id, getattr(error, "code", "secret_unreadable"), "renewal")
        return False
    if status == 404:
        GraphSubscription.objects.filter(pk=row.pk).update(subscription_id="")
        return subscribe(row.account_id)
    if status != 200:
        _failed(row.account_id, _code_of(status), "renewal")
        return False
    GraphSubscription.objects.filter(pk=row.pk).update(expires_at=_expiry(answer, expires), error_code="")
    return True


def reauthorize(row: GraphSubscription) -> bool:
    """Answer a reauthorizationRequired lifecycle event: POST .../reauthorize with a fresh token; when Graph
    refuses that, a renewal (PATCH) also reauthorizes ("Reduce missing subscriptions", reauthorize)."""
    try:
        with _Session(row.account) as graph:
            status, _ = graph.send("POST", f"/v1.0/subscriptions/{quote(row.subscription_id, safe='')}/reauthorize")
    except (MicrosoftError, crypto.SecretUnreadable) as error:
        _failed(row.account_id, getattr(error, "code", "secret_unreadable"), "reauthorization")
        return False
    if status in (200, 204):
        GraphSubscription.objects.filter(pk=row.pk).update(error_code="")
        return True
    return renew(row)


def remove_at_graph(account: MailAccount, subscription_id: str) -> bool:
    """DELETE the subscription at Graph; True when gone (404 counts). A failure is logged with its code; the
    subscription then ends at its expirationDateTime and its notifications no longer verify."""
    try:
        with _Session(account) as graph:
            status, _ = graph.send("DELETE", f"/v1.0/subscriptions/{quote(subscription_id, safe='')}")
    except (MicrosoftError, crypto.SecretUnreadable) as error:
        logger.warning("Graph subscription of account %s could not be deleted: %s", account.pk,
                       getattr(error, "code", "secret_unreadable"))
        return False
    if status not in (204, 200, 404):
        logger.warning("Graph subscription of account %s could not be deleted: %s", account.pk, _code_of(status))
        return False
    return True


def remove(row: GraphSubscription) -> None:
    """The account left (no longer V3 Microsoft, stopped, waiting for a re-connect) or push is switched off:
    delete the subscription at Graph (best effort) and the row, so that its notifications verify no more."""
    if row.subscription_id:
        remove_at_graph(row.account, row.subscription_id)
    row.delete()
    logger.info("Graph subscription of account %s removed", row.account_id)


def ensure(account: MailAccount) -> bool:
    """After a sync run that ended well: subscribe an eligible account that has no live subscription, unless
    the last try failed less than MS_GRAPH_SUBSCRIBE_RETRY_SECONDS ago. One query when nothing is to do."""
    if not enabled() or account.provider_kind != ProviderKind.MICROSOFT or account.engine != Engine.V3:
        return False
    now = timezone.now()
    row = GraphSubscription.objects.filter(account=account).first()
    if row is not None and row.subscription_id and row.expires_at and row.expires_at > now:
        return False
    retry = now - timedelta(seconds=settings.MS_GRAPH_SUBSCRIBE_RETRY_SECONDS)
    if row is not None and row.error_code and row.attempted_at and row.attempted_at > retry:
        return False
    return subscribe(account.pk)


def maintain() -> dict:
    """Beat's pass over the subscriptions; returns counts {"removed", "renewed", "created"}.

    Removes the subscriptions of accounts no longer eligible (and all of
    them when push is off or SITE_URL not public), renews those expiring
    within MS_GRAPH_RENEW_BEFORE_SECONDS, creates missing ones (failed ones
    again after MS_GRAPH_SUBSCRIBE_RETRY_SECONDS). At most MAINTAIN_BATCH of each.
    """
    now = timezone.now()
    counts = {"removed": 0, "renewed": 0, "created": 0}
    leaving = GraphSubscription.objects.select_related("account")
    if enabled():
        leaving = leaving.exclude(account__in=MailAccount.objects.filter(ELIGIBLE))
    for row in leaving[:MAINTAIN_BATCH]:
        remove(row)
        counts["removed"] += 1
    if not enabled():
        return counts
    due = (GraphSubscription.objects.select_related("account").filter(account__in=MailAccount.objects.filter(ELIGIBLE))
           .exclude(subscription_id="").filter(expires_at__lt=now + timedelta(seconds=settings.MS_GRAPH_RENEW_BEFORE_SECONDS)))
    for row in due[:MAINTAIN_BATCH]:
        counts["renewed"] += bool(renew(row))
    retry = now - timedelta(seconds=settings.MS_GRAPH_SUBSCRIBE_RETRY_SECONDS)
    missing = (MailAccount.objects.filter(ELIGIBLE)
               .filter(Q(graph_subscription__isnull=True)
                       | Q(graph_subscription__subscription_id="", graph_subscription__attempted_at__lt=retry)
                       | Q(graph_subscription__subscription_id="", graph_subscription__attempted_at__isnull=True))
               .values_list("pk", flat=True))
    for account_id in list(missing[:MAINTAIN_BATCH]):
        counts["created"] += bool(subscribe(account_id))
    return counts


def handle_lifecycle(account_id: int, event: str) -> None:
    """A verified lifecycle notification (queued by the webhook with ids only):
    reauthorizationRequired -> reauthorize; subscriptionRemoved -> subscribe again and sync;
    missed -> sync (the delta link catches up on whatever the lost notifications were about)."""
    row = GraphSubscription.objects.select_related("account").filter(account_id=account_id).first()
    if row is None or event not in LIFECYCLE_EVENTS:
        return
    logger.info("Graph lifecycle event %s for account %s", event, account_id)
    if event == "reauthorizationRequired" and row.subscription_id:
        reauthorize(row)
    elif event == "subscriptionRemoved":
        GraphSubscription.objects.filter(pk=row.pk).update(subscription_id="")  # Graph deleted it already
        subscribe(account_id)
        queue.enqueue_sync(account_id)
    elif event == "missed":
        queue.enqueue_sync(account_id)
