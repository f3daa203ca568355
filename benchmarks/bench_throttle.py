"""Per-check cost of django_fastcache's AnonRateThrottle against DRF's, in one run.

Stores: DRF on LocMemCache and on django-redis; ours in-process (C++ table) and on Redis
(one EVALSHA, through the FastCache interface: redis_client()). Histories of 100 and
10,000 entries, in two regimes: "allowed" (the window holds H entries and each check
adds one: DRF reads and writes the whole list) and "denied" (the history is full: DRF
only reads it). A Redis PING on a redis-py client is the floor of any Redis check.

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


def fake_timer(step):
    # Advances by `step` seconds per check: with step = period / H the window always
    # holds H entries, so every check is allowed against a history of H entries.
    state = [1_699_920_000.0]

    def timer(self):
        state[0] += step
        return state[0]

    return timer


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
        rows.append(("Redis PING (redis-py)", "", ping))
        for history in (100, 10_000):
            for regime in ("allowed", "denied"):
                if regime == "allowed":
                    # Limit 2H/hour, clock advancing 1h/H per check: H entries in the window.
                    attrs = {"rate": f"{2 * history}/hour", "timer": fake_timer(3600 / history)}
                    # Our Redis check uses Redis TIME (no fake clock): a limit it never
                    # reaches; its cost does not depend on the history's length.
                    redis_attrs = {"rate": "10000000/hour"}
                else:
                    # Limit H/hour, history full: every check is a denial.
                    attrs = redis_attrs = {"rate": f"{history}/hour"}
                small = history == 100
                cases = [
                    ("DRF, LocMemCache", drf.AnonRateThrottle, locmem, attrs, 5000 if small else 200),
                    ("ours, in-process", throttling.AnonRateThrottle, locmem, attrs, 20_000),
                    ("DRF, django-redis", drf.AnonRateThrottle, dj_redis, attrs, 2000 if small else 200),
                    ("ours, Redis", throttling.AnonRateThrottle, RedisOnly(client), redis_attrs, 3000),
                ]
                results = {}
                for name, base, cache, extra, n in cases:
                    cls = type("B", (base,), {"cache": cache, **extra})
                    check = checker(cls, request)
                    for _ in range(history + 10):  # fill the history first
                        check()
                    results[name] = per_call_us(check, n, repeat=3)[0]
                    rows.append((f"{name} [{regime}]", history, results[name]))
                    limiter.local_limiter().clear()
                    client.flushall()
                    locmem.clear()
                rows.append((f"  ratio DRF LocMem / ours local [{regime}]", history,
                             results["DRF, LocMemCache"] / results["ours, in-process"]))
                rows.append((f"  ratio DRF django-redis / ours Redis [{regime}]", history,
                             results["DRF, django-redis"] / results["ours, Redis"]))
                rows.append((f"  ratio ours Redis / PING [{regime}]", history,
                             results["ours, Redis"] / ping))

    print(f"Python {sys.version.split()[0]}, Django {django.__version__}, "
          f"DRF {rest_framework.VERSION}, django-redis {django_redis.__version__}, "
          f"redis-py {redis.__version__}, django-fastcache {django_fastcache.__version__}")
    print(f"{'check (best of 3, fresh throttle per check)':50} {'history':>8} {'us or ratio':>12}")
    for name, history, value in rows:
        unit = "x" if name.startswith("  ratio") else " us"
        print(f"{name:50} {history!s:>8} {value:>10.2f}{unit}")


if __name__ == "__main__":
    main()
