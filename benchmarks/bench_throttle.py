"""Per-check cost of django_fastcache's AnonRateThrottle against DRF's, in one run.

Stores: DRF on LocMemCache and on django-redis; ours in-process (C++ table) and on Redis
(one EVALSHA, through the FastCache interface: redis_client()). Histories of 100 and
10,000 entries (limits 100/hour and 10000/hour, with the history full, so every check
is a denial that still reads the whole history, DRF's worst and steady state under
abuse), plus a Redis PING on the same connection kind as the floor of any Redis check.

Run: .venv/bin/python benchmarks/bench_throttle.py
"""

from __future__ import annotations

import statistics
import sys
import time

import django
from django.conf import settings

sys.path.insert(0, "tests")  # redis_servers

settings.configure(
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
    CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    REST_FRAMEWORK={"NUM_PROXIES": None},
)
django.setup()

import django_redis  # noqa: E402
import redis  # noqa: E402
import rest_framework  # noqa: E402
from django.contrib.auth.models import AnonymousUser  # noqa: E402
from django.core.cache.backends.locmem import LocMemCache  # noqa: E402
from django.http import HttpRequest  # noqa: E402
from django_redis.cache import RedisCache as DjangoRedisCache  # noqa: E402
from redis_servers import RedisServer  # noqa: E402
from rest_framework import throttling as drf  # noqa: E402

import django_fastcache  # noqa: E402
from django_fastcache import limiter, throttling  # noqa: E402


class RedisOnly:
    """FastCache's interface for the Redis store (the backend is built in parallel)."""

    breaker = None

    def __init__(self, client):
        self.client = client

    def redis_client(self):
        return self.client


def per_call_us(fn, n, repeat=5):
    best = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        best.append((time.perf_counter() - start) / n * 1e6)
    return min(best), statistics.median(best)


def checker(cls, request):
    def check():
        cls().allow_request(request, None)  # a fresh instance per request, as DRF does
    return check


def main():
    request = HttpRequest()
    request.META["REMOTE_ADDR"] = "10.1.2.3"
    request.user = AnonymousUser()
    rows = []
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        dj_redis = DjangoRedisCache(server.url, {})
        locmem = LocMemCache("bench", {})
        ping = per_call_us(client.ping, 5000)[0]
        rows.append(("Redis PING (redis-py)", None, ping))
        for limit in (100, 10_000):
            rate = f"{limit}/hour"
            n_local = 20_000 if limit == 100 else 300
            n_redis = 3000 if limit == 100 else 300

            def make(base, cache):
                return type("B", (base,), {"rate": rate, "cache": cache})

            cases = [
                ("DRF AnonRateThrottle, LocMemCache", make(drf.AnonRateThrottle, locmem), n_local),
                ("ours, in-process C++ table", make(throttling.AnonRateThrottle, locmem), 20_000),
                ("DRF AnonRateThrottle, django-redis", make(drf.AnonRateThrottle, dj_redis), n_redis),
                ("ours, Redis EVALSHA", make(throttling.AnonRateThrottle, RedisOnly(client)), 5000),
            ]
            results = {}
            for name, cls, n in cases:
                check = checker(cls, request)
                for _ in range(limit + 10):  # fill the history: every timed check is full
                    check()
                results[name] = per_call_us(check, n)[0]
                rows.append((name, limit, results[name]))
            rows.append(("  ratio local: DRF LocMem / ours", limit,
                         results["DRF AnonRateThrottle, LocMemCache"] / results["ours, in-process C++ table"]))
            rows.append(("  ratio Redis: DRF django-redis / ours", limit,
                         results["DRF AnonRateThrottle, django-redis"] / results["ours, Redis EVALSHA"]))
            rows.append(("  ratio ours Redis / PING", limit, results["ours, Redis EVALSHA"] / ping))
            limiter.local_limiter().clear()
            client.flushall()
            locmem.clear()

    print(f"Python {sys.version.split()[0]}, Django {django.__version__}, "
          f"DRF {rest_framework.VERSION}, django-redis {django_redis.__version__}, "
          f"redis-py {redis.__version__}, django-fastcache {django_fastcache.__version__}")
    print(f"{'check':42} {'history':>8} {'us/check or ratio':>18}")
    for name, limit, value in rows:
        hist = "" if limit is None else str(limit)
        unit = "x" if name.startswith("  ratio") else " us"
        print(f"{name:42} {hist:>8} {value:>15.2f}{unit}")


if __name__ == "__main__":
    main()
