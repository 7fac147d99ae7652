"""One settings file for every environment.

Embedded defaults need nothing installed (SQLite, a file-system Celery broker,
a local encryption key file); production sets environment variables, listed in
the README. A bad value stops start-up and names the variable.
"""

import ipaddress
import warnings
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from portal.env import envbool, envdatabase, envdate, envint, envlist, envstr, parse_nameserver

BASE_DIR = Path(__file__).resolve().parent.parent
# Everything the embedded defaults create lives here; it is ignored by git.
DATA_DIR = Path(envstr("PORTAL_DATA_DIR", str(BASE_DIR / "var")))

DEBUG = envbool("DEBUG", False)
SECRET_KEY = envstr("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG and envbool("PORTAL_REQUIRE_SECRETS", False):
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
    "allauth",
    "allauth.account",
    "portal",
    "sync",
    "migration",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
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
    # Several processes (web, worker) share the file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = envstr("REDIS_URL", "")
CACHES = {
    "default": (
        {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
        if REDIS_URL
        else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}
    )
}

AUTHENTICATION_BACKENDS = [
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

SESSION_COOKIE_SECURE = envbool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if envbool("BEHIND_TLS_PROXY", False) else None

EMAIL_BACKEND = envstr("EMAIL_BACKEND", "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = envstr("DEFAULT_FROM_EMAIL", "crm@localhost")

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
# Accounts queued per fan-out (every SYNC_INTERVAL_SECONDS): at most what the workers take in one interval.
SYNC_FANOUT_BATCH = envint("SYNC_FANOUT_BATCH", 500, minimum=1)

# --- Mail sync --------------------------------------------------------------
# MultiFernet keys, newest first. Empty: a local key file is created in DATA_DIR.
ENCRYPTION_KEYS = envlist("ENCRYPTION_KEYS", [])
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
# An extra CA bundle trusted for IMAP TLS besides the system store (own CAs).
MAIL_TLS_CA_FILE = envstr("MAIL_TLS_CA_FILE", "")
MAIL_CONNECT_TIMEOUT = envint("MAIL_CONNECT_TIMEOUT", 15, minimum=1)
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
BANNER_CACHE_SECONDS = envint("BANNER_CACHE_SECONDS", 300, minimum=1)

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {
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
