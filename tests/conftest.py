"""Test settings: Django is configured here, once, before any test module is imported."""

import django
from django.conf import settings

pytest_plugins = ["redis_fixtures"]


def pytest_configure(config):
    if settings.configured:
        return
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-fastcache-tests-not-secret",
        USE_TZ=True,
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
        ],
        CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        ROOT_URLCONF=[],
        MIDDLEWARE=[],
    )
    django.setup()
