"""One settings file for every environment.

Embedded defaults need nothing installed (SQLite, a file-system Celery broker,
a local encryption key file); production sets environment variables, listed in
the README. A bad value stops start-up and names the variable.
"""

import warnings
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy as _

from portal.env import envbool, envdatabase, envdate, envint, envlist, envstr

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

# --- Mail sync --------------------------------------------------------------
# MultiFernet keys, newest first. Empty: a local key file is created in DATA_DIR.
ENCRYPTION_KEYS = envlist("ENCRYPTION_KEYS", [])
ENCRYPTION_KEY_FILE = DATA_DIR / "encryption.key"
# Networks that connections to user-supplied hosts may reach although they are
# not public (development, tests, on-premises deployments). Default: none.
EGRESS_ALLOW_NETWORKS = envlist("EGRESS_ALLOW_NETWORKS", [])
# An extra CA bundle trusted for IMAP TLS besides the system store (own CAs).
MAIL_TLS_CA_FILE = envstr("MAIL_TLS_CA_FILE", "")
MAIL_CONNECT_TIMEOUT = envint("MAIL_CONNECT_TIMEOUT", 15, minimum=1)
# V3's first sync starts this many hours before V2's high-water mark, so that a
# message V2 had not polled yet is not lost; dedup skips what V2 had imported.
HANDOFF_OVERLAP_HOURS = envint("HANDOFF_OVERLAP_HOURS", 48, minimum=0)
MESSAGES_PER_PAGE = 25

# --- Campaign ----------------------------------------------------------------
CAMPAIGN_MIGRATE_BY = envdate("CAMPAIGN_MIGRATE_BY", "2025-07-18")
CAMPAIGN_V2_SHUTDOWN = envdate("CAMPAIGN_V2_SHUTDOWN", "2025-08-01")
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
    },
}
