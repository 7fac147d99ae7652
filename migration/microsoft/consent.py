"""Admin consent per Microsoft tenant: the waiting state, the links, the callback.

What counts as proof: only Microsoft itself. A user's successful sign-in
(the token endpoint issued tokens and Graph answered) proves the consent and
makes the tenant's record "granted"; the token endpoint's own consent error
proves it missing. Everything that travels through a browser (a sign-in's
error redirect, an admin-consent callback) can be forged by whoever holds
the browser: it moves that user's own migration, and at most marks the
tenant "reported" (an admin-consent callback whose tenant holds the app) or
sets the "blocked" hint that shows the next users the admin path first.

Resume: a reported consent cannot revive the user's failed sign-in (Microsoft
issued no code), so every migration of the tenant that waits goes back to
"awaiting_user" with consent_reported set. Its user gets an e-mail; a page
that is still open notices the change and continues to Microsoft by itself
(one redirect that usually passes without a prompt), and that sign-in shows
whether the consent is there; a page opened later says the admin answered.

Admins who consent by hand in the Entra admin center send no callback: a
periodic task (poll_admin_consents) tries the callback's proof for every
tenant with waiting migrations and resumes them the same way.
"""

import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.core import signing
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone, translation
from django.utils.crypto import constant_time_compare
from django.utils.translation import gettext as _

from migration import services
from migration.microsoft import client
from migration.microsoft.client import MicrosoftError
from migration.models import AdminConsentRequest, ConsentStatus, Migration, Status, TenantConsent
from sync import queue
from sync.models import ProviderKind

logger = logging.getLogger(__name__)

LINK_SALT = "migration.microsoft.admin-link"
SESSION_KEY = "microsoft_admin_states"
REQUEST_MAX_AGE = timedelta(hours=1)  # from the redirect to Microsoft until its callback
# Anyone holding an admin link may post it, without a login: each post makes one request
# row. Per tenant only the newest are kept (an older redirect's callback then counts as
# expired), and the sweeper deletes expired ones, so the rows stay bounded.
MAX_OPEN_REQUESTS = 20
# In Migration.detected once the "your admin answered" e-mail is out: a redelivered
# task (acks_late) must not tell the user twice.
MAIL_MARKER = "consent_mail_sent"
# Admin links a user may have mailed to themselves (to forward), per user and per tenant, in one hour.
LINK_MAILS_PER_USER = 3
LINK_MAILS_PER_TENANT = 10
LINK_MAIL_WINDOW = 3600  # seconds


def tenant_of(migration: Migration) -> str:
    """The tenant as the portal addresses it: recorded, else the mail domain."""
    return (migration.detected or {}).get("tenant") or tenant_for_address(migration.account.address)


def tenant_for_address(address: str) -> str:
    """Microsoft accepts a verified mail domain wherever a tenant id goes."""
    return address.rsplit("@", 1)[-1].lower()


def require_admin_consent(*, migration: Migration, reason: str, actor: str, proven: bool = False) -> Migration:
    """Microsoft answered "Need admin approval": wait for an admin of the tenant.

    proven: the answer came from Microsoft's token endpoint to the worker,
    not through the user's browser. Only then may a consent recorded as
    granted or reported go back to requested; an error redirect anyone can
    forge moves this migration and sets the tenant's "blocked" hint, no more.
    A migration that already waits stays as it is: the user signed in again
    before an admin consented (the caller says that the consent is still missing).
    """
    if migration.status == Status.AWAITING_ADMIN_CONSENT:
        return migration
    tenant = tenant_of(migration)
    consent, _created = TenantConsent.objects.get_or_create(tenant=tenant)
    changes = {"blocked_at": timezone.now()}
    if proven and consent.status != ConsentStatus.REQUESTED:
        changes["status"] = ConsentStatus.REQUESTED  # given once and missing again (revoked, new permissions)
    TenantConsent.objects.filter(pk=consent.pk).update(**changes)
    detected = {**(migration.detected or {}), "tenant": tenant}
    detected.pop("consent_reported", None)
    detected.pop(MAIL_MARKER, None)  # the next consent is news again
    return services.transition(
        migration, to=Status.AWAITING_ADMIN_CONSENT, reason=f"admin consent required: {reason}"[:300],
        actor=actor, detected=detected, secret_encrypted="", error_code="",
    )


def tenant_blocked(tenant: str) -> bool:
    """A user of this tenant met Microsoft's "Need admin approval" (a consent code, or they said so)
    and no user of the tenant has signed in successfully since."""
    return TenantConsent.objects.filter(tenant=tenant, blocked_at__isnull=False).exists()


def record_sign_in(*, tenant: str) -> None:
    """A user of the tenant signed in and Graph answered: Microsoft proved the consent.

    The tenant's record becomes granted and its "blocked" hint goes (a user
    who clicked "Microsoft hat ... angezeigt" by mistake no longer sends
    everyone after them to the admin path first). No record is created.
    """
    TenantConsent.objects.filter(tenant=tenant).exclude(status=ConsentStatus.GRANTED, blocked_at=None).update(
        status=ConsentStatus.GRANTED, granted_at=timezone.now(), blocked_at=None)


def report_block(*, migration: Migration, actor: str) -> Migration:
    """The user says Microsoft showed "Administratorgenehmigung erforderlich".

    Microsoft's blocking page never redirects by itself, and its way back
    (error=access_denied, error_subcode=cancel) carries no code: the user's
    answer is all the portal learns. It counts like a consent code: the
    migration waits for an admin, and the tenant's record remembers it.
    """
    if migration.status != Status.AWAITING_USER or migration.provider_kind != ProviderKind.MICROSOFT:
        raise services.MigrationError("wrong_state")
    return require_admin_consent(migration=migration, reason="the user saw 'Need admin approval'", actor=actor)


# --- the link for the admin -------------------------------------------------------

def make_admin_link(*, tenant: str, migration_id: int | None) -> str:
    token = signing.dumps({"t": tenant, "m": migration_id}, salt=LINK_SALT, compress=True)
    return settings.SITE_URL.rstrip("/") + reverse("microsoft-admin-link", args=[token])


def read_admin_link(token: str) -> dict | None:
    """{"t": tenant, "m": migration id} of a valid, unexpired link; else None."""
    try:
        data = signing.loads(token, salt=LINK_SALT, max_age=timedelta(days=settings.MS_ADMIN_LINK_DAYS))
    except signing.BadSignature:  # includes SignatureExpired
        return None
    if not isinstance(data, dict) or not isinstance(data.get("t"), str):
        return None
    return data


def send_admin_link(*, consent: TenantConsent, to: str, migration: Migration | None) -> bool:
    """E-mail a fresh link to one address; returns False when there is none.

    One message per recipient: waiting users must not see each other's
    addresses, and each link names the mailbox it was asked for.
    """
    if not to:
        return False
    link = make_admin_link(tenant=consent.tenant, migration_id=migration.pk if migration else None)
    with translation.override(settings.LANGUAGE_CODE):
        subject = _("Zustimmung für die E-Mail-Synchronisierung des CRM erbeten")
        body = _(
            "Guten Tag,\n\nfür die E-Mail-Synchronisierung des CRM braucht die Anwendung „%(app)s“ die "
            "Zustimmung eines Administrators Ihres Microsoft-Mandanten (%(tenant)s).\n\nÖffnen Sie diesen Link, "
            "um die Anfrage zu sehen und bei Microsoft zuzustimmen:\n%(link)s\n\nDer Link gilt %(days)d Tage und "
            "gewährt selbst keinen Zugriff.\n"
        ) % {"app": settings.MS_APP_DISPLAY_NAME, "tenant": consent.tenant, "link": link,
             "days": settings.MS_ADMIN_LINK_DAYS}
        if migration is not None:
            body += "\n" + _("Die Anfrage betrifft das Postfach %(address)s.") % {
                "address": migration.account.address} + "\n"
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [to])
    TenantConsent.objects.filter(pk=consent.pk).update(last_link_sent_at=timezone.now())
    return True


def mail_admin_link_to_requester(*, migration: Migration, user) -> str:
    """E-mail the admin link to the signed-in user themselves, who forwards it to their admin.

    Only to the address of the user's own CRM login: the portal sends no
    mail to an address someone typed in (it would be a mail cannon). At most
    LINK_MAILS_PER_USER per user and LINK_MAILS_PER_TENANT per tenant an hour.
    Returns "sent", "no_address", "user_limit" or "tenant_limit".
    """
    if not user.email:
        return "no_address"
    tenant = tenant_of(migration)
    window = int(timezone.now().timestamp() // LINK_MAIL_WINDOW)
    if _count(f"microsoft:admin-link:user:{user.pk}:{window}") > LINK_MAILS_PER_USER:
        return "user_limit"
    if _count(f"microsoft:admin-link:tenant:{tenant}:{window}") > LINK_MAILS_PER_TENANT:
        return "tenant_limit"
    tenant_consent, _created = TenantConsent.objects.get_or_create(tenant=tenant)
    send_admin_link(consent=tenant_consent, to=user.email, migration=migration)
    return "sent"


def _count(key: str) -> int:
    """One more in a fixed window of the shared cache; the count so far."""
    cache.add(key, 0, timeout=LINK_MAIL_WINDOW * 2)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=LINK_MAIL_WINDOW * 2)
        return 1


def resend_admin_links(*, consent: TenantConsent) -> int:
    """Support's "send again": to the admin if known, else to each waiting user. Returns the messages sent."""
    waiting = list(waiting_migrations(consent.tenant))
    if consent.admin_email:
        # One consent covers the whole tenant: one message, naming a mailbox
        # only when a single one waits.
        only = waiting[0] if len(waiting) == 1 else None
        return int(send_admin_link(consent=consent, to=consent.admin_email, migration=only))
    # Each waiting user forwards their own link.
    return sum(send_admin_link(consent=consent, to=m.user.email, migration=m) for m in waiting)


def waiting_migrations(tenant: str):
    return Migration.objects.filter(
        status=Status.AWAITING_ADMIN_CONSENT, provider_kind=ProviderKind.MICROSOFT, detected__tenant=tenant
    ).select_related("account", "user")


# --- the redirect to Microsoft and its callback -------------------------------------

def begin_admin_consent(*, session, tenant: str, migration_id: int | None) -> str:
    """Bind a fresh state to the tenant (server side) and to this browser; return Microsoft's URL."""
    if not client.configured():
        raise MicrosoftError("ms_not_configured", permanent=True)
    consent, _created = TenantConsent.objects.get_or_create(tenant=tenant)
    state = secrets.token_urlsafe(32)
    migration = Migration.objects.filter(pk=migration_id).first() if migration_id else None
    AdminConsentRequest.objects.create(state=state, consent=consent, migration=migration)
    newest = consent.requests.order_by("-created_at", "-pk").values_list("pk", flat=True)[:MAX_OPEN_REQUESTS]
    consent.requests.exclude(pk__in=list(newest)).delete()
    session[SESSION_KEY] = (list(session.get(SESSION_KEY) or []) + [state])[-5:]
    return client.admin_consent_url(tenant=consent.tenant, state=state)


def purge_admin_consent_requests() -> int:
    """Delete the requests whose callback is no longer accepted (older than REQUEST_MAX_AGE),
    used or not; the stuck-migration sweeper calls it. Returns how many were deleted."""
    deleted, _by_model = AdminConsentRequest.objects.filter(created_at__lt=timezone.now() - REQUEST_MAX_AGE).delete()
    return deleted


def complete_admin_consent(*, session, params) -> tuple[str, AdminConsentRequest | None]:
    """Check an admin-consent callback. Returns (outcome, the request it answered).

    outcome: reported | declined | forged | unproven | unreachable. Only
    "reported" changes anything, and only after a token for the tenant the
    portal sent the admin to could be obtained. Even then nobody is told that
    consent was granted: the callback may be forged by whoever holds an admin
    link, and the token only shows the app registered in the tenant. The
    waiting users are asked to sign in again; their sign-in is the proof.
    """
    state = str(params.get("state", ""))
    known = [s for s in session.get(SESSION_KEY) or [] if constant_time_compare(s, state)]
    request = AdminConsentRequest.objects.select_related("consent").filter(
        state=state, used_at=None, created_at__gte=timezone.now() - REQUEST_MAX_AGE
    ).first() if state and known else None
    if request is None:
        return "forged", None
    session[SESSION_KEY] = [s for s in session.get(SESSION_KEY) or [] if s != state]
    # Single use: a replayed callback finds the request spent.
    if not AdminConsentRequest.objects.filter(pk=request.pk, used_at=None).update(used_at=timezone.now()):
        return "forged", None
    if params.get("error") or str(params.get("admin_consent", "")).lower() != "true":
        logger.info("admin consent for %s declined", request.consent.tenant)
        return "declined", request
    try:
        proven = client.prove_admin_consent(request.consent.tenant)
    except MicrosoftError as error:
        if error.code == "ms_unreachable":
            return "unreachable", request
        proven = False
    if not proven:
        logger.warning("admin-consent callback for %s without a token to prove it", request.consent.tenant)
        return "unproven", request
    record_admin_consent(consent=request.consent)
    return "reported", request


def record_admin_consent(*, consent: TenantConsent) -> list[int]:
    """An admin reported consent: every migration waiting for it goes back to the sign-in.

    The record becomes "reported" (a granted one stays granted); the users'
    sign-in proves or disproves it. Consent is per directory, and a directory
    may own several mail domains: waiting migrations of every domain with the
    same directory id resume too. The id comes from Microsoft's OpenID
    configuration, never from the callback.
    """
    directory = client.directory_id(consent.tenant)
    domains = _same_directory(consent.tenant, directory)
    now = timezone.now()
    for domain in domains:
        sibling, _created = TenantConsent.objects.get_or_create(tenant=domain)
        TenantConsent.objects.filter(pk=sibling.pk).update(reported_at=now, tenant_id=directory or sibling.tenant_id)
        TenantConsent.objects.filter(pk=sibling.pk, status=ConsentStatus.REQUESTED).update(
            status=ConsentStatus.REPORTED)
    resumed = []
    for migration in Migration.objects.filter(
        status=Status.AWAITING_ADMIN_CONSENT, provider_kind=ProviderKind.MICROSOFT, detected__tenant__in=domains
    ):
        detected = {**(migration.detected or {}), "consent_reported": True}
        detected.pop(MAIL_MARKER, None)
        try:
            with transaction.atomic():
                services.transition(migration, to=Status.AWAITING_USER, reason="admin consent reported",
                                    actor="microsoft", detected=detected)
                # A broker outage loses only the e-mail (logged): an open page continues by itself.
                queue.publish_on_commit(lambda pk=migration.pk: _notify(pk),
                                        what=f"the consent-granted e-mail of migration {migration.pk}")
        except services.TransitionConflict:
            continue  # cancelled meanwhile
        resumed.append(migration.pk)
    logger.info("admin consent for %s (%s): %d migrations resume", ", ".join(domains), directory or "?", len(resumed))
    return resumed


def _same_directory(tenant: str, directory: str) -> list[str]:
    """tenant, plus the tenants of waiting migrations that Microsoft places in the same directory."""
    if not directory:
        return [tenant]
    waiting = Migration.objects.filter(
        status=Status.AWAITING_ADMIN_CONSENT, provider_kind=ProviderKind.MICROSOFT
    ).values_list("detected__tenant", flat=True).distinct()
    others = {t for t in waiting if isinstance(t, str) and t and t != tenant}
    return [tenant, *sorted(t for t in others if client.directory_id(t) == directory)]


def _notify(migration_id: int) -> None:
    from migration.microsoft.tasks import notify_consent_granted

    notify_consent_granted.delay(migration_id)


def send_consent_granted_mail(migration_id: int) -> bool:
    """Tell the user once that their admin answered and they should sign in; False when nothing was sent.

    It does not say the consent is granted: nobody but Microsoft can know,
    and the user's sign-in asks Microsoft.
    """
    migration = Migration.objects.select_related("account", "user").filter(pk=migration_id).first()
    if migration is None or not migration.user.email:
        return False
    # The marker goes in before the mail goes out: a task redelivered after
    # a crash in between finds it and sends nothing (at most once; the page
    # shows the news as well).
    with transaction.atomic():
        locked = Migration.objects.select_for_update().filter(pk=migration_id, status=Status.AWAITING_USER).first()
        detected = (locked.detected or {}) if locked else {}
        if not detected.get("consent_reported") or detected.get(MAIL_MARKER):
            return False
        Migration.objects.filter(pk=migration_id).update(detected={**detected, MAIL_MARKER: True})
    link = settings.SITE_URL.rstrip("/") + reverse("migration-detail", args=[migration.pk])
    with translation.override(settings.LANGUAGE_CODE):
        subject = _("Ihr Administrator hat geantwortet – jetzt anmelden")
        body = _(
            "Guten Tag,\n\nIhr Administrator hat gemeldet, dass er der E-Mail-Synchronisierung zugestimmt hat. "
            "Melden Sie sich jetzt bei Microsoft an, um die Migration von %(address)s abzuschließen; Microsoft "
            "prüft dabei, ob die Zustimmung gilt:\n%(link)s\n"
        ) % {"address": migration.account.address, "link": link}
    send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [migration.user.email])
    return True


# --- consent given by hand in the Entra admin center ---------------------------------

# A tenant is polled again after this fraction of MS_CONSENT_POLL_SECONDS (below 1: a poll that ran
# a little late last time must not skip the next one).
POLL_CLAIM_FRACTION = 0.9


def _claim_poll(consent: TenantConsent) -> bool:
    """Claim this interval's poll of the tenant (compare-and-swap on polled_at); False when a poll had it.

    Two beats started by mistake would otherwise double the token requests per tenant.
    """
    now = timezone.now()
    last = now - timedelta(seconds=settings.MS_CONSENT_POLL_SECONDS * POLL_CLAIM_FRACTION)
    return TenantConsent.objects.filter(Q(polled_at__isnull=True) | Q(polled_at__lte=last), pk=consent.pk).update(
        polled_at=now
    ) == 1


def poll_admin_consents() -> list[int]:
    """Resume the waiting migrations of every tenant whose consent can now be proven.

    An admin who uses "Grant admin consent" in entra.microsoft.com sends us no
    callback; this tries the callback's proof (a client-credentials token for
    the tenant) instead. One token request per waiting tenant and run; the
    beat runs it every MS_CONSENT_POLL_SECONDS. Returns the resumed migrations.
    """
    if not client.configured():
        return []
    tenants = Migration.objects.filter(
        status=Status.AWAITING_ADMIN_CONSENT, provider_kind=ProviderKind.MICROSOFT
    ).values_list("detected__tenant", flat=True).distinct()
    resumed = []
    for tenant in sorted({t for t in tenants if isinstance(t, str) and t}):
        consent, _created = TenantConsent.objects.get_or_create(tenant=tenant)
        if not _claim_poll(consent):
            continue  # polled within this interval (a second beat by mistake): one token request is enough
        if consent.granted_at is not None or consent.reported_at is not None:
            # Consented or reported before, and Microsoft asked again (permissions
            # removed, or new ones): the app's service principal is still there, so a
            # token proves nothing and resuming would send the users round in
            # circles, one e-mail per run. The admin link's callback, or the
            # user's "Erneut anmelden" after a manual grant, go on instead.
            continue
        try:
            proven = client.prove_admin_consent(tenant)
        except MicrosoftError as error:
            logger.info("admin-consent poll for %s: %s", tenant, error)
            continue
        if proven:
            logger.info("admin consent for %s found by the poll (granted outside the portal)", tenant)
            resumed += record_admin_consent(consent=consent)
    return resumed
