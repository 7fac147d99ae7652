"""One settings file for every environment.

Embedded defaults need nothing installed (SQLite, a file-system Celery broker,
a local encryption key file); production sets environment variables, listed in
the README. A bad value stops start-up and names the variable.
"""

import ipaddress
import warnings
from datetime import timedelta
from pathlib import Path

from cryptography.fernet import Fernet
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _
from kombu import Exchange, Queue

from portal.env import envbool, envdatabase, envdate, envint, envlist, envstr, parse_nameserver

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the embedded defaults create lives here; it is ignored by git.
DATA_DIR = Path(envstr("PORTAL_DATA_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DEBUG", False)
# Production (docker-compose) sets this: every secret must come from the
# environment, nothing is made up or written to DATA_DIR.
PORTAL_REQUIRE_SECRETS = envbool("PORTAL_REQUIRE_SECRETS", False)
SECRET_KEY = envstr("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and PORTAL_REQUIRE_SECRETS:
        raise ImproperlyConfigured("SECRET_KEY must be set in production")
    SECRET_KEY = "embedded-default-not-for-production"
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])
SITE_URL = envstr("SITE_URL", "http://127.0.0.1:8000")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "axes",
    "allauth",
    "allauth.account",
    "csp",
    "portal",
    "sync",
    "migration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django_permissions_policy.PermissionsPolicyMiddleware",
    "portal.security.PortalCSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "portal.user_cache.CachedUserAuthenticationMiddleware",  # Django's, with the user row cached
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # Last: turns a locked-out login into portal.login_limits.lockout_response.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.template.context_processors.i18n",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "portal.context_processors.banner",
            ],
        },
    },
]

DATABASES = {"default": envdatabase("DATABASE_URL", f"sqlite:///{DATA_DIR / 'portal.sqlite3'}")}
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):
    # Several processes (web, worker) share the file: wait for locks instead of failing. IMMEDIATE: a
    # transaction takes the write lock when it begins. SQLite otherwise begins as a reader, and of two
    # transactions that read and then write (a double click on "Zu V3 migrieren") it fails one at once with
    # "database is locked": the busy timeout does not cover that upgrade (tests/test_sqlite_concurrency.py).
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Short date formats per language (portal/formats/<lang>/formats.py): German 18.07.2025, English 18 Jul 2025.
FORMAT_MODULE_PATH = ["portal.formats"]

REDIS_URL = envstr("REDIS_URL", "")
# One cache shared by every process (web, worker, management commands): the worker that finishes a
# migration, or an import run from the shell, drops the banner entry the web process reads. Without Redis
# the embedded default is a folder of files, not per-process memory (which each process would only clear
# for itself); reading it costs no database query, so the warm banner stays query-free.
CACHES = {
    "default": (
        # Seconds: an unreachable Redis fails a request (and GET /health/) quickly instead of
        # holding it until the operating system gives up on the connection.
        {"BACKEND": "portal.cache.RedisCache", "LOCATION": REDIS_URL,  # one client per pool: portal/cache.py
         "OPTIONS": {"socket_connect_timeout": 3, "socket_timeout": 3}}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache", "LOCATION": str(DATA_DIR / "cache"),
              "OPTIONS": {"MAX_ENTRIES": 20_000}}
    ),
    # Template fragments kept in each process's memory ({% cache ... using="fragments" %}): the top navigation,
    # the settings menu, the language buttons and the asset links, the same for every user per language and
    # page, and the V2 banner, keyed by everything it shows (language, level, dates, the user's account ids
    # and addresses), so an entry can never be out of date or show to another user. Their links, labels and
    # dates cost ~0.1-0.2 ms per page to render (issue 13). Banners ~1 KB each: 5,000 are ~5 MB per process.
    "fragments": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fragments",
                  "OPTIONS": {"MAX_ENTRIES": 5_000}},
}

AUTHENTICATION_BACKENDS = [
    # First: refuses every login (admin and allauth alike) of a locked account or address.
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_EMAIL_VERIFICATION = "none"
ACCOUNT_ADAPTER = "portal.auth.AccountAdapter"
ACCOUNT_LOGOUT_ON_GET = False
# Users are created by staff or by a command; open sign-up is an explicit choice.
ACCOUNT_ALLOW_SIGNUP = envbool("ACCOUNT_ALLOW_SIGNUP", False)
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "dashboard"

# --- Login limits (portal.login_limits: django-axes guards every login form) -----
# LOGIN_FAILURE_LIMIT failed logins for one account, or from one client address,
# lock that account or address for LOGIN_LOCKOUT_MINUTES after the last counted failure.
AXES_FAILURE_LIMIT = envint("LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=envint("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_USERNAME_CALLABLE = "portal.login_limits.login_name"
AXES_CLIENT_IP_CALLABLE = "portal.login_limits.client_ip"
AXES_LOCKOUT_CALLABLE = "portal.login_limits.lockout_response"
# Attempts during a lock are refused but not recorded: rows stay bounded (LOGIN_FAILURE_LIMIT
# per account and address), and a lock ends LOGIN_LOCKOUT_MINUTES after it began.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# A success does not wipe the failures: an attacker who owns one account could otherwise
# reset the address's count between guesses.
AXES_RESET_ON_SUCCESS = False
# Failures only; no row per successful login.
AXES_DISABLE_ACCESS_LOG = True
AXES_SENSITIVE_PARAMETERS = ["username", "login", "ip_address"]
# allauth's own login limits would be a second set of numbers: axes is the one guard.
ACCOUNT_RATE_LIMITS = {"login": False, "login_failed": False}

LANGUAGE_CODE = "de"
LANGUAGES = [("de", _("Deutsch")), ("en", _("Englisch"))]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = envstr("TIME_ZONE", "Europe/Berlin")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"
# whitenoise serves from the finders in development; no collectstatic needed.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = DEBUG
# Without collectstatic STATIC_ROOT does not exist; the finders serve instead.
warnings.filterwarnings("ignore", message="No directory at")

# --- HTTPS and response headers -------------------------------------------------
# Production (docker-compose) runs behind one reverse proxy that terminates TLS and
# sets X-Forwarded-Proto and X-Forwarded-For (README "Deploying"). The embedded
# default serves plain http on 127.0.0.1 and sets none of this.
BEHIND_TLS_PROXY = envbool("BEHIND_TLS_PROXY", False)
# Trusted only because gunicorn is reachable through the proxy alone (compose binds it to 127.0.0.1).
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if BEHIND_TLS_PROXY else None
# The client's address is the N-th X-Forwarded-For entry from the right (each proxy appends
# the address it saw; entries further left are whatever the client sent). Login limits
# (portal.login_limits) and allauth's rate limits read it through allauth's adapter.
ALLAUTH_TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 1 if BEHIND_TLS_PROXY else 0, minimum=0)
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", BEHIND_TLS_PROXY)
# The container health check asks gunicorn directly over http.
SECURE_REDIRECT_EXEMPT = [r"^health/$"]
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600 if BEHIND_TLS_PROXY else 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", True)
SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", BEHIND_TLS_PROXY)
CSRF_COOKIE_SECURE = envbool("CSRF_COOKIE_SECURE", SESSION_COOKIE_SECURE)
SESSION_COOKIE_HTTPONLY = True
# Sessions are read from the cache (Redis in production) and written through to the database: every
# signed-in page saves its session query (the settings page went from 4 queries to 3). Nothing in the
# portal deletes session rows behind Django's back, which would leave a cached copy valid.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
SECURE_REFERRER_POLICY = "same-origin"
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# django-csp. Templates and static files hold no inline script or style (tests/browser/test_csp.py
# checks), so no 'unsafe-inline' and no nonce. form-action also gets the Microsoft sign-in
# origin per request (portal.security): the sign-in buttons post here and are redirected there.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "connect-src": [SELF],
        "object-src": [NONE],
        "frame-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    },
}
# django-permissions-policy: no page of the portal needs these browser features.
PERMISSIONS_POLICY = {
    feature: []
    for feature in ("accelerometer", "ambient-light-sensor", "autoplay", "browsing-topics", "camera",
                    "display-capture", "encrypted-media", "fullscreen", "geolocation", "gyroscope", "magnetometer",
                    "microphone", "midi", "payment", "publickey-credentials-get", "screen-wake-lock", "usb",
                    "xr-spatial-tracking")
}

# --- Outgoing e-mail (reminders, confirmations, re-connect notices, the staff digest) -----
# EMAIL_HOST set: Django's SMTP backend with these settings. Unset (the embedded default):
# every mail is written as one .log file (the whole message, headers included) to
# PORTAL_DATA_DIR/mail, where a newcomer can open it. EMAIL_BACKEND overrides both.
EMAIL_HOST = envstr("EMAIL_HOST", "")
EMAIL_PORT = envint("EMAIL_PORT", 587 if envbool("EMAIL_USE_TLS", False) else 25, minimum=1)
EMAIL_HOST_USER = envstr("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = envstr("EMAIL_HOST_PASSWORD", "")
# STARTTLS on a plain connection (port 587), or TLS from the first byte (port 465): one of them.
EMAIL_USE_TLS = envbool("EMAIL_USE_TLS", False)
EMAIL_USE_SSL = envbool("EMAIL_USE_SSL", False)
if EMAIL_USE_TLS and EMAIL_USE_SSL:
    raise ImproperlyConfigured("EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other: set one of them")
if EMAIL_HOST_PASSWORD and not (EMAIL_USE_TLS or EMAIL_USE_SSL) and EMAIL_HOST not in ("localhost", "127.0.0.1", "::1"):
    # The SMTP password would cross the network in clear text.
    raise ImproperlyConfigured("EMAIL_HOST_PASSWORD needs EMAIL_USE_TLS or EMAIL_USE_SSL (or a local EMAIL_HOST)")
# Seconds per SMTP connection: a mail server that hangs must not hold a worker.
EMAIL_TIMEOUT = envint("EMAIL_TIMEOUT", 30, minimum=1)
EMAIL_FILE_PATH = str(DATA_DIR / "mail")
EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
                       else "django.core.mail.backends.filebased.EmailBackend")
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "crm@localhost")
if "@" not in DEFAULT_FROM_EMAIL:
    raise ImproperlyConfigured(f"DEFAULT_FROM_EMAIL must be an e-mail address, not {DEFAULT_FROM_EMAIL!r}")
SERVER_EMAIL = DEFAULT_FROM_EMAIL

# --- Celery -----------------------------------------------------------------
# Embedded default: a file-system broker that needs no server and works across
# processes. Production: CELERY_BROKER_URL=redis://...
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", "filesystem://")
CELERY_BROKER_DIR = DATA_DIR / "broker"
CELERY_TASK_ALWAYS_EAGER = False
# A task is acknowledged only when it finished, and re-queued if its worker
# process dies: every migration step is idempotent, so running twice is safe.
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Two queues. "celery" (the default) carries the work: sync runs, migration steps, mails.
# "control" carries beat's short bookkeeping tasks, which only read and write the
# database and queue work: the sync fan-out, the stuck-migration sweep, the
# reminder and re-connect claims. A worker of its own consumes "control"
# (scripts/run, docker-compose.yml), so a fan-out never waits behind a queue full
# of slow sync runs. Tasks that talk to other servers (the admin-consent poll
# asks Microsoft, the staff digest sends mail) stay on "celery": on the small
# control worker a slow answer would hold up the fan-out. A worker started
# without -Q consumes both (task_queues below), so nothing is left unconsumed.
CELERY_TASK_DEFAULT_QUEUE = "celery"
CELERY_CONTROL_QUEUE = "control"
CELERY_TASK_QUEUES = [Queue(name, Exchange(name), routing_key=name) for name in ("celery", CELERY_CONTROL_QUEUE)]
CELERY_TASK_ROUTES = {
    name: {"queue": CELERY_CONTROL_QUEUE}
    for name in ("sync.tasks.sync_all_accounts", "migration.tasks.sweep_stuck_migrations",
                 "migration.tasks.send_due_reminders", "sync.tasks.send_reconnect_followups")
}
# Beat's scheduler also records its last tick (portal.heartbeats, GET /health/).
CELERY_BEAT_SCHEDULER = "portal.heartbeats:RecordingScheduler"
CELERY_BEAT_SYNC_SECONDS = envint("SYNC_INTERVAL_SECONDS", 120, minimum=5)
CELERY_SWEEP_SECONDS = envint("MIGRATION_SWEEP_SECONDS", 60, minimum=5)
# One sync run per account at a time (sync.leases). A run renews its lease
# every third of this; a killed worker's account is synced again after it.
SYNC_LEASE_SECONDS = envint("SYNC_LEASE_SECONDS", 900, minimum=3)
# The longest one sync run may take: then its IMAP connection is shut down and its
# lease is no longer renewed (a server that answers a byte a second cannot pin a worker).
SYNC_RUN_MAX_SECONDS = envint("SYNC_RUN_MAX_SECONDS", 3600, minimum=10)
# The fan-out queues an account again after this if its queued run never
# started (a lost broker message).
SYNC_QUEUED_TIMEOUT_SECONDS = envint("SYNC_QUEUED_TIMEOUT_SECONDS", 600, minimum=1)
# Accounts queued per fan-out (every SYNC_DISPATCH_SECONDS).
SYNC_FANOUT_BATCH = envint("SYNC_FANOUT_BATCH", 500, minimum=1)
# The most accounts queued or running at once: the fan-out tops the queue up to this and no
# further, so it cannot pile up behind slow workers however many accounts are due. Set it to
# about what the workers finish in two SYNC_DISPATCH_SECONDS (2 processes: ~30 syncs/s).
SYNC_FANOUT_MAX = envint("SYNC_FANOUT_MAX", 500, minimum=1)
# How often beat's fan-out looks for due accounts (at most every SYNC_INTERVAL_SECONDS): each
# account is still synced once per interval, the queue is topped up in smaller steps.
SYNC_DISPATCH_SECONDS = min(envint("SYNC_DISPATCH_SECONDS", 15, minimum=1), CELERY_BEAT_SYNC_SECONDS)
# At most this many accounts of one destination queued or running at once (sync.destinations:
# one IMAP/EWS host, one Microsoft 365 domain, Google): a company's own server is not flooded.
# Graph's 4 concurrent requests per mailbox are kept per request (sync.microsoft.slots).
SYNC_MAX_PER_DESTINATION = envint("SYNC_MAX_PER_DESTINATION", 20, minimum=1)
# Adaptive interval (sync.schedule): a run that found new mail makes the account due again
# after SYNC_INTERVAL_MIN_SECONDS; each quiet run doubles its interval (from
# SYNC_INTERVAL_SECONDS, the base) up to SYNC_INTERVAL_MAX_SECONDS, the longest an account
# waits for its next look (SYNC_PUSH_POLL_SECONDS for accounts push covers).
SYNC_INTERVAL_MIN_SECONDS = envint("SYNC_INTERVAL_MIN_SECONDS", min(60, CELERY_BEAT_SYNC_SECONDS), minimum=5)
SYNC_INTERVAL_MAX_SECONDS = envint("SYNC_INTERVAL_MAX_SECONDS", max(900, CELERY_BEAT_SYNC_SECONDS), minimum=5)
if not SYNC_INTERVAL_MIN_SECONDS <= CELERY_BEAT_SYNC_SECONDS <= SYNC_INTERVAL_MAX_SECONDS:
    raise ImproperlyConfigured(
        "SYNC_INTERVAL_MIN_SECONDS <= SYNC_INTERVAL_SECONDS <= SYNC_INTERVAL_MAX_SECONDS must hold, not "
        f"{SYNC_INTERVAL_MIN_SECONDS} <= {CELERY_BEAT_SYNC_SECONDS} <= {SYNC_INTERVAL_MAX_SECONDS}"
    )
SYNC_DISPATCH_SECONDS = min(SYNC_DISPATCH_SECONDS, SYNC_INTERVAL_MIN_SECONDS)

# --- Push: the IMAP IDLE listener (manage.py imap_idle, sync.imap.idle) ------------
# Leave IDLE and enter it again after this (RFC 2177: a server may end an IDLE after 30 minutes).
IMAP_IDLE_SECONDS = envint("IMAP_IDLE_SECONDS", 28 * 60, minimum=1)
if IMAP_IDLE_SECONDS > 29 * 60:
    raise ImproperlyConfigured("IMAP_IDLE_SECONDS must be at most 1740 (29 minutes, RFC 2177)")
# How long one wait for the server lasts before the connection looks whether it should stop.
IMAP_IDLE_CHECK_SECONDS = envint("IMAP_IDLE_CHECK_SECONDS", 10, minimum=1)
# How often a listener re-reads its accounts, writes its heartbeat, and a standby tries to take a shard.
IMAP_IDLE_REFRESH_SECONDS = envint("IMAP_IDLE_REFRESH_SECONDS", 30, minimum=1)
# A listener heartbeat older than this no longer counts: its accounts are polled at the normal interval.
IMAP_IDLE_STALE_SECONDS = envint("IMAP_IDLE_STALE_SECONDS", 180, minimum=2)
# At most one queued sync per account per this many seconds (a burst of EXISTS is one sync).
IMAP_IDLE_DEBOUNCE_SECONDS = envint("IMAP_IDLE_DEBOUNCE_SECONDS", 5, minimum=0)
# Reconnect back-off: this doubled per failure, with jitter, at most the maximum.
IMAP_IDLE_BACKOFF_SECONDS = envint("IMAP_IDLE_BACKOFF_SECONDS", 2, minimum=1)
IMAP_IDLE_BACKOFF_MAX_SECONDS = envint("IMAP_IDLE_BACKOFF_MAX_SECONDS", 600, minimum=1)
# New connections a listener opens per second when it starts or takes a shard (a ramp, not a burst).
IMAP_IDLE_CONNECTS_PER_SECOND = envint("IMAP_IDLE_CONNECTS_PER_SECOND", 100, minimum=1)
# At most this many IDLE connections from one listener process to one mail server (host, port).
IMAP_IDLE_MAX_PER_DESTINATION = envint("IMAP_IDLE_MAX_PER_DESTINATION", 2000, minimum=1)
# Touched at each listener heartbeat (and while a standby waits), for docker-compose's health check.
IMAP_IDLE_HEARTBEAT_FILE = envstr("IMAP_IDLE_HEARTBEAT_FILE", "")
# Exchange (EWS) accounts in the same listener: a pull subscription on the Inbox, asked for events
# (GetEvents) every EWS_PULL_SECONDS; Exchange drops a subscription not asked for EWS_PULL_TIMEOUT_MINUTES
# (1-1440, Microsoft: PullSubscriptionRequest "Timeout"), so a dead listener leaves nothing behind for long.
EWS_PULL_SECONDS = envint("EWS_PULL_SECONDS", 15, minimum=1)
EWS_PULL_TIMEOUT_MINUTES = envint("EWS_PULL_TIMEOUT_MINUTES", 10, minimum=1)
if EWS_PULL_TIMEOUT_MINUTES > 1440 or EWS_PULL_TIMEOUT_MINUTES * 60 <= EWS_PULL_SECONDS:
    raise ImproperlyConfigured("EWS_PULL_TIMEOUT_MINUTES must be at most 1440 and longer than EWS_PULL_SECONDS")
# The poll interval of accounts a live listener covers (polling stays as the safety net).
SYNC_PUSH_POLL_SECONDS = envint("SYNC_PUSH_POLL_SECONDS", 1800, minimum=5)

# --- Push: Microsoft Graph change notifications (sync.microsoft.subscriptions) ---
# auto: subscribe only when SITE_URL is https on a public host name (Graph must reach it, and refuses
# http); on: always (tests against the fake); off: never. Without a subscription the account polls.
MS_GRAPH_NOTIFICATIONS = envstr("MS_GRAPH_NOTIFICATIONS", "auto").strip().lower()
if MS_GRAPH_NOTIFICATIONS not in ("auto", "on", "off"):
    raise ImproperlyConfigured(f"MS_GRAPH_NOTIFICATIONS must be auto, on or off, not {MS_GRAPH_NOTIFICATIONS!r}")
# Lifetime asked for a subscription (Graph "subscription resource type", maximum length of subscription per
# resource type: Outlook messages 10,080 minutes, under 7 days; 4,230 minutes in older tenants' limits).
MS_GRAPH_SUBSCRIPTION_MINUTES = envint("MS_GRAPH_SUBSCRIPTION_MINUTES", 4230, minimum=45)
if MS_GRAPH_SUBSCRIPTION_MINUTES > 10080:
    raise ImproperlyConfigured("MS_GRAPH_SUBSCRIPTION_MINUTES must be at most 10080 (Graph's limit for messages)")
# Beat looks after the subscriptions this often: renews those expiring within MS_GRAPH_RENEW_BEFORE_SECONDS,
# creates missing ones, removes those of accounts that left V3 or wait for a re-connect.
MS_GRAPH_SUBSCRIPTION_CHECK_SECONDS = envint("MS_GRAPH_SUBSCRIPTION_CHECK_SECONDS", 900, minimum=5)
MS_GRAPH_RENEW_BEFORE_SECONDS = envint("MS_GRAPH_RENEW_BEFORE_SECONDS", 12 * 3600, minimum=60)
# After a failed subscribe, the next try waits this long (the account polls meanwhile).
MS_GRAPH_SUBSCRIBE_RETRY_SECONDS = envint("MS_GRAPH_SUBSCRIBE_RETRY_SECONDS", 3600, minimum=0)
# The notification endpoint: at most this many requests per minute per client address and in total (429 beyond),
# bodies up to this many bytes, and at most one queued sync per account per debounce window.
MS_GRAPH_NOTIFY_RATE_PER_IP = envint("MS_GRAPH_NOTIFY_RATE_PER_IP", 600, minimum=1)
MS_GRAPH_NOTIFY_RATE_TOTAL = envint("MS_GRAPH_NOTIFY_RATE_TOTAL", 6000, minimum=1)
MS_GRAPH_NOTIFY_MAX_BYTES = envint("MS_GRAPH_NOTIFY_MAX_BYTES", 1024 * 1024, minimum=1024)
MS_GRAPH_NOTIFY_DEBOUNCE_SECONDS = envint("MS_GRAPH_NOTIFY_DEBOUNCE_SECONDS", 5, minimum=0)

# --- Health (GET /health/, portal.health) -------------------------------------
# The worker and beat record a heartbeat this often; GET /health/ calls one older
# than HEARTBEAT_STALE_SECONDS "stale" (the portal is then "degraded", not down).
HEARTBEAT_SECONDS = envint("HEARTBEAT_SECONDS", 30, minimum=1)
HEARTBEAT_STALE_SECONDS = envint("HEARTBEAT_STALE_SECONDS", 180, minimum=2)
if HEARTBEAT_STALE_SECONDS <= HEARTBEAT_SECONDS:
    raise ImproperlyConfigured("HEARTBEAT_STALE_SECONDS must be longer than HEARTBEAT_SECONDS")
# Files the worker / beat also touch at each heartbeat (empty: none), for container
# health checks that look at a file's age (docker-compose.yml).
WORKER_HEARTBEAT_FILE = envstr("WORKER_HEARTBEAT_FILE", "")
BEAT_TICK_FILE = envstr("BEAT_TICK_FILE", "")

# --- Mail sync --------------------------------------------------------------
# MultiFernet keys, newest first. Empty: a local key file is created in DATA_DIR
# (the embedded default only). Checked here, so a bad key stops start-up instead
# of the first submit; the message never echoes a key.
ENCRYPTION_KEYS = envlist("ENCRYPTION_KEYS", [])
for _number, _key in enumerate(ENCRYPTION_KEYS, 1):
    try:
        Fernet(_key.encode())
    except (ValueError, TypeError):
        raise ImproperlyConfigured(
            f"ENCRYPTION_KEYS: key {_number} of {len(ENCRYPTION_KEYS)} is not a Fernet key (32 url-safe "
            "base64-encoded bytes, as Fernet.generate_key() makes them)"
        ) from None
if PORTAL_REQUIRE_SECRETS and not ENCRYPTION_KEYS:
    raise ImproperlyConfigured("ENCRYPTION_KEYS must be set when PORTAL_REQUIRE_SECRETS is true (no key file is made)")
ENCRYPTION_KEY_FILE = DATA_DIR / "encryption.key"
# Networks that connections to user-supplied hosts may reach although they are
# not public (development, tests, on-premises deployments). Default: none.
EGRESS_ALLOW_NETWORKS = envlist("EGRESS_ALLOW_NETWORKS", [])
for _network in EGRESS_ALLOW_NETWORKS:
    try:
        ipaddress.ip_network(_network, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"EGRESS_ALLOW_NETWORKS: {_network!r} is not a network like 10.0.0.0/8") from None
# Connection attempts to user-supplied hosts per ten minutes: per user, and per
# destination host:port over all users (the form is no password-spraying relay).
EGRESS_RATE_PER_USER = envint("EGRESS_RATE_PER_USER", 20, minimum=1)
EGRESS_RATE_PER_DESTINATION = envint("EGRESS_RATE_PER_DESTINATION", 100, minimum=1)
# A credential submission over the destination's budget is queued into the next ten-minute window with
# room, up to this many windows ahead (18: three hours), and the user is told when it will be tried;
# beyond that it is refused as before. 0: refuse at once (the old behaviour).
EGRESS_RATE_QUEUE_WINDOWS = envint("EGRESS_RATE_QUEUE_WINDOWS", 18, minimum=0)
# An extra CA bundle trusted for IMAP TLS besides the system store (own CAs).
MAIL_TLS_CA_FILE = envstr("MAIL_TLS_CA_FILE", "")
MAIL_CONNECT_TIMEOUT = envint("MAIL_CONNECT_TIMEOUT", 15, minimum=1)
# Seconds to wait for the answer to LOGIN (IMAP) or AUTHENTICATE: servers answer failed logins late on
# purpose, and later after each failure from the same address (Dovecot's auth penalty up to 15 s; providers
# more), so the right password after a few wrong ones would otherwise time out as "unreachable".
MAIL_LOGIN_TIMEOUT = envint("MAIL_LOGIN_TIMEOUT", 60, minimum=1)
# Caps on what an IMAP server can make a worker hold or wait for (sync.imap.client): the largest literal
# (a message, a header block) and the most bytes of one command's whole answer; and the longest one command's
# answer may take however steadily it trickles in (MAIL_CONNECT_TIMEOUT only bounds each wait for bytes).
# A message over the byte cap is skipped and recorded; anything else over a cap fails the attempt
# (too_large / too_slow).
IMAP_MAX_MESSAGE_BYTES = envint("IMAP_MAX_MESSAGE_BYTES", 25 * 1024 * 1024, minimum=1024 * 1024)
IMAP_COMMAND_MAX_SECONDS = envint("IMAP_COMMAND_MAX_SECONDS", 300, minimum=1)
# The longest one HTTP request through the egress guard may take with every redirect (autoconfig, ISPDB,
# Autodiscover, EWS sign-in probe); bodies there are capped at 512 KB after decompression.
EGRESS_HTTP_MAX_SECONDS = envint("EGRESS_HTTP_MAX_SECONDS", 30, minimum=1)
# Exchange (EWS) throttling: ErrorServerBusy's back-off is honoured up to EWS_RETRY_MAX_WAIT seconds each and
# EWS_RETRY_BUDGET seconds in all per connection, then the run fails as transient and the next one tries again.
# EWS_RETRY_WAIT: the first wait when the server names none (doubling per retry).
EWS_RETRY_MAX_WAIT = envint("EWS_RETRY_MAX_WAIT", 30, minimum=0)
EWS_RETRY_BUDGET = envint("EWS_RETRY_BUDGET", 120, minimum=0)
EWS_RETRY_WAIT = envint("EWS_RETRY_WAIT", 5, minimum=0)
# The most one EWS answer may hold once decompressed, and the longest it may take from the request to its last
# byte; beyond them the attempt fails (response_too_large, response_too_slow) instead of filling the worker's
# memory or holding it. Legitimate answers: a page of 512 changes or 100 messages' headers stays well below
# 1 MB; the largest is one message's body on the message page (several MB for big HTML mails). exchangelib
# parses an answer at roughly a second per MB of CPU, so the cap bounds that too.
EWS_MAX_RESPONSE_BYTES = envint("EWS_MAX_RESPONSE_BYTES", 16 * 1024 * 1024, minimum=64 * 1024)
EWS_MAX_RESPONSE_SECONDS = envint("EWS_MAX_RESPONSE_SECONDS", 300, minimum=5)

# --- Provider detection -------------------------------------------------------
# Nameservers for the MX lookup ("10.0.0.53" or "127.0.0.1:5353"); empty: the system's.
DNS_NAMESERVERS = envlist("DNS_NAMESERVERS", [])
for _nameserver in DNS_NAMESERVERS:
    try:
        parse_nameserver(_nameserver)
    except ValueError:
        raise ImproperlyConfigured(f"DNS_NAMESERVERS: {_nameserver!r} is not an address like 127.0.0.1:5353") from None
# Seconds for one whole DNS lookup (all nameservers and retries together).
DNS_TIMEOUT = envint("DNS_TIMEOUT", 3, minimum=1)
# Thunderbird-style autoconfig, ISPDB and Exchange Autodiscover over HTTP(S):
# off by default, because they send the user's domain to third-party hosts.
DETECTION_HTTP_LOOKUPS = envbool("DETECTION_HTTP_LOOKUPS", False)
DETECTION_HTTP_TIMEOUT = envint("DETECTION_HTTP_TIMEOUT", 5, minimum=1)
ISPDB_URL = envstr("ISPDB_URL", "https://autoconfig.thunderbird.net/v1.1/")
if not ISPDB_URL.startswith(("https://", "http://")) or not ISPDB_URL.endswith("/"):
    raise ImproperlyConfigured("ISPDB_URL must be an http(s) URL ending in /")
DETECTION_CACHE_SECONDS = envint("DETECTION_CACHE_SECONDS", 3600, minimum=0)
MESSAGES_PER_PAGE = 25

# --- Google (Gmail, Google Workspace): the CRM's OAuth client in Google Cloud --------
# Client id and secret of a "Web application" OAuth client; empty = Google shows as not set up.
GOOGLE_CLIENT_ID = envstr("GOOGLE_CLIENT_ID", "")
GOOGLE_CLIENT_SECRET = envstr("GOOGLE_CLIENT_SECRET", "")
# Google's documented endpoints (https://developers.google.com/identity/protocols/oauth2/web-server);
# other values only for a local fake in tests.
GOOGLE_AUTH_URL = envstr("GOOGLE_AUTH_URL", "https://accounts.google.com/o/oauth2/v2/auth")
GOOGLE_TOKEN_URL = envstr("GOOGLE_TOKEN_URL", "https://oauth2.googleapis.com/token")
GOOGLE_USERINFO_URL = envstr("GOOGLE_USERINFO_URL", "https://openidconnect.googleapis.com/v1/userinfo")
GOOGLE_GMAIL_URL = envstr("GOOGLE_GMAIL_URL", "https://gmail.googleapis.com").rstrip("/")
for _name in ("GOOGLE_AUTH_URL", "GOOGLE_TOKEN_URL", "GOOGLE_USERINFO_URL", "GOOGLE_GMAIL_URL"):
    if not globals()[_name].startswith("https://") or len(globals()[_name]) <= len("https://"):
        raise ImproperlyConfigured(f"{_name} must be an https:// URL, not {globals()[_name]!r}")
# A CA bundle for a fake Google with a self-signed certificate (tests); empty = the system's CAs.
GOOGLE_CA_FILE = envstr("GOOGLE_CA_FILE", "")
if GOOGLE_CA_FILE and not Path(GOOGLE_CA_FILE).is_file():
    raise ImproperlyConfigured(f"GOOGLE_CA_FILE: no file at {GOOGLE_CA_FILE!r}")
GOOGLE_TIMEOUT = envint("GOOGLE_TIMEOUT", 15, minimum=1)
# Gmail's IMAP server (https://developers.google.com/gmail/imap/imap-smtp): V3 syncs Google mailboxes
# there with XOAUTH2. Settable for the tests' local Dovecot only.
GOOGLE_IMAP_HOST = envstr("GOOGLE_IMAP_HOST", "imap.gmail.com")
GOOGLE_IMAP_PORT = envint("GOOGLE_IMAP_PORT", 993, minimum=1)

# --- Microsoft 365 / Outlook.com (the CRM's app in Microsoft Entra ID) ----------
# Client id and secret of the app registration (README: "Microsoft Entra ID").
MS_CLIENT_ID = envstr("MS_CLIENT_ID", "")
MS_CLIENT_SECRET = envstr("MS_CLIENT_SECRET", "")
# common (work, school and personal accounts), organizations (work and school),
# consumers (personal) or one tenant: https://login.microsoftonline.com/<tenant>
MS_AUTHORITY = envstr("MS_AUTHORITY", "https://login.microsoftonline.com/organizations").rstrip("/")
MS_GRAPH_URL = envstr("MS_GRAPH_URL", "https://graph.microsoft.com").rstrip("/")
for _name, _url in (("MS_AUTHORITY", MS_AUTHORITY), ("MS_GRAPH_URL", MS_GRAPH_URL)):
    # msal refuses http authorities; a bearer token must never travel in clear text either.
    if not _url.startswith("https://") or len(_url) <= len("https://"):
        raise ImproperlyConfigured(f"{_name} must be an https:// URL, not {_url!r}")
if MS_AUTHORITY.count("/") != 3:
    raise ImproperlyConfigured("MS_AUTHORITY must name the tenant: https://login.microsoftonline.com/organizations")
# Off only for a local fake identity platform (tests): msal would ask Microsoft about the host.
MS_INSTANCE_DISCOVERY = envbool("MS_INSTANCE_DISCOVERY", True)
# A CA bundle for the identity platform and Graph (tests); empty: the system's.
MS_CA_FILE = envstr("MS_CA_FILE", "")
if MS_CA_FILE and not Path(MS_CA_FILE).is_file():
    raise ImproperlyConfigured(f"MS_CA_FILE: no file at {MS_CA_FILE!r}")
MS_TIMEOUT = envint("MS_TIMEOUT", 15, minimum=1)
# Concurrent Graph requests per mailbox from all processes together (Graph allows an app 4: "Outlook service limits").
MS_GRAPH_MAILBOX_CONCURRENCY = envint("MS_GRAPH_MAILBOX_CONCURRENCY", 4, minimum=1)
# Caps on one answer from Microsoft (Graph, sign-in, discovery): bytes after decompression, and seconds for the
# whole request (MS_TIMEOUT only bounds each wait for bytes). Over them: ms_too_large / ms_too_slow.
MS_MAX_RESPONSE_BYTES = envint("MS_MAX_RESPONSE_BYTES", 20 * 1024 * 1024, minimum=64 * 1024)
MS_MAX_RESPONSE_SECONDS = envint("MS_MAX_RESPONSE_SECONDS", 120, minimum=1)
# How the apps appear under Enterprise applications, for the admins' manual path.
MS_APP_DISPLAY_NAME = envstr("MS_APP_DISPLAY_NAME", "CRM E-Mail-Synchronisierung V3")
MS_LEGACY_APP_DISPLAY_NAME = envstr("MS_LEGACY_APP_DISPLAY_NAME", "CRM E-Mail-Synchronisierung V2")
# The link a user sends to their admin stays valid this many days.
MS_ADMIN_LINK_DAYS = envint("MS_ADMIN_LINK_DAYS", 14, minimum=1)
# Consent granted by hand in the Entra admin center sends no callback: the
# worker checks tenants with waiting migrations this often (one token request each).
MS_CONSENT_POLL_SECONDS = envint("MS_CONSENT_POLL_SECONDS", 300, minimum=30)

# --- Campaign ----------------------------------------------------------------
CAMPAIGN_MIGRATE_BY = envdate("CAMPAIGN_MIGRATE_BY", "2025-07-18")
CAMPAIGN_V2_SHUTDOWN = envdate("CAMPAIGN_V2_SHUTDOWN", "2025-08-01")
# The sync asks the campaign for V2's shutdown date through this callable (it never imports migration/).
SYNC_V2_SHUTDOWN_DATE = "migration.selectors.v2_shutdown_date"
# The user-facing text of an account's sync error code (shown in the sync admin), the settings page's own.
SYNC_ERROR_MESSAGE = "migration.errors.message_for"
if CAMPAIGN_V2_SHUTDOWN < CAMPAIGN_MIGRATE_BY:
    raise ImproperlyConfigured("CAMPAIGN_V2_SHUTDOWN must not be before CAMPAIGN_MIGRATE_BY")
# A migration that sits in a worker step longer than this is re-queued by the sweeper.
MIGRATION_STUCK_SECONDS = envint("MIGRATION_STUCK_SECONDS", 120, minimum=5)
# Worker attempts per migration step (a step that keeps failing unexpectedly, or keeps
# waiting for a provider's outage); then the migration fails and its credentials are cleared.
MIGRATION_STEP_ATTEMPTS = envint("MIGRATION_STEP_ATTEMPTS", 8, minimum=1)
# The sweeper waits this long after a step's first failed attempt, doubling per attempt up to the maximum
# (with the defaults: 1, 2, 4, 8, 16, 30, 30 minutes; about 1.5 hours from the first attempt to the last).
MIGRATION_RETRY_SECONDS = envint("MIGRATION_RETRY_SECONDS", 60, minimum=1)
MIGRATION_RETRY_MAX_SECONDS = envint("MIGRATION_RETRY_MAX_SECONDS", 1800, minimum=1)
BANNER_CACHE_SECONDS = envint("BANNER_CACHE_SECONDS", 300, minimum=1)
# The reminder cadence (migration.reminder_schedule): beat looks this often whether today's step is due,
# and sends it once a day, not before this hour (local time: TIME_ZONE).
REMINDER_CHECK_SECONDS = envint("REMINDER_CHECK_SECONDS", 3600, minimum=60)
REMINDER_SEND_HOUR = envint("REMINDER_SEND_HOUR", 9, minimum=0)
# Days an account may wait in "Neu verbinden" before its owner gets one follow-up mail.
RECONNECT_FOLLOWUP_DAYS = envint("RECONNECT_FOLLOWUP_DAYS", 3, minimum=1)
# The daily digest for staff (migration.staff_digest) goes out when at least this share (percent) of the
# V3 accounts wait in "Neu verbinden" (0: every day), to STAFF_DIGEST_TO (empty: every active staff user).
STAFF_DIGEST_BROKEN_PERCENT = envint("STAFF_DIGEST_BROKEN_PERCENT", 5, minimum=0)
STAFF_DIGEST_TO = envlist("STAFF_DIGEST_TO", [])
if REMINDER_SEND_HOUR > 23:
    raise ImproperlyConfigured(f"REMINDER_SEND_HOUR must be an hour from 0 to 23, not {REMINDER_SEND_HOUR}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    # Tracebacks by type and location only (portal.logsafe): an exception's message may quote a secret.
    "formatters": {"safe": {"()": "portal.logsafe.TypeAndLocationFormatter",
                            "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "safe"}},
    "loggers": {
        # A page that failed (500): Django mails it to ADMINS, which nobody sets; the log is where support looks.
        "django.request": {"handlers": ["console"], "level": "ERROR", "propagate": False},
        "portal": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
        "sync": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
        "migration": {"handlers": ["console"], "level": envstr("LOG_LEVEL", "INFO")},
        # imaplib's protocol trace would contain the LOGIN command with the password.
        "imapclient": {"level": "WARNING"},
        # msal logs request details (including the code exchange) at DEBUG.
        "msal": {"level": "WARNING"},
        # exchangelib logs request headers (Authorization) at DEBUG.
        "exchangelib": {"level": "WARNING"},
        # The NTLM handshake (pyspnego, requests_ntlm) can log its messages at DEBUG.
        "spnego": {"level": "WARNING"},
        "requests_ntlm": {"level": "WARNING"},
    },
}
