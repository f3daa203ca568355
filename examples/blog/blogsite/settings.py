"""Settings of the example site: FastCache on the embedded default, or on Redis when
REDIS_URL is set; DRF throttles from django_fastcache.throttling; JSON logs."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-site-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "rest_framework",
    "rest_framework.authtoken",
    "django_fastcache",
    "django_fastcache.orm",
    "blog",
]
# django_fastcache.orm reads django-cacheops' settings. "ops": () caches nothing by itself:
# the views opt in with .cache() and cached_as. Entries live in CACHES["default"].
CACHEOPS = {"blog.post": {"ops": (), "timeout": 15 * 60},
            "blog.author": {"ops": (), "timeout": 15 * 60}}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django_fastcache.log.RequestContextMiddleware",
]
ROOT_URLCONF = "blogsite.urls"
WSGI_APPLICATION = "blogsite.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3",
                         "NAME": os.environ.get("BLOG_DB", str(BASE_DIR / "db.sqlite3"))}}
USE_TZ = True

# The one line that matters: FastCache. No LOCATION: an in-process C++ store; a Redis
# LOCATION: shared by every worker process (and host).
REDIS_URL = os.environ.get("REDIS_URL")
CACHES = {
    "default": {
        "BACKEND": "django_fastcache.cache.FastCache",
        "TIMEOUT": 300,
        **({"LOCATION": REDIS_URL, "KEY_PREFIX": "blog"} if REDIS_URL else
           {"OPTIONS": {"MAX_BYTES": 32 * 1024 * 1024}}),
    }
}
# Sessions in the cache, backed by the database (so a restart logs no one out).
SESSION_ENGINE = "django.contrib.sessions.backends.cached_db"

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["rest_framework.authentication.TokenAuthentication"],
    "DEFAULT_THROTTLE_RATES": {"anon": "5/min", "user": "10/min", "search": "3/min"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {
            "()": "django_fastcache.log.JsonFormatter",
            "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
            "rename_fields": {"levelname": "level"},
            "static_fields": {"service": "blog"},
        },
    },
    "handlers": {
        "json": {"class": "logging.FileHandler", "filename": os.environ["BLOG_LOG_FILE"],
                 "formatter": "json"} if os.environ.get("BLOG_LOG_FILE") else
                {"class": "logging.StreamHandler", "formatter": "json"},
    },
    "loggers": {
        "django_fastcache": {"handlers": ["json"], "level": "INFO", "propagate": False},
        "django": {"handlers": ["json"], "level": "WARNING", "propagate": False},
    },
}
