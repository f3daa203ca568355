"""Test settings: Django is configured here, once, before any test module is imported."""

import os

import django
import django_suite
from django.conf import settings

DJANGO_SUITE = False
pytest_plugins = ["redis_fixtures"]


def _database() -> dict:
    # test_orm_pg.py runs the ORM cache's scenarios again on a PostgreSQL it started.
    port = os.environ.get("ORM_TEST_PG_PORT")
    if port:
        return {"ENGINE": "django.db.backends.postgresql", "NAME": "postgres",
                "USER": "postgres", "HOST": "127.0.0.1", "PORT": port}
    return {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}


def pytest_configure(config):
    global DJANGO_SUITE
    if settings.configured:
        return
    DJANGO_SUITE = django_suite.install()
    settings.configure(
        DEBUG=False,
        SECRET_KEY="django-fastcache-tests-not-secret",
        USE_TZ=True,
        DATABASES={"default": _database()},
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "django_fastcache",
            "django_fastcache.orm",
            "ormapp",
            *(["cache"] if DJANGO_SUITE else []),
        ],
        CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        ROOT_URLCONF="urls",
        MIDDLEWARE=[],
        TEMPLATES=[{"BACKEND": "django.template.backends.django.DjangoTemplates",
                    "APP_DIRS": True}],
        # test_orm.py runs once more with filter() deferred (ORM_TEST_LAZY=1).
        FASTCACHE_ORM_LAZY_FILTER=os.environ.get("ORM_TEST_LAZY") == "1",
    )
    django.setup()
