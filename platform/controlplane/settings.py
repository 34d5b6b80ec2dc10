"""Django settings, all read from the environment through `workers.config` helpers.

With no environment set this is the embedded default: SQLite, a local object store and
kombu's filesystem broker, all under ``var/``. Set DEBUG=0 with SECRET_KEY and
ALLOWED_HOSTS for production (`manage.py check --deploy` passes).
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import dj_database_url
from celery.schedules import crontab
from django.core.exceptions import ImproperlyConfigured

from workers import config as env
from workers.serve.secret import serve_node_secret


def _ip_networks(name: str, values: list[str]) -> tuple:
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value, strict=False))
        except ValueError:
            raise env.ConfigError(
                f"{name}: {value!r} is not an IP network; use CIDR like 10.0.0.0/8 or ::1/128"
            ) from None
    return tuple(networks)


BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATA_DIR = env.data_dir()

try:
    DEBUG = env.env_bool("DEBUG", True)
    _DEV_SECRET = "dev-insecure-secret-key-change-me"
    SECRET_KEY = env.env_str("SECRET_KEY", _DEV_SECRET if DEBUG else None)
    if not DEBUG and (SECRET_KEY == _DEV_SECRET or len(SECRET_KEY) < 50):
        raise env.ConfigError(
            "SECRET_KEY must be set to a random string of 50+ characters when DEBUG=0"
        )
    ALLOWED_HOSTS = env.env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
    _database_url = env.env_str("DATABASE_URL", f"sqlite:///{DATA_DIR / 'db.sqlite3'}")
    # How long an access request's export waits for its one download (gdpr/access.py).
    GDPR_EXPORT_TTL_HOURS = env.env_int("GDPR_EXPORT_TTL_HOURS", 72, minimum=1)
    UPLOAD_MAX_BYTES = env.env_int("UPLOAD_MAX_BYTES", 5 * 1024**3, minimum=1)
    JOB_LEASE_SECONDS = env.env_int("JOB_LEASE_SECONDS", 120, minimum=2)
    JOB_HEARTBEAT_SECONDS = env.env_int("JOB_HEARTBEAT_SECONDS", 20, minimum=1)
    JOB_MAX_ATTEMPTS = env.env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
    # A multi-node attempt whose nodes have not all joined this long after dispatch is
    # given up and retried (controlplane/jobs/gang.py).
    GANG_TIMEOUT_SECONDS = env.env_int("GANG_TIMEOUT_SECONDS", 600, minimum=5)
    # A worker is counted lost (its devices no longer offered to jobs) after this many of
    # its heartbeat intervals without one (workers/registry.py, jobs/capacity.py).
    WORKER_STALE_HEARTBEATS = env.env_int("WORKER_STALE_HEARTBEATS", 3, minimum=2)
    # A GPU attempt whose utilisation stays under this percent for more than this many
    # minutes is flagged idle (finops/usage.py).
    FINOPS_IDLE_GPU_PERCENT = env.env_int("FINOPS_IDLE_GPU_PERCENT", 20, minimum=1)
    FINOPS_IDLE_GPU_MINUTES = env.env_int("FINOPS_IDLE_GPU_MINUTES", 10, minimum=1)
    # A job still queued after this long is dispatched again (its message may be lost).
    JOB_QUEUE_TIMEOUT_SECONDS = env.env_int("JOB_QUEUE_TIMEOUT_SECONDS", 1800, minimum=10)
    # An upload not completed within this many seconds is aborted and its version removed.
    DATASET_UPLOAD_TTL_SECONDS = env.env_int("DATASET_UPLOAD_TTL_SECONDS", 24 * 3600, minimum=60)
    REAPER_INTERVAL_SECONDS = env.env_int("REAPER_INTERVAL_SECONDS", 15, minimum=1)
    # The control worker sends unsent job dispatches (the outbox) this often, retrying a
    # failed send after 1, 2, 4 ... seconds, at most DISPATCH_RETRY_MAX_SECONDS apart.
    DISPATCH_OUTBOX_INTERVAL_SECONDS = env.env_int("DISPATCH_OUTBOX_INTERVAL_SECONDS", 2, minimum=1)
    DISPATCH_RETRY_MAX_SECONDS = env.env_int("DISPATCH_RETRY_MAX_SECONDS", 10, minimum=1)
    # The event path (jobs/tasks.py): retries of an event on database errors before it is
    # parked as a dead letter (backoff 0.5 s doubling to 10 s: ~3 min of outage), how
    # long a `finished` waits for the events before it, and how long a gap may last
    # before the worker is asked to re-send (shorter gaps are out-of-order delivery).
    EVENT_MAX_RETRIES = env.env_int("EVENT_MAX_RETRIES", 20, minimum=0)
    EVENT_FINISH_WAIT_SECONDS = env.env_int("EVENT_FINISH_WAIT_SECONDS", 60, minimum=1)
    EVENT_GAP_GRACE_SECONDS = env.env_int("EVENT_GAP_GRACE_SECONDS", 5, minimum=1)
    # Redis: how soon the unacked events of a crashed control worker are delivered again
    # (see "Event delivery" in docs/architecture.md).
    CONTROL_VISIBILITY_TIMEOUT_SECONDS = env.env_int(
        "CONTROL_VISIBILITY_TIMEOUT_SECONDS", 30, minimum=5
    )
    API_THROTTLE_USER = env.env_str("API_THROTTLE_USER", "2000/min")
    API_THROTTLE_ANON = env.env_str("API_THROTTLE_ANON", "60/min")
    # How long a POST's Idempotency-Key is remembered (its response replayed to retries).
    IDEMPOTENCY_KEY_TTL_SECONDS = env.env_int("IDEMPOTENCY_KEY_TTL_SECONDS", 24 * 3600, minimum=60)
    # Queue of training jobs: "auto" asks the workers whether a gpu worker is up.
    TRAINING_QUEUE = env.env_str("TRAINING_QUEUE", "auto")
    if TRAINING_QUEUE not in ("auto", "cpu", "gpu"):
        raise env.ConfigError(f"TRAINING_QUEUE={TRAINING_QUEUE!r}: use auto, cpu or gpu")
    # Where people open MLflow in a browser; job pages link their runs there ("" = no link).
    MLFLOW_UI_URL = env.env_str("MLFLOW_UI_URL", "").rstrip("/")
    # Throttle counters must be shared by every web process: Redis in production.
    CACHE_URL = env.env_str("CACHE_URL", "locmem://")
    if not CACHE_URL.startswith(("locmem://", "redis://", "rediss://")):
        raise env.ConfigError(f"CACHE_URL={CACHE_URL!r}: use locmem:// or redis://host:port/db")
    # API tokens: the longest lifetime one may have (also the lifetime of one made without
    # an expiry) and how many active tokens one user may hold.
    API_TOKEN_MAX_DAYS = env.env_int("API_TOKEN_MAX_DAYS", 365, minimum=1)
    API_TOKEN_MAX_PER_USER = env.env_int("API_TOKEN_MAX_PER_USER", 20, minimum=1)
    # Failed logins and bearer tokens (accounts/lockout.py): this many failures of one
    # account, or from one client address, within the window lock it out; each lockout
    # of the same key lasts twice as long as the one before, up to the maximum.
    AUTH_LOCKOUT_ACCOUNT_FAILURES = env.env_int("AUTH_LOCKOUT_ACCOUNT_FAILURES", 5, minimum=1)
    AUTH_LOCKOUT_ADDRESS_FAILURES = env.env_int("AUTH_LOCKOUT_ADDRESS_FAILURES", 20, minimum=1)
    AUTH_LOCKOUT_WINDOW_SECONDS = env.env_int("AUTH_LOCKOUT_WINDOW_SECONDS", 900, minimum=1)
    AUTH_LOCKOUT_SECONDS = env.env_int("AUTH_LOCKOUT_SECONDS", 60, minimum=1)
    AUTH_LOCKOUT_MAX_SECONDS = env.env_int("AUTH_LOCKOUT_MAX_SECONDS", 3600, minimum=1)
    # Reverse proxies in front of the web process that append to X-Forwarded-For (0: the
    # client address is REMOTE_ADDR). Trusting a header no proxy of ours wrote would let
    # a client pick its own address and escape the per-address lockout.
    TRUSTED_PROXY_COUNT = env.env_int("TRUSTED_PROXY_COUNT", 0, minimum=0)
    _object_store = env.object_store_config()
    # What serve nodes and the platform authenticate each other with (/internal/serve/
    # calls, the playground's calls to a node): the environment's SERVE_NODE_SECRET, or one
    # made once in <DATA_DIR>/serve-node-secret that nodes on this machine read too.
    SERVE_NODE_SECRET = serve_node_secret(DATA_DIR)
    # The master key behind every project's data-subject hashes (controlplane/subject_keys.py:
    # serving's archive index, the data pipeline's subject indexes, audit payloads). Keep it
    # out of the database and its dumps. Empty: SERVING_SUBJECT_SECRET, its older name, and
    # then SECRET_KEY, so a deployment that set neither keeps the hashes it has stored.
    SUBJECT_KEY_SECRET = env.env_str("SUBJECT_KEY_SECRET", "")
    SERVING_SUBJECT_SECRET = env.env_str("SERVING_SUBJECT_SECRET", "")
    # The address clients reach the deployments at (a load balancer before the serve
    # nodes); empty: the front of a live node, as it reported itself.
    SERVING_PUBLIC_URL = env.env_str("SERVING_PUBLIC_URL", "")
    # Prometheus /metrics (controlplane/metrics/access.py): with a token, only its holder
    # scrapes; without one, only clients on these networks do.
    METRICS_TOKEN = env.env_str("METRICS_TOKEN", "")
    if METRICS_TOKEN and len(METRICS_TOKEN) < 16:
        raise env.ConfigError("METRICS_TOKEN must be 16+ characters (or unset)")
    METRICS_ALLOWED_NETWORKS = _ip_networks(
        "METRICS_ALLOWED_NETWORKS",
        env.env_list("METRICS_ALLOWED_NETWORKS", ["127.0.0.1/32", "::1/128"]),
    )
    # Organisation webhooks (finops/webhooks.py) are refused an address inside the
    # deployment (loopback, private, link-local: a cloud's metadata service) unless it lies
    # in one of these networks: an org admin must not make the control worker probe them.
    WEBHOOK_ALLOWED_NETWORKS = _ip_networks(
        "WEBHOOK_ALLOWED_NETWORKS", env.env_list("WEBHOOK_ALLOWED_NETWORKS", [])
    )
except env.ConfigError as error:
    raise ImproperlyConfigured(str(error)) from None

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django_htmx",
    "rest_framework",
    "drf_spectacular",
    # Swagger UI's files served from our own origin (no CDN: works offline and under the CSP).
    "drf_spectacular_sidecar",
    "csp",
    "controlplane.api",
    "controlplane.accounts",
    "controlplane.orgs",
    "controlplane.projects",
    "controlplane.audit",
    "controlplane.uploads",
    "controlplane.jobs",
    "controlplane.datasets",
    "controlplane.registry",
    "controlplane.serving",
    "controlplane.policies",
    "controlplane.gdpr",
    "controlplane.finops",
    "controlplane.metrics",
    "controlplane.dashboard",
    "controlplane.demo",
]

MIDDLEWARE = [
    # First: its latency covers every other middleware (controlplane/metrics/middleware.py).
    "controlplane.metrics.middleware.RequestLatencyMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # Before CommonMiddleware: an API write without its trailing slash is a JSON 404, not
    # a redirect that turns a POST into a GET (or, with DEBUG on, a RuntimeError).
    "controlplane.api.middleware.ApiPathWithoutSlashMiddleware",
    "django.middleware.common.CommonMiddleware",
    # A NUL in any query parameter is a 400 before a view or the admin filters on it.
    "controlplane.api.middleware.RejectNulInQueryMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "csp.middleware.CSPMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
]

ROOT_URLCONF = "controlplane.urls"
WSGI_APPLICATION = "controlplane.wsgi.application"

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
            ],
        },
    },
]

# Health checks: a connection kept across requests that died with a database restart is
# replaced before use, instead of failing the first request after the restart with a 500.
DATABASES = {
    "default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A database that does not answer fails a connection in seconds (then retried by the
    # control worker / answered 503-style), rather than hanging a process.
    DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 5
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # Web process and control worker write concurrently: wait for the lock, don't fail.
    DATABASES["default"]["OPTIONS"] = {"timeout": 30, "transaction_mode": "IMMEDIATE"}
    DATABASES["default"]["CONN_MAX_AGE"] = 0

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = DATA_DIR / "staticfiles"

# Uploads above this size spill to a temp file instead of memory (Django's default is 2.5 MB).
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
# Their own folder, not TMPDIR: a worker killed mid-upload leaves its temp file there, and
# uploads/tempfiles.py removes such files at start and in the reaper.
FILE_UPLOAD_TEMP_DIR = str(DATA_DIR / "tmp" / "uploads")
# Bodies are checked by UPLOAD_MAX_BYTES; Django's own cap would only reject non-file fields.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": [
        "rest_framework.permissions.IsAuthenticated",
        # A bearer token acts only within its scopes (api:read, api:write, tokens:write).
        "controlplane.accounts.permissions.TokenScopes",
    ],
    # JSON only (uploads declare their multipart parser): our parser refuses NUL, lone
    # surrogates, non-finite numbers and deep nesting before a view sees the body.
    "DEFAULT_PARSER_CLASSES": ["controlplane.api.parsers.JSONParser"],
    # JSON only: errors keep their one shape whatever the Accept header (the browsable
    # API would answer a browser's error in HTML); people use the docs at /api/v1/docs/.
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PAGINATION_CLASS": "controlplane.api.pagination.StandardPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "controlplane.api.errors.exception_handler",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.AnonRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {"user": API_THROTTLE_USER, "anon": API_THROTTLE_ANON},
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Control plane API",
    "DESCRIPTION": "Projects, members, uploads, jobs and the audit trail of the MLOps control plane.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # The schema and the docs page are public on purpose (docs/architecture.md, "Security").
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # validatorUrl None: Swagger UI would otherwise load a badge image from
    # validator.swagger.io on any host but localhost (no page loads from outside).
    "SWAGGER_UI_SETTINGS": {"deepLinking": True, "validatorUrl": None},
    "REDOC_DIST": "SIDECAR",
    # Two choice sets share the field name "kind": name each after its enum.
    "ENUM_NAME_OVERRIDES": {
        "JobKindEnum": "workers.protocol.JobKind",
        "JobStateEnum": "controlplane.jobs.models.JobState",
        "DatasetKindEnum": "controlplane.datasets.models.DatasetKind",
        "SubjectRequestKindEnum": "controlplane.gdpr.models.RequestKind",
        "SubjectRequestScopeEnum": "controlplane.gdpr.models.RequestScope",
        "ProjectRoleEnum": "controlplane.projects.models.Role",
        "OrgRoleEnum": "controlplane.orgs.models.OrgRole",
    },
    # Every operation documents its error responses in the one error shape.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.api.schema.document_error_responses",
    ],
}


def _object_store_origins() -> list[str]:
    """Origins a browser sends upload parts to (presigned URLs): the S3 server or, for the
    local store, PUBLIC_BASE_URL, which may name another host than the page's own."""
    store = _object_store
    if store.backend == "local":
        parts = store.public_base_url.split("/")
        return ["/".join(parts[:3])] if len(parts) >= 3 else []
    secure = store.secure if store.public_secure is None else store.public_secure
    return [f"{'https' if secure else 'http'}://{store.public_endpoint or store.endpoint}"]


# Content-Security-Policy (django-csp): scripts only from our own origin, no inline code
# anywhere (a test scans templates/ for it). htmx's inline indicator <style> is switched
# off in base.html (htmx-config meta) and its rules live in app.css. Inline style
# *attributes* are allowed deliberately: the server computes bar widths and chart colours
# into them, and an attribute cannot run script.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": ["'self'"],
        "script-src": ["'self'"],
        "style-src": ["'self'"],
        "style-src-attr": ["'unsafe-inline'"],
        # data: for the SVG icons in Swagger UI's stylesheet.
        "img-src": ["'self'", "data:"],
        "connect-src": ["'self'", *_object_store_origins()],
        "font-src": ["'self'"],
        "object-src": ["'none'"],
        "base-uri": ["'self'"],
        "form-action": ["'self'"],
        "frame-ancestors": ["'none'"],
    }
}

if CACHE_URL.startswith("locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    # Fails open: while Redis is down the API throttles per process instead of answering 500.
    CACHES = {
        "default": {"BACKEND": "controlplane.cache.FailOpenRedisCache", "LOCATION": CACHE_URL}
    }

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "INFO" if not DEBUG else "WARNING"},
}

if not DEBUG:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = env.env_bool("SECURE_SSL_REDIRECT", True)
    # Probes come from inside the cluster over plain HTTP; a redirect is not an answer.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$", r"^internal/serve/"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env.env_int("SECURE_HSTS_SECONDS", 31536000, minimum=0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_CONTENT_TYPE_NOSNIFF = True
    CSRF_TRUSTED_ORIGINS = env.env_list("CSRF_TRUSTED_ORIGINS", [])
    STORAGES = {
        "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }

# Celery (platform side: dispatches JobSpecs, consumes JobEvents on the `control` queue).
CELERY = env.celery_settings()
# The control worker applies short, idempotent tasks acknowledged late (jobs/tasks.py):
# - prefetch 1: a process holds at most one unacked event besides the one it applies, so
#   a crash strands as few as possible;
# - Redis: a short visibility timeout brings a crashed worker's unacked events back in
#   seconds, swept every 2 s. Kombu's restore sweep returns *every* message of its
#   unacked index older than its timeout, so the control side keeps its own index keys:
#   the cpu/gpu workers' reserved job messages (an hour's timeout) are never swept by it.
CELERY["worker_prefetch_multiplier"] = 1
# Reuse a worker process's database connection across tasks (Celery's Django fixup
# otherwise opens one per event); the task drops a connection that broke.
CELERY["CELERY_DB_REUSE_MAX"] = 500
if CELERY["broker_url"].startswith(("redis://", "rediss://")):
    CELERY["broker_transport_options"] = {
        **CELERY.get("broker_transport_options", {}),
        "visibility_timeout": CONTROL_VISIBILITY_TIMEOUT_SECONDS,
        "unacked_key": "unacked:control",
        "unacked_index_key": "unacked_index:control",
        "unacked_mutex_key": "unacked_mutex:control",
        "unacked_mutex_expire": 30,
        "unacked_restore_interval": 2,
        "unacked_restore_throttle": 1,
    }
if CELERY["broker_url"].startswith(("redis://", "rediss://")):
    # A broker host that drops packets must not hold a request (or the outbox) for the
    # operating system's connect timeout of minutes; a refused connect fails at once anyway.
    CELERY["broker_transport_options"]["socket_connect_timeout"] = 3
CELERY_BEAT_SCHEDULE = {
    "reap-expired-jobs": {
        "task": "control.reap_expired_jobs",
        "schedule": float(REAPER_INTERVAL_SECONDS),
        "options": {"queue": "control"},
    },
    "send-dispatch-outbox": {
        "task": "control.send_dispatch_outbox",
        "schedule": float(DISPATCH_OUTBOX_INTERVAL_SECONDS),
        # Passes that could not run while the control worker was away are worthless later.
        "options": {"queue": "control", "expires": 10 * DISPATCH_OUTBOX_INTERVAL_SECONDS},
    },
    "purge-idempotency-keys": {
        "task": "control.purge_idempotency_keys",
        "schedule": 3600.0,
        "options": {"queue": "control", "expires": 3000},
    },
    "reap-abandoned-uploads": {
        "task": "control.reap_abandoned_uploads",
        "schedule": 300.0,
        "options": {"queue": "control"},
    },
    # The inference archive past each project's retention (controlplane/serving/archive.py).
    "serving-purge-archive": {
        "task": "control.serve_purge_archive",
        "schedule": 3600.0,
        "options": {"queue": "control", "expires": 3000},
    },
    # Registrations whose control task was lost (broker outage) or failed (store outage).
    "registry-sweep": {
        "task": "control.registry_sweep",
        "schedule": 30.0,
        "options": {"queue": "control", "expires": 300},
    },
    # GDPR erasures in progress (controlplane/gdpr/erasure.py): steps a lost message or a
    # store failure left waiting are taken up again.
    # Access exports not downloaded in time are deleted (controlplane/gdpr/access.py).
    "gdpr-exports-expire": {
        "task": "control.gdpr_exports_expire",
        "schedule": 900.0,
        "options": {"queue": "control", "expires": 600},
    },
    "gdpr-erasures-advance": {
        "task": "control.gdpr_erasures_advance",
        "schedule": 60.0,
        "options": {"queue": "control", "expires": 300},
    },
    # The violation scan over every project (controlplane/policies/scan.py), at night; a
    # run missed by more than a few hours waits for the next night.
    "policy-scan-nightly": {
        "task": "control.policy_scan_nightly",
        "schedule": crontab(hour=2, minute=30),
        "options": {"queue": "control", "expires": 4 * 3600},
    },
}

# FinOps (controlplane/finops/): storage snapshots nightly (and again at noon: a re-run
# replaces the day's rows), budget checks, quota releases and the webhook outbox, each a
# safety net behind the task queued when something changes.
CELERY_BEAT_SCHEDULE.update(
    {
        "finops-storage-snapshot": {
            "task": "control.finops_storage_snapshot",
            "schedule": crontab(hour="0,12", minute=15),
            "options": {"queue": "control", "expires": 6 * 3600},
        },
        "finops-budgets-check": {
            "task": "control.finops_budgets_check_all",
            "schedule": 600.0,
            "options": {"queue": "control", "expires": 500},
        },
        "finops-quota-release": {
            "task": "control.finops_quota_release_all",
            "schedule": 30.0,
            "options": {"queue": "control", "expires": 60},
        },
        "finops-webhooks-send": {
            "task": "control.finops_webhooks_send_due",
            "schedule": 30.0,
            "options": {"queue": "control", "expires": 60},
        },
    }
)

# Audit anchors (controlplane/audit/anchors.py): signed chain heads in the object store.
# AUDIT_ANCHOR_KEY unset = derived from SECRET_KEY (the embedded default); set it in
# production, comma-separated during a rotation (the first signs, every one verifies).
try:
    AUDIT_ANCHOR_KEY = env.env_str("AUDIT_ANCHOR_KEY", "")
    AUDIT_ANCHOR_INTERVAL_SECONDS = env.env_int("AUDIT_ANCHOR_INTERVAL_SECONDS", 300, minimum=10)
    # Also anchor a chain each time it grows by this many events (0 = only on the beat).
    AUDIT_ANCHOR_EVERY_EVENTS = env.env_int("AUDIT_ANCHOR_EVERY_EVENTS", 100, minimum=0)
except env.ConfigError as error:
    raise ImproperlyConfigured(str(error)) from None
CELERY_BEAT_SCHEDULE["anchor-audit-chains"] = {
    "task": "control.audit_anchor_chains",
    "schedule": float(AUDIT_ANCHOR_INTERVAL_SECONDS),
    "options": {"queue": "control"},
}

# MLflow registry mirror (controlplane/registry/mlflow_sync.py): the beat syncs PENDING
# models and retries FAILED ones, waiting 10 s, 20 s, 40 s ... up to the cap between tries.
try:
    MLFLOW_SYNC_INTERVAL_SECONDS = env.env_int("MLFLOW_SYNC_INTERVAL_SECONDS", 30, minimum=5)
    MLFLOW_SYNC_MAX_BACKOFF_SECONDS = env.env_int(
        "MLFLOW_SYNC_MAX_BACKOFF_SECONDS", 600, minimum=10
    )
    # One beat pass stops starting syncs after this long; the next pass goes on.
    MLFLOW_SYNC_BEAT_BUDGET_SECONDS = env.env_int(
        "MLFLOW_SYNC_BEAT_BUDGET_SECONDS", 300, minimum=10
    )
except env.ConfigError as error:
    raise ImproperlyConfigured(str(error)) from None
CELERY_BEAT_SCHEDULE["sync-mlflow-registry"] = {
    "task": "control.registry_sync_mlflow",
    "schedule": float(MLFLOW_SYNC_INTERVAL_SECONDS),
    # A pass that waited longer than a few intervals is stale: a later one covers it.
    "options": {"queue": "control", "expires": 5 * MLFLOW_SYNC_INTERVAL_SECONDS},
}
