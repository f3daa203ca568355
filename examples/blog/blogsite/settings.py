"""Settings of the example site: FastCache on the embedded default (no server needed)."""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-site-only-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "blogsite.urls"
WSGI_APPLICATION = "blogsite.wsgi.application"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True

# The one line that matters: FastCache, no LOCATION, so an in-process C++ L1 store.
CACHES = {
    "default": {
        "BACKEND": "django_fastcache.cache.FastCache",
        "TIMEOUT": 300,
        "OPTIONS": {"MAX_BYTES": 32 * 1024 * 1024},
    }
}
