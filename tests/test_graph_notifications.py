"""Push for V3 Microsoft accounts: Graph change notifications (sync.microsoft.subscriptions, .webhook).

The Graph fake validates the portal's endpoint over the network as Graph
does, posts change and lifecycle notifications to the live Django server,
and a real Celery worker runs the delta sync they queue.
"""

import base64
import json
import logging
from datetime import timedelta

import pytest
import requests
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from portal.celery import app
from sync import schedule
from sync.microsoft import subscriptions
from sync.models import GraphSubscription, MailAccount, SyncedMessage
from sync.runs import accounts_to_sync
from tests.conftest import wait_for
from tests.fakes.microsoft_fixtures import fake_microsoft_server, microsoft, migrated, ms_account  # noqa: F401

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def push(settings, live_server):
    """Graph notifications on, SITE_URL the live server (set before the Microsoft fixtures read it)."""
    settings.MS_GRAPH_NOTIFICATIONS = "on"
    # 127.0.0.1, not pytest-django's "localhost": nothing here may go to another address (::1).
    settings.SITE_URL = live_server.url.replace("://localhost:", "://127.0.0.1:")
    settings.MS_GRAPH_NOTIFY_DEBOUNCE_SECONDS = 0
    return settings


@pytest.fixture
def subscribed(push, migrated, microsoft):
    """anna@contoso.com on V3; her first sync run subscribed her (subscriptions.ensure)."""
    row = GraphSubscription.objects.get(account=migrated)
    assert row.subscription_id in microsoft.subscriptions, (row.error_code, microsoft.posts_to_portal)
    return row


@pytest.fixture
def broker():
    """The real Redis broker, emptied; no worker takes anything from it."""
    with app.connection_for_write() as conn:
        redis = conn.default_channel.client
        redis.flushdb()
        yield redis


def _url(live_server, name):
    return live_server.url.replace("://localhost:", "://127.0.0.1:") + reverse(name)


def _notification(row, *, client_state=None, subscription_id=None, **extra):
    return {"value": [{"subscriptionId": subscription_id or row.subscription_id, "changeType": "created",
                       "clientState": subscriptions.client_state_of(row) if client_state is None else client_state,
                       "resource": "Users/x/Messages/y", "tenantId": "t", **extra}]}


def _subjects(account):
    return set(SyncedMessage.objects.filter(account=account).values_list("subject", flat=True))


def test_the_endpoint_answers_the_validation_handshake(push, live_server):
    token = "Validation: Testing client application reachability <&> ü"
    for name in ("graph-notifications", "graph-lifecycle"):
        response = requests.post(_url(live_server, name), params={"validationToken": token},
                                 headers={"Content-Type": "text/plain"}, timeout=10)
        assert response.status_code == 200 and response.text == token
        assert response.headers["Content-Type"].startswith("text/plain")
    assert requests.get(_url(live_server, "graph-notifications"), timeout=10).status_code == 405


def test_the_first_sync_subscribes_after_graph_validated_both_urls(subscribed, microsoft, live_server, client):
    sub = microsoft.subscriptions[subscribed.subscription_id]
    assert sub["resource"] == "me/mailFolders('inbox')/messages" and sub["changeType"] == "created"
    assert sub["notificationUrl"] == _url(live_server, "graph-notifications")
    assert sub["lifecycleNotificationUrl"] == _url(live_server, "graph-lifecycle")
    validations = [p for p in microsoft.posts_to_portal if p["kind"] == "validation"]
    assert [p["status"] for p in validations] == [200, 200]
    # The secret is stored encrypted only, and Graph got exactly that one.
    assert sub["clientState"] and sub["clientState"] not in subscribed.client_state_encrypted
    assert subscriptions.client_state_of(subscribed) == sub["clientState"]
    assert subscribed.expires_at > timezone.now() + timedelta(days=2) and subscribed.error_code == ""
    assert client.get("/health/").json()["checks"]["graph_push"] == {"status": "on", "subscriptions": 1, "failed": 0}


def test_a_failed_validation_is_recorded_and_the_account_keeps_polling(push, migrated, microsoft, caplog, client):
    microsoft.validation_echo_wrong = True
    old = GraphSubscription.objects.get(account=migrated).subscription_id
    with caplog.at_level(logging.WARNING):
        assert subscriptions.subscribe(migrated.pk) is False
    row = GraphSubscription.objects.get(account=migrated)
    assert row.subscription_id == "" and row.error_code == "ms_subscription_refused"
    assert "ms_subscription_refused" in caplog.text
    assert client.get("/health/").json()["checks"]["graph_push"] == {"status": "on", "subscriptions": 0, "failed": 1}
    assert old not in microsoft.subscriptions  # the old one was deleted before the new try
    assert not MailAccount.objects.filter(subscriptions.pushed_accounts_q(timezone.now()), pk=migrated.pk).exists()
    # The next sync run does not hammer Graph again before MS_GRAPH_SUBSCRIBE_RETRY_SECONDS.
    before = len(microsoft.seen("/v1.0/subscriptions"))
    assert subscriptions.ensure(MailAccount.objects.get(pk=migrated.pk)) is False
    assert len(microsoft.seen("/v1.0/subscriptions")) == before


def test_a_delivered_message_reaches_the_crm_through_a_notification(subscribed, microsoft, celery_worker_thread):
    account = subscribed.account
    microsoft.deliver(account.address, subject="per Push")
    assert microsoft.posts_to_portal[-1]["kind"] == "notification"
    assert microsoft.posts_to_portal[-1]["status"] == 202
    wait_for(lambda: "per Push" in _subjects(account))  # no poll ran: only the notification queued the run
    assert SyncedMessage.objects.filter(account=account, subject="per Push").count() == 1


@pytest.mark.parametrize("forgery", ["wrong client state", "unknown subscription", "no client state"])
def test_a_forged_notification_triggers_nothing(subscribed, live_server, broker, caplog, forgery):
    kwargs = {"wrong client state": {"client_state": "x" * 86},
              "unknown subscription": {"subscription_id": "0" * 32},
              "no client state": {"client_state": ""}}[forgery]
    with caplog.at_level(logging.WARNING):
        response = requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed, **kwargs),
                                 timeout=10)
    assert response.status_code == 403
    assert broker.llen("celery") == 0
    code = "graph_notify_unknown_subscription" if forgery == "unknown subscription" else "graph_notify_bad_client_state"
    assert code in caplog.text
    # The same request with the right secret queues one sync: the test can fail.
    response = requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed), timeout=10)
    assert response.status_code == 202 and broker.llen("celery") == 1


def test_a_forged_batch_of_many_items_is_one_log_line_per_code(subscribed, live_server, broker, caplog):
    forged = [_notification(subscribed, subscription_id=f"{n:032d}")["value"][0] for n in range(50)]
    forged += [_notification(subscribed, client_state="x" * 86)["value"][0] for _ in range(3)] + [7]
    with caplog.at_level(logging.WARNING, logger="sync.microsoft.webhook"):
        response = requests.post(_url(live_server, "graph-notifications"), json={"value": forged}, timeout=10)
    assert response.status_code == 403 and broker.llen("celery") == 0
    lines = [record.getMessage() for record in caplog.records if record.name == "sync.microsoft.webhook"]
    assert sorted(lines) == ["Graph notification refused: graph_notify_bad_client_state (3 of 54 items)",
                             "Graph notification refused: graph_notify_malformed (1 of 54 items)",
                             "Graph notification refused: graph_notify_unknown_subscription (50 of 54 items)"]


@pytest.mark.parametrize("body", [b"not json", b'{"value": "x"}', b'{"value": []}', b"[]",
                                  b"[" * 100_000 + b"]" * 100_000],  # nesting past json's recursion limit
                         ids=["not json", "value not a list", "empty", "list", "deeply nested"])
def test_a_malformed_batch_is_refused(subscribed, live_server, broker, body):
    response = requests.post(_url(live_server, "graph-notifications"), data=body,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400 and broker.llen("celery") == 0


def test_a_body_over_the_cap_is_refused(subscribed, live_server, broker, settings):
    settings.MS_GRAPH_NOTIFY_MAX_BYTES = 2048
    batch = _notification(subscribed, padding="x" * 4096)
    response = requests.post(_url(live_server, "graph-notifications"), json=batch, timeout=10)
    assert response.status_code == 400 and broker.llen("celery") == 0


def test_the_endpoint_is_rate_limited(subscribed, live_server, broker, settings):
    settings.MS_GRAPH_NOTIFY_RATE_PER_IP = 3
    cache.clear()  # this minute's counters start at nought (the validation requests of the fixture counted)
    url = _url(live_server, "graph-notifications")
    statuses = [requests.post(url, json=_notification(subscribed), timeout=10).status_code for _ in range(5)]
    assert statuses == [202, 202, 202, 429, 429]
    assert broker.llen("celery") == 3
    settings.MS_GRAPH_NOTIFY_RATE_PER_IP = 100
    settings.MS_GRAPH_NOTIFY_RATE_TOTAL = 6  # five counted so far this minute (the refused ones too)
    assert requests.post(url, json=_notification(subscribed), timeout=10).status_code == 202
    assert requests.post(url, json=_notification(subscribed), timeout=10).status_code == 429
    assert broker.llen("celery") == 4


def test_notifications_within_the_debounce_window_queue_one_run_and_one_more(subscribed, live_server, broker,
                                                                            settings):
    settings.MS_GRAPH_NOTIFY_DEBOUNCE_SECONDS = 60
    for _ in range(5):
        assert requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed),
                             timeout=10).status_code == 202
    assert broker.llen("celery") == 2  # one now, one at the end of the window


def test_a_subscription_near_expiry_is_renewed(subscribed, microsoft):
    microsoft.expire_subscription(subscribed.subscription_id, in_minutes=30)
    GraphSubscription.objects.filter(pk=subscribed.pk).update(expires_at=timezone.now() + timedelta(minutes=30))
    assert subscriptions.maintain() == {"removed": 0, "renewed": 1, "created": 0}
    row = GraphSubscription.objects.get(pk=subscribed.pk)
    assert row.subscription_id == subscribed.subscription_id  # renewed in place (PATCH)
    assert row.expires_at > timezone.now() + timedelta(days=2)
    assert microsoft.subscriptions[row.subscription_id]["expires"] > timezone.now() + timedelta(days=2)
    assert [r["method"] for r in microsoft.seen(f"/v1.0/subscriptions/{row.subscription_id}")] == ["PATCH"]
    assert subscriptions.maintain() == {"removed": 0, "renewed": 0, "created": 0}  # not due any more


def test_a_subscription_graph_let_expire_is_made_again(subscribed, microsoft):
    microsoft.expire_subscription(subscribed.subscription_id)  # Graph dropped it: PATCH answers 404
    GraphSubscription.objects.filter(pk=subscribed.pk).update(expires_at=timezone.now() + timedelta(minutes=1))
    assert subscriptions.maintain()["renewed"] == 1
    row = GraphSubscription.objects.get(pk=subscribed.pk)
    assert row.subscription_id != subscribed.subscription_id and row.subscription_id in microsoft.subscriptions


@pytest.mark.parametrize("event", ["missed", "subscriptionRemoved"])
def test_lifecycle_events_catch_up_with_a_sync(subscribed, microsoft, celery_worker_thread, event):
    account = subscribed.account
    live = microsoft.subscriptions.pop(subscribed.subscription_id)  # notifications get lost ...
    microsoft.deliver(account.address, subject="verpasst")
    microsoft.subscriptions[live["id"]] = live
    assert microsoft.lifecycle(subscribed.subscription_id, event)["status"] == 202
    wait_for(lambda: "verpasst" in _subjects(account))
    row = wait_for(lambda: GraphSubscription.objects.filter(account=account).exclude(subscription_id="").first())
    if event == "subscriptionRemoved":
        row = wait_for(lambda: GraphSubscription.objects.filter(account=account).exclude(
            subscription_id__in=["", subscribed.subscription_id]).first())
        assert list(microsoft.subscriptions) == [row.subscription_id]
    else:
        assert row.subscription_id == subscribed.subscription_id


def test_reauthorization_required_reauthorizes(subscribed, microsoft, celery_worker_thread):
    assert microsoft.lifecycle(subscribed.subscription_id, "reauthorizationRequired")["status"] == 202
    wait_for(lambda: microsoft.subscriptions[subscribed.subscription_id]["reauthorized"] == 1)
    assert microsoft.subscriptions[subscribed.subscription_id]["needs_reauthorization"] is False


def test_a_lifecycle_event_with_a_wrong_secret_does_nothing(subscribed, live_server, broker):
    batch = _notification(subscribed, client_state="falsch", lifecycleEvent="subscriptionRemoved")
    assert requests.post(_url(live_server, "graph-lifecycle"), json=batch, timeout=10).status_code == 403
    assert broker.llen("celery") == 0


@pytest.mark.parametrize("leaves", ["reconnect", "stopped", "back on V2"])
def test_the_subscription_is_removed_when_the_account_leaves(subscribed, microsoft, live_server, broker, leaves):
    change = {"reconnect": {"status": "reconnect"}, "stopped": {"status": "stopped"},
              "back on V2": {"engine": "v2"}}[leaves]
    MailAccount.objects.filter(pk=subscribed.account_id).update(**change)
    assert subscriptions.maintain()["removed"] == 1
    assert microsoft.subscriptions == {}
    assert [r["method"] for r in microsoft.seen(f"/v1.0/subscriptions/{subscribed.subscription_id}")] == ["DELETE"]
    assert not GraphSubscription.objects.filter(account_id=subscribed.account_id).exists()
    # A late notification of the removed subscription verifies no more.
    response = requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed), timeout=10)
    assert response.status_code == 403 and broker.llen("celery") == 0


def test_switching_push_off_removes_every_subscription(subscribed, microsoft, push):
    push.MS_GRAPH_NOTIFICATIONS = "off"
    assert subscriptions.maintain() == {"removed": 1, "renewed": 0, "created": 0}
    assert microsoft.subscriptions == {} and not GraphSubscription.objects.exists()


def test_a_deleted_account_takes_its_subscription_row_along(subscribed, live_server, broker):
    MailAccount.objects.filter(pk=subscribed.account_id).delete()
    assert not GraphSubscription.objects.exists()
    response = requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed), timeout=10)
    assert response.status_code == 403 and broker.llen("celery") == 0


def test_a_reconnect_subscribes_again(subscribed, microsoft):
    MailAccount.objects.filter(pk=subscribed.account_id).update(status="reconnect")
    subscriptions.maintain()
    assert microsoft.subscriptions == {}
    from sync.runs import sync_account
    from sync.services import reconnect_microsoft, microsoft_tokens_of

    account = MailAccount.objects.get(pk=subscribed.account_id)
    tokens = microsoft_tokens_of(account)
    reconnect_microsoft(account_id=account.pk, cache=tokens["cache"], home_account_id=tokens["home_account_id"])
    sync_account(account.pk)  # the run the re-connect queues
    row = GraphSubscription.objects.get(account=account)
    assert row.subscription_id and list(microsoft.subscriptions) == [row.subscription_id]


def test_pushed_accounts_poll_at_the_longer_interval(subscribed, push, broker):
    push.SYNC_PUSH_POLL_SECONDS = 7200
    MailAccount.objects.filter(pk=subscribed.account_id).update(sync_due_at=None, sync_queued_at=None,
                                                                sync_lease_until=None)
    before = timezone.now()
    assert subscribed.account_id in accounts_to_sync()
    due = MailAccount.objects.get(pk=subscribed.account_id).sync_due_at
    assert due > before + timedelta(seconds=7200 * 0.8)


def test_no_subscription_when_site_url_is_the_embedded_default(settings, migrated, microsoft, broker, client):
    # settings.SITE_URL is the embedded default (http://127.0.0.1:8000) and MS_GRAPH_NOTIFICATIONS "auto".
    assert settings.MS_GRAPH_NOTIFICATIONS == "auto" and settings.SITE_URL.startswith("http://127.0.0.1")
    assert subscriptions.enabled() is False
    assert not GraphSubscription.objects.exists() and microsoft.subscriptions == {}
    assert client.get("/health/").json()["checks"]["graph_push"]["status"] == "off"
    assert subscriptions.maintain() == {"removed": 0, "renewed": 0, "created": 0}
    assert not microsoft.seen("/v1.0/subscriptions")
    MailAccount.objects.filter(pk=migrated.pk).update(sync_due_at=None, sync_queued_at=None, sync_lease_until=None)
    before = timezone.now()
    accounts_to_sync()
    due = MailAccount.objects.get(pk=migrated.pk).sync_due_at
    assert due < before + timedelta(seconds=settings.CELERY_BEAT_SYNC_SECONDS + 5)  # the normal interval


@pytest.mark.parametrize("url, public", [
    ("https://crm.example.com", True), ("https://crm.example.com:8443/portal/", True),
    ("http://crm.example.com", False), ("https://127.0.0.1:8000", False), ("https://localhost", False),
    ("https://10.1.2.3", False), ("https://192.168.0.10", False), ("https://[::1]", False),
    ("https://intranet", False), ("https://crm.local", False), ("https://203.0.113.5", False),
    ("https://8.8.8.8", True),
])
def test_auto_subscribes_only_for_a_public_https_site(url, public, settings):
    assert subscriptions.public_site(url) is public
    settings.SITE_URL, settings.MS_GRAPH_NOTIFICATIONS = url, "auto"
    assert subscriptions.enabled() is public
    settings.MS_GRAPH_NOTIFICATIONS = "off"
    assert subscriptions.enabled() is False


def test_no_secret_in_logs_or_task_arguments(subscribed, microsoft, live_server, broker, caplog):
    secret = subscriptions.client_state_of(subscribed)
    with caplog.at_level(logging.DEBUG):
        assert requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed),
                             timeout=10).status_code == 202
        assert microsoft.lifecycle(subscribed.subscription_id, "missed")["status"] == 202
        requests.post(_url(live_server, "graph-notifications"), json=_notification(subscribed, client_state="y"),
                      timeout=10)
        subscriptions.subscribe(subscribed.account_id)  # a new secret, through the log's create path
    messages = broker.lrange("celery", 0, -1)
    assert len(messages) == 2  # the sync and the lifecycle task
    tasks = [json.loads(m)["headers"]["task"] for m in messages]
    assert sorted(tasks) == ["sync.tasks.graph_lifecycle", "sync.tasks.sync_account"]
    new_secret = subscriptions.client_state_of(GraphSubscription.objects.get(pk=subscribed.pk))
    bodies = [base64.b64decode(json.loads(m)["body"]).decode() for m in messages]
    assert str(subscribed.account_id) in bodies[0]  # the arguments are readable here: ids only
    for text in bodies + [m.decode() for m in messages] + [caplog.text]:
        assert secret not in text and new_secret not in text


def test_a_run_of_a_subscribed_account_backs_off_up_to_the_push_poll(subscribed, push):
    """The run's own next due time (sync.schedule) counts a live Graph subscription as push, like the fan-out."""
    push.SYNC_INTERVAL_MIN_SECONDS, push.CELERY_BEAT_SYNC_SECONDS = 60, 120
    push.SYNC_INTERVAL_MAX_SECONDS, push.SYNC_PUSH_POLL_SECONDS = 900, 7200
    MailAccount.objects.filter(pk=subscribed.account_id).update(sync_interval_seconds=3600)
    assert schedule.after_run(subscribed.account_id, new_messages=2) == 7200  # push queued it; no sooner poll
    GraphSubscription.objects.filter(pk=subscribed.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    assert schedule.after_run(subscribed.account_id, new_messages=2) == 60  # lapsed: polled like any account


def test_a_secret_that_cannot_be_read_is_told_apart_from_a_forgery(subscribed):
    GraphSubscription.objects.filter(pk=subscribed.pk).update(client_state_encrypted="not-a-token")
    assert subscriptions.verify(subscribed.subscription_id, "anything") == (None, "graph_notify_secret_unreadable")
