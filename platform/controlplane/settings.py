"""Django settings, all read from the environment through `workers.config` helpers.

With no environment set this is the embedded default: SQLite, a local object store and
kombu's filesystem broker, all under ``var/``. Set DEBUG=0 with SECRET_KEY and
ALLOWED_HOSTS for production (`manage.py check --deploy` passes).
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from workers import config as env

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
    UPLOAD_MAX_BYTES = env.env_int("UPLOAD_MAX_BYTES", 5 * 1024**3, minimum=1)
    JOB_LEASE_SECONDS = env.env_int("JOB_LEASE_SECONDS", 120, minimum=2)
    JOB_HEARTBEAT_SECONDS = env.env_int("JOB_HEARTBEAT_SECONDS", 20, minimum=1)
    JOB_MAX_ATTEMPTS = env.env_int("JOB_MAX_ATTEMPTS", 3, minimum=1)
    # A job still queued after this long is dispatched again (its message may be lost).
    JOB_QUEUE_TIMEOUT_SECONDS = env.env_int("JOB_QUEUE_TIMEOUT_SECONDS", 1800, minimum=10)
    # An upload not completed within this many seconds is aborted and its version removed.
    DATASET_UPLOAD_TTL_SECONDS = env.env_int("DATASET_UPLOAD_TTL_SECONDS", 24 * 3600, minimum=60)
    REAPER_INTERVAL_SECONDS = env.env_int("REAPER_INTERVAL_SECONDS", 15, minimum=1)
    API_THROTTLE_USER = env.env_str("API_THROTTLE_USER", "2000/min")
    API_THROTTLE_ANON = env.env_str("API_THROTTLE_ANON", "60/min")
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
    "controlplane.accounts",
    "controlplane.projects",
    "controlplane.audit",
    "controlplane.uploads",
    "controlplane.jobs",
    "controlplane.datasets",
    "controlplane.dashboard",
]

MIDDLEWARE = [
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

# Persistent connections are checked before their first use in a request: after a
# PostgreSQL restart the first request reconnects instead of failing on a dead socket.
DATABASES = {
    "default": dj_database_url.parse(_database_url, conn_max_age=60, conn_health_checks=True)
}
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
FILE_UPLOAD_TEMP_DIR = None
# Bodies are checked by UPLOAD_MAX_BYTES; Django's own cap would only reject non-file fields.
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "controlplane.accounts.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
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
    # Two choice sets share the field name "kind": name each after its enum.
    "ENUM_NAME_OVERRIDES": {
        "JobKindEnum": "workers.protocol.JobKind",
        "DatasetKindEnum": "controlplane.datasets.models.DatasetKind",
    },
    # Every operation documents its error responses in the one error shape.
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "controlplane.api.schema.document_error_responses",
    ],
}

if CACHE_URL.startswith("locmem://"):
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
else:
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": CACHE_URL}
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
CELERY_BEAT_SCHEDULE = {
    "reap-expired-jobs": {
        "task": "control.reap_expired_jobs",
        "schedule": float(REAPER_INTERVAL_SECONDS),
        "options": {"queue": "control"},
    },
    "reap-abandoned-uploads": {
        "task": "control.reap_abandoned_uploads",
        "schedule": 300.0,
        "options": {"queue": "control"},
    },
}
