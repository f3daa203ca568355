"""Django's own cache test suite (``BaseCacheTests`` from the installed Django's source),
run against FastCache exactly as Django runs it against its built-in backends."""

import os

import conftest
import pytest
from django.test import TestCase, override_settings

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


# Django runs BaseCacheTests against its RedisCache without the "cull" and "zero_cull"
# aliases (Redis evicts by its own maxmemory policy; MAX_ENTRIES and CULL_FREQUENCY do not
# apply), so test_cull and test_zero_cull skip with "Culling isn't implemented." there as
# here. The Redis deployments are session fixtures, known only once the tests run, so each
# class overrides CACHES from a class-scoped fixture instead of a decorator.


@pytest.fixture(scope="class")
def redis_caches(request):
    location, options = request.cls.redis_location(request)
    setting = django_cache_tests.caches_setting_for_tests(
        BACKEND="django_fastcache.cache.FastCache",
        LOCATION=location,
        OPTIONS=options,
        exclude=django_cache_tests.redis_excluded_caches,
    )
    with override_settings(CACHES=setting):
        from django.core.cache import cache

        cache.clear()
        yield


class OnRedis:
    mode = ""

    def test_the_suite_runs_on_redis(self):
        from django.core.cache import cache

        assert cache.stats()["redis_mode"] == self.mode


@pytest.mark.redis
@pytest.mark.usefixtures("redis_caches")
class FastCacheRedisDjangoSuite(OnRedis, django_cache_tests.BaseCacheTests, TestCase):
    """Django's suite on a single Redis node, without the cull aliases (as Django's own
    RedisCacheTests runs it)."""

    mode = "single"

    @staticmethod
    def redis_location(request):
        return request.getfixturevalue("redis_server").url, {}


@pytest.mark.redis
@pytest.mark.usefixtures("redis_caches")
class FastCacheRedisClusterDjangoSuite(OnRedis, django_cache_tests.BaseCacheTests, TestCase):
    """Django's suite on a 3-master Redis Cluster, without the cull aliases (as Django's
    own RedisCacheTests runs it)."""

    mode = "cluster"

    @staticmethod
    def redis_location(request):
        return request.getfixturevalue("redis_cluster").url, {}


@pytest.mark.redis
@pytest.mark.usefixtures("redis_caches")
class FastCacheRedisSentinelDjangoSuite(OnRedis, django_cache_tests.BaseCacheTests, TestCase):
    """Django's suite on a Sentinel-managed primary, without the cull aliases (as Django's
    own RedisCacheTests runs it)."""

    mode = "sentinel"

    @staticmethod
    def redis_location(request):
        return "redis:///0", request.getfixturevalue("redis_sentinel").options()
