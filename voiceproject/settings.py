"""Settings, read from the environment with safe one-machine defaults.

Unset: SQLite in var/, in-memory channel layer, local-memory cache and the
local realtime simulator as the upstream. DATABASE_URL and REDIS_URL switch to
PostgreSQL and Redis for several processes; OPENAI_API_KEY switches to OpenAI.
"""

import os
import re
import secrets
from decimal import Decimal, InvalidOperation
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("VAR_DIR", BASE_DIR / "var"))


def envbool(name, default):
    value = os.environ.get(name, "")
    if value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (1/0, true/false), got {value!r}")


def envint(name, default, minimum=None):
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, got {value!r}") from None
    if minimum is not None and number < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, got {number}")
    return number


def envdecimal(name, default):
    value = os.environ.get(name, "") or default
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise ImproperlyConfigured(f"{name} must be a decimal number, got {value!r}") from None
    if not number.is_finite() or number < 0:
        raise ImproperlyConfigured(f"{name} must be a finite, non-negative number, got {value!r}")
    return number


def envrate(name, default):
    """A rate in django-ratelimit's notation: a count, a slash, an optional number and a unit (10/m, 5/5m)."""
    value = os.environ.get(name, "") or default
    if not re.fullmatch(r"[1-9][0-9]*/([1-9][0-9]*)?[smhd]", value):
        raise ImproperlyConfigured(f"{name} must be a rate such as 10/m or 5/5m, got {value!r}")
    return value


def envlist(name, default):
    value = os.environ.get(name, "")
    if value == "":
        return list(default)
    return [part.strip() for part in value.split(",") if part.strip()]


def _secret_key():
    key = os.environ.get("SECRET_KEY", "")
    if key:
        return key
    # One machine with no configuration gets a random key kept in var/, shared
    # by every process on it. Several machines must set SECRET_KEY themselves.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(50))
    return path.read_text().strip()


SECRET_KEY = _secret_key()
DEBUG = envbool("DEBUG", False)
ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", ["127.0.0.1", "localhost"])
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_ratelimit",
    "teams_app",
    "documents_app",
    "sessions_app",
]

# Django's stack. Under ASGI the CPU-only ones run as inline variants
# (voiceproject/middleware.py says why; voiceproject/asgi.py swaps them in), so
# Django's own deploy checks see Django's own classes here.
MIDDLEWARE = [
    "voiceproject.middleware.ApiErrorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "voiceproject.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "voiceproject.urls"
ASGI_APPLICATION = "voiceproject.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "teams_app.context_processors.roles",
            ],
        },
    },
]

DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{VAR_DIR / 'db.sqlite3'}",
        conn_max_age=0,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # Full-text search (documents_app/search.py) uses its expressions.
    INSTALLED_APPS.append("django.contrib.postgres")
    # A pool, not a connection kept by each thread: with up to REQUEST_THREADS request threads per process,
    # kept connections would outnumber what PostgreSQL allows (100 by default) past one machine; the pool
    # caps each process and still hands out open connections instead of a new login each time.
    DATABASES["default"]["OPTIONS"] = {"pool": {"min_size": 2, "max_size": envint("DATABASE_POOL_SIZE", 20, 1)}}
    # A pooled connection the server terminated is found out before use, not by a failed request.
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Django's backend, with the process's writers queued on a lock of its own (voiceproject/sqlite).
    DATABASES["default"]["ENGINE"] = "voiceproject.sqlite"
    # WAL lets readers (a second process, a management command) work beside
    # the server's writes, and NORMAL sync keeps a commit from costing an fsync.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "timeout": 10,
        # Writers queue for the lock when their transaction begins: one that read
        # first and wrote later could find its snapshot stale and fail.
        "transaction_mode": "IMMEDIATE",
    }
    # Tests use a file too: an in-memory database shares one cache between
    # threads and refuses concurrent writers ("table is locked") where a file
    # makes them wait, as in production.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test-db.sqlite3")}
    # Each request thread (voiceproject/asgi.py keeps them from one request to the next) keeps its
    # connection: opening one, with its PRAGMAs, per request was a large part of a start's CPU.
    DATABASES["default"]["CONN_MAX_AGE"] = envint("DATABASE_CONN_MAX_AGE", 600, minimum=0)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = os.environ.get("REDIS_URL", "")
# Redis is a helper, never the truth: with it away, sessions come from the database, the rate
# limit falls back to each process's own count (sessions_app.views._mint_rate), and sockets
# work without live pushes. Recovery needs no restart: clients reconnect on their own.
REDIS_TIMEOUT_SECONDS = envint("REDIS_TIMEOUT_SECONDS", 2, minimum=1)
CHANNEL_LAYER_POOL_SIZE = envint("CHANNEL_LAYER_POOL_SIZE", 64, minimum=4)
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "OPTIONS": {
                "IGNORE_EXCEPTIONS": True,
                "SOCKET_CONNECT_TIMEOUT": REDIS_TIMEOUT_SECONDS,
                "SOCKET_TIMEOUT": REDIS_TIMEOUT_SECONDS,
            },
        },
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fallback"},
    }
    DJANGO_REDIS_LOG_IGNORED_EXCEPTIONS = True
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "voiceproject.channel_layer.BoundedRedisChannelLayer",
            # channels-redis waits up to 5 s in a blocking pop; redis-py's own
            # 5 s socket timeout fired first and closed idle sockets (1011).
            "CONFIG": {
                "hosts": [{"address": REDIS_URL, "socket_timeout": 30,
                           "socket_connect_timeout": REDIS_TIMEOUT_SECONDS}],
                # A process's sockets share one Redis list; bursts of spend
                # updates overflowed the default 100 and were dropped.
                "capacity": 1000,
            },
        }
    }
    SILENCED_SYSTEM_CHECKS = []
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "local": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "fallback"},
    }
    CHANNEL_LAYERS = {"default": {"BACKEND": "voiceproject.channel_layer.LocalChannelLayer"}}
    # One process holds every rate-limit counter, so a local-memory cache is
    # shared by everything that reads it. REDIS_URL is required past one process.
    SILENCED_SYSTEM_CHECKS = ["django_ratelimit.E003", "django_ratelimit.W001"]

# Sessions are read on every request: from the cache first, the database behind it.
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"
# Django's ModelBackend with the signed-in user read by a compiled read (voiceproject/auth.py). A
# session signed in under another backend's name is signed out once, and signs in again.
AUTHENTICATION_BACKENDS = ["voiceproject.auth.UserBackend"]

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "/accounts/login/"
CSRF_FAILURE_VIEW = "voiceproject.views.csrf_failure"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# The ASGI app serves /static/ itself unless a front server does (SERVE_STATIC=0).
SERVE_STATIC = envbool("SERVE_STATIC", True)

# The OpenAI upstream. No key: the local simulator stands in for it.
OPENAI_API_KEY = os.environ.get("OPENAI_API_KEY", "")
SIMULATOR_PORT = envint("SIMULATOR_PORT", 8100, minimum=1)
UPSTREAM_MODE = "openai" if OPENAI_API_KEY else "simulator"
if UPSTREAM_MODE == "simulator":
    OPENAI_API_KEY = os.environ.get("SIM_API_KEY", "sk-sim-local")
    _default_base = f"http://127.0.0.1:{SIMULATOR_PORT}"
else:
    _default_base = "https://api.openai.com"
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL", _default_base).rstrip("/")
UPSTREAM_TIMEOUT_SECONDS = envint("UPSTREAM_TIMEOUT_SECONDS", 10, minimum=1)
# The upstream ends every call at 60 minutes; the page starts the next call of
# the conversation this long before that.
CALL_MAX_SECONDS = envint("CALL_MAX_SECONDS", 3600, minimum=10)
CALL_ROLLOVER_SECONDS = envint("CALL_ROLLOVER_SECONDS", 20, minimum=1)
# The server creates the call with the secret at once and never hands it out;
# it lives as long as a call so the sideband can attach with it where the API
# key is refused (sealed in the database, wiped when the call ends).
CLIENT_SECRET_TTL_SECONDS = envint("CLIENT_SECRET_TTL_SECONDS", CALL_MAX_SECONDS + 60, minimum=10)
if CLIENT_SECRET_TTL_SECONDS > 7200:
    raise ImproperlyConfigured("CLIENT_SECRET_TTL_SECONDS must be at most 7200 (the upstream's limit)")

MINT_RATE_LIMIT = envrate("MINT_RATE_LIMIT", "10/m")
# A failed cache call returns "no answer" instead of raising; the view then counts locally.
RATELIMIT_FAIL_OPEN = True
# Failed sign-ins, per user name and per client address (a window, never a permanent lockout).
LOGIN_FAILURES_PER_USER = envrate("LOGIN_FAILURES_PER_USER", "5/5m")
LOGIN_FAILURES_PER_ADDRESS = envrate("LOGIN_FAILURES_PER_ADDRESS", "30/5m")
# A start request may carry 2,000,000 pasted characters, JSON-escaped at up to 6 bytes each;
# past this a request gets 413 before anything reads it.
DATA_UPLOAD_MAX_MEMORY_SIZE = 13 * 1024 * 1024
# A request body that stops arriving gets 408 after this long without a byte.
BODY_WAIT_SECONDS = envint("BODY_WAIT_SECONDS", 10, minimum=1)
# Request threads kept between requests (voiceproject/asgi.py), each with its database connection;
# more requests at once than this get threads that end with their request.
REQUEST_THREADS = envint("REQUEST_THREADS", 64, minimum=1)
# A call whose page has been gone this long is hung up by the sideband worker.
PAGE_GONE_SECONDS = envint("PAGE_GONE_SECONDS", 30, minimum=1)
# A conversation whose last call ended this long ago, with none resumed, is ended.
NO_CALL_SECONDS = envint("NO_CALL_SECONDS", 600, minimum=1)
# How often an open dashboard socket reads again whose spend its person may hear (a demotion takes this long).
DASHBOARD_RECHECK_SECONDS = envint("DASHBOARD_RECHECK_SECONDS", 5, minimum=1)
# The sideband worker's claim on a call; renewed every poll. A dead worker's
# calls are taken over once it lapses (a stopped worker releases them at once).
SIDEBAND_LEASE_SECONDS = envint("SIDEBAND_LEASE_SECONDS", 6, minimum=2)
# How often a sideband worker says it is alive (/healthz counts those seen in three times this).
WORKER_BEAT_SECONDS = 5
# "inprocess": the web process runs the sideband worker itself (one machine:
# one process, the in-memory channel layer reaches its pages). "external":
# `manage.py sideband_worker` processes do, reaching pages through Redis.
SIDEBAND_WORKER = os.environ.get("SIDEBAND_WORKER", "external" if REDIS_URL else "inprocess")
if SIDEBAND_WORKER not in ("inprocess", "external"):
    raise ImproperlyConfigured("SIDEBAND_WORKER must be inprocess or external")
# The page waits this long for the documents to be put into a new call before it opens the microphone anyway.
CONTEXT_WAIT_SECONDS = envint("CONTEXT_WAIT_SECONDS", 8, minimum=0)
# A `disconnected` connection gets this long to come back before it counts as lost.
DISCONNECT_GRACE_SECONDS = envint("DISCONNECT_GRACE_SECONDS", 5, minimum=0)
# Earlier turns re-created in a resumed call, newest first, at most this many tokens.
RESUME_HISTORY_TOKENS = envint("RESUME_HISTORY_TOKENS", 4000, minimum=0)
# Held back from a budget when a session starts, on top of its documents' first read.
BUDGET_SESSION_RESERVE_USD = envdecimal("BUDGET_SESSION_RESERVE_USD", "0.05")
RATELIMIT_ENABLE = True

REALTIME_MODELS = envlist(
    "REALTIME_MODELS",
    ["gpt-realtime-2", "gpt-realtime-2.1", "gpt-realtime-2.1-mini", "gpt-realtime", "gpt-realtime-1.5", "gpt-realtime-mini"],
)
REALTIME_VOICES = ["marin", "cedar", "alloy", "ash", "ballad", "coral", "echo", "sage", "shimmer", "verse"]
DEFAULT_MODEL = os.environ.get("DEFAULT_MODEL", "gpt-realtime-2")
DEFAULT_VOICE = os.environ.get("DEFAULT_VOICE", "marin")
DEFAULT_TURN_DETECTION = os.environ.get("DEFAULT_TURN_DETECTION", "server_vad")
TRANSCRIPTION_MODEL = os.environ.get("TRANSCRIPTION_MODEL", "gpt-4o-mini-transcribe")
if DEFAULT_MODEL not in REALTIME_MODELS:
    raise ImproperlyConfigured(f"DEFAULT_MODEL {DEFAULT_MODEL!r} is not in REALTIME_MODELS")
if DEFAULT_VOICE not in REALTIME_VOICES:
    raise ImproperlyConfigured(f"DEFAULT_VOICE {DEFAULT_VOICE!r} is not a known voice")
# The input transcription models the Realtime API takes (the session object's enum, FACTS section 1).
TRANSCRIPTION_MODELS = ["whisper-1", "gpt-transcribe", "gpt-live-transcribe", "gpt-4o-mini-transcribe",
                        "gpt-4o-mini-transcribe-2025-12-15", "gpt-4o-transcribe", "gpt-4o-transcribe-diarize",
                        "gpt-realtime-whisper"]
# Those of them whose price the service ships (FACTS section 7; the TranscriptionPrice rows): a model with
# no price would leave every transcription unbilled.
PRICED_TRANSCRIPTION_MODELS = ["gpt-4o-mini-transcribe", "gpt-4o-transcribe", "whisper-1", "gpt-transcribe"]
if TRANSCRIPTION_MODEL not in TRANSCRIPTION_MODELS:
    raise ImproperlyConfigured(f"TRANSCRIPTION_MODEL {TRANSCRIPTION_MODEL!r} is not one the Realtime API takes")
if TRANSCRIPTION_MODEL not in PRICED_TRANSCRIPTION_MODELS:
    raise ImproperlyConfigured(f"TRANSCRIPTION_MODEL {TRANSCRIPTION_MODEL!r} has no known price; use one of "
                               f"{', '.join(PRICED_TRANSCRIPTION_MODELS)}")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "INFO"},
}

SESSION_COOKIE_HTTPONLY = True

# Behind HTTPS (a TLS-terminating proxy in front): set these from the environment.
SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
SESSION_COOKIE_SECURE = envbool("SECURE_COOKIES", False)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 0, minimum=0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("SECURE_HSTS_PRELOAD", False)
# The header a proxy sets to say the client used HTTPS, e.g. X-Forwarded-Proto (only set it
# when that proxy always sets or strips it).
_proxy_header = os.environ.get("SECURE_PROXY_SSL_HEADER", "")
SECURE_PROXY_SSL_HEADER = ("HTTP_" + _proxy_header.upper().replace("-", "_"), "https") if _proxy_header else None
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
# Every page loads only this origin's scripts, styles, images and sockets; nothing inline.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
PERMISSIONS_POLICY = "microphone=(self), camera=(), geolocation=(), payment=(), usb=()"
