"""The throttles on a real FastCache: checks run in its Redis when it has a LOCATION, in
the in-process table on the embedded default, and the breaker of the cache applies."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings
from django_fastcache.cache import FastCache
from django_fastcache.throttling import AnonRateThrottle
from rest_framework.test import APIRequestFactory

factory = APIRequestFactory()


def make_throttle(cache, rate="3/min"):
    class Throttle(AnonRateThrottle):
        pass

    Throttle.cache = cache
    Throttle.rate = rate
    return Throttle()


def decisions(cache, n, rate="3/min", ip="10.1.2.3"):
    out = []
    for _ in range(n):
        request = factory.get("/", REMOTE_ADDR=ip)
        request.user = AnonymousUser()
        out.append(make_throttle(cache, rate).allow_request(request, None))
    return out


def test_throttle_runs_in_the_redis_of_a_fastcache(redis_server):
    cache = FastCache(redis_server.url + "/3", {"KEY_PREFIX": "thr"})
    assert cache.redis_client() is not None
    assert decisions(cache, 5, ip="10.9.9.9") == [True, True, True, False, False]
    raw = cache.redis_client()
    keys = [k for k in raw.scan_iter(match="*10.9.9.9*")]
    assert keys, "the limiter state lives in Redis"
    assert all(0 < raw.pttl(k) <= 60_000 for k in keys)


def test_throttle_on_the_embedded_default_uses_the_in_process_table():
    cache = FastCache("throttle-local", {})
    assert cache.redis_client() is None and cache.breaker is None
    assert decisions(cache, 4, ip="10.8.8.8") == [True, True, True, False]


def test_throttle_with_redis_down_follows_the_failure_mode(redis_server):
    from redis_servers import RedisServer

    with RedisServer() as server:
        cache = FastCache(server.url, {"SOCKET_TIMEOUT": 0.2, "SOCKET_CONNECT_TIMEOUT": 0.2,
                                       "CIRCUIT_BREAKER_THRESHOLD": 1})
        assert decisions(cache, 1, ip="10.7.7.7") == [True]
        server.stop()
        with override_settings(FASTCACHE_THROTTLE={"FAILURE_MODE": "closed"}):
            assert decisions(cache, 2, ip="10.7.7.7") == [False, False]
        with override_settings(FASTCACHE_THROTTLE={"FAILURE_MODE": "open"}):
            assert decisions(cache, 5, ip="10.7.7.7") == [True] * 5
        assert cache.breaker.state in ("open", "half_open")


@pytest.fixture(autouse=True)
def _drf_rates():
    with override_settings(REST_FRAMEWORK={"DEFAULT_THROTTLE_RATES": {"anon": "3/min"}}):
        yield
