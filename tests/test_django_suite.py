"""Django's own cache test suite (``BaseCacheTests`` from the installed Django's source),
run against FastCache exactly as Django runs it against its built-in backends."""

import os

import pytest
from django.test import TestCase, override_settings

import conftest

if not conftest.DJANGO_SUITE:
    if os.environ.get("CI") == "true":
        pytest.fail("Django's cache test suite could not be fetched", pytrace=False)
    pytest.skip("Django's cache test suite could not be fetched", allow_module_level=True)

from cache import tests as django_cache_tests  # noqa: E402  (fetched by conftest)


@override_settings(
    CACHES=django_cache_tests.caches_setting_for_tests(
        BACKEND="django_fastcache.cache.FastCache",
    )
)
class FastCacheDjangoSuite(django_cache_tests.BaseCacheTests, TestCase):
    """The suite's aliases (prefix, v2, custom_key, ...) share the default LOCATION, so
    they share one L1 store, as LocMemCache's do; the cull aliases set other bounds and so
    get a store of their own."""
