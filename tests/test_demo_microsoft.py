"""The run command's demo Microsoft 365 tenant (tests/fakes/demo_microsoft.py) with demo_data's account.

demo_data creates ben@demo-m365.localhost on V2; the migration signs in at
the demo tenant; its first sync subscribes; `--deliver` (the admin endpoint)
makes the tenant POST change notifications to the live portal, and a real
Celery worker's run brings the mail into the CRM. Then the tenant restarts
from its state file, as after a restart of ./scripts/run.
"""

import io
from datetime import datetime, timezone

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.urls import reverse

from migration import services
from migration.models import Migration, Status
from migration.demo import DEMO_M365_ACCOUNT, DEMO_USER, SEED_MESSAGES
from migration.microsoft import client as ms_client
from portal.devservers import free_port
from sync.models import GraphSubscription, MailAccount, SyncedMessage
from tests.conftest import wait_for
from tests.fakes import demo_microsoft
from tests.fakes.demo_microsoft import DEMO_M365_USER, DemoTenant, seed_of
from tests.fakes.microsoft_fixtures import sign_in

pytestmark = pytest.mark.django_db(transaction=True)


def _tenant(base, site_url):
    return DemoTenant(base=base, site_url=site_url, seed=seed_of(SEED_MESSAGES, datetime.now(timezone.utc)),
                      redirect_paths=(reverse("microsoft-callback"), reverse("microsoft-admin-callback")))


@pytest.fixture
def demo_tenant(settings, live_server, tmp_path):
    """The demo tenant on free ports, the portal's MS_* settings as scripts/run sets them."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.SITE_URL = live_server.url.replace("://localhost:", "://127.0.0.1:")
    settings.MS_GRAPH_NOTIFICATIONS = "on"
    settings.MS_GRAPH_NOTIFY_DEBOUNCE_SECONDS = 0
    demo = _tenant(tmp_path / "demo-microsoft", settings.SITE_URL).start(port=0, admin_port=0)
    ms_client.HTTP_CACHE.clear()
    settings.MS_CLIENT_ID, settings.MS_CLIENT_SECRET = demo.fake.client_id, demo.fake.client_secret
    settings.MS_AUTHORITY = f"{demo.fake.base}/organizations"
    settings.MS_GRAPH_URL = demo.fake.base
    settings.MS_INSTANCE_DISCOVERY = False
    settings.MS_CA_FILE = str(demo.fake.cert_path)
    yield demo
    demo.stop()


def test_delivered_demo_mail_reaches_the_crm_through_a_notification(demo_tenant, client, celery_worker_thread,
                                                                     tmp_path, settings):
    assert DEMO_M365_ACCOUNT == DEMO_M365_USER
    # No demo Dovecot here: a port nothing listens on.
    call_command("demo_data", "--tls-port", str(free_port()), stdout=io.StringIO())
    account = MailAccount.objects.get(address=DEMO_M365_ACCOUNT)
    assert (account.provider_kind, account.engine) == ("microsoft", "v2")
    stand_in = SyncedMessage.objects.filter(account=account).count()
    assert stand_in == sum(1 for m in SEED_MESSAGES if m.with_message_id)

    user = get_user_model().objects.get(email=DEMO_USER[0])
    # The worker runs the steps, as in the demo.
    migration = services.start_migration(user=user, account=account)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == Status.AWAITING_USER)
    client.force_login(user)
    sign_in(client, demo_tenant.fake, migration)
    wait_for(lambda: Migration.objects.get(pk=migration.pk).status == Status.DONE)
    # The handoff's first sync run subscribes at its end.
    wait_for(lambda: GraphSubscription.objects.filter(account=account).exclude(subscription_id="").exists())
    row = GraphSubscription.objects.get(account=account)
    assert row.subscription_id in demo_tenant.fake.subscriptions, row.error_code
    # The tenant's seed mail carries the stand-in history's Message-IDs: nothing came twice.
    assert SyncedMessage.objects.filter(account=account).count() == stand_in

    answer = demo_microsoft.deliver(3, admin_port=demo_tenant.admin.server_address[1])
    assert answer == {"delivered": 3, "notifications": [202, 202, 202]}
    wait_for(lambda: SyncedMessage.objects.filter(account=account, subject__startswith="Neue Nachricht").count() == 3)
    assert SyncedMessage.objects.filter(account=account).count() == stand_in + 3

    # A restart of ./scripts/run: the tenant comes back from its state file with the grant and the subscription.
    demo_tenant.stop()
    again = _tenant(tmp_path / "demo-microsoft", settings.SITE_URL)
    assert set(again.fake.subscriptions) == {row.subscription_id}
    assert again.fake.refresh_tokens == demo_tenant.fake.refresh_tokens
    inbox = again.fake.folder_of(again.fake.users[DEMO_M365_USER], "inbox")
    assert len(inbox.messages) == stand_in + 3


def test_deliver_says_so_when_the_tenant_is_not_running(capsys):
    assert demo_microsoft.main(["--deliver", "1", "--admin-port", str(free_port())]) == 1
    assert "does not answer" in capsys.readouterr().err
