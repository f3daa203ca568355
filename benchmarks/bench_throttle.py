"""Per-check cost of django_fastcache's AnonRateThrottle against DRF's, in one run.

Every check is what a DRF request does: a fresh throttle instance, then
``allow_request(request, view)`` with a DRF ``Request`` around a ``RequestFactory``
request (authenticated as anonymous, as DRF does before throttling).

Stores: DRF on LocMemCache, on django-redis and on Django's RedisCache; ours in-process
(the embedded FastCache's C++ table), on a FastCache with a Redis LOCATION, and through
django-redis's and Django RedisCache's own clients (one EVALSHA each), and the peek
(``throttle.peek(request)``, counting nothing). Our Redis rows run as shipped: a FastCache
answers repeated denials from the process (``FASTCACHE_THROTTLE["DENIAL_MEMO"]``, on for
FastCache by default); django-redis and Django's RedisCache are measured both as shipped
(memo off: their ``clear()`` is a FLUSHDB) and with ``DENIAL_MEMO = True`` ("+ memo").
All Redis alternatives use one
redis-server. After the table, an exactness run: 16 threads x 40 checks of one client
against a limit of 100 on each Redis store (exact means 100 allowed). Histories of 100
and 10,000 entries, in two regimes: "allowed" (the window
holds H entries and each check adds one: DRF reads and writes the whole list) and
"denied" (the history is full: DRF only reads it). A redis-py ``PING`` on the same server
is the reference for a Redis round trip; a PING sent on a dedicated connection (no
redis-py command path) is printed as the floor of a round trip.

Noise: the alternatives are interleaved (each round runs every alternative for a batch,
the order reversed every other round) and the table gives the median per-check time of
the rounds, so load from other processes spreads over all of them alike.

Run: .venv/bin/python benchmarks/bench_throttle.py [--rounds N]
"""

from __future__ import annotations

import argparse
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
    # On for every store; the as-shipped django-redis and RedisCache rows turn it off on
    # their own store below (their default).
    FASTCACHE_THROTTLE={"DENIAL_MEMO": True},
    SECRET_KEY="bench-not-secret",  # FastCache signs pickles with a key derived from it
)
django.setup()

import django_fastcache  # noqa: E402
import django_redis  # noqa: E402
import redis  # noqa: E402
import rest_framework  # noqa: E402
from django.contrib.auth.models import AnonymousUser  # noqa: E402
from django.core.cache.backends.locmem import LocMemCache  # noqa: E402
from django.core.cache.backends.redis import RedisCache  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django_fastcache import limiter, throttling  # noqa: E402
from django_fastcache.cache import FastCache  # noqa: E402
from django_redis.cache import RedisCache as DjangoRedisCache  # noqa: E402
from redis_servers import RedisServer  # noqa: E402
from rest_framework import throttling as drf  # noqa: E402
from rest_framework.request import Request  # noqa: E402


def fake_timer(step):
    # Advances by `step` seconds per check: with step = period / H the window always
    # holds H entries, so every check is allowed against a history of H entries.
    state = [1_699_920_000.0]

    def timer(self):
        state[0] += step
        return state[0]

    return timer


def batch(fn, n):
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


def interleaved(alternatives, rounds):
    """Median per-call microseconds of each (name, fn, n), run ABC.. CBA.. in turns."""
    times = {name: [] for name, _fn, _n in alternatives}
    for r in range(rounds):
        order = alternatives if r % 2 == 0 else alternatives[::-1]
        for name, fn, n in order:
            times[name].append(batch(fn, n))
    return {name: statistics.median(t) for name, t in times.items()}


def storm(cls, request, threads=16, calls=40):
    import threading

    allowed = [0] * threads
    barrier = threading.Barrier(threads)

    def work(i):
        barrier.wait()
        allowed[i] = sum(bool(cls().allow_request(request, None)) for _ in range(calls))

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        sys.setswitchinterval(old)
    return sum(allowed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=15)
    rounds = parser.parse_args().rounds

    request = Request(RequestFactory().get("/", REMOTE_ADDR="10.1.2.3"))
    request.user = AnonymousUser()  # DRF authenticates before it throttles
    rows = []
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url)
        dj_redis = DjangoRedisCache(server.url, {})
        # A key prefix of its own: its L1 invalidation listener (CLIENT TRACKING BCAST on
        # the prefix) must not be woken by django-redis's writes of DRF's history.
        fastcache_redis = FastCache(server.url, {"KEY_PREFIX": "fcbench"})
        dj_rediscache = RedisCache(server.url, {})
        # The as-shipped rows: no memo on django-redis and Django's RedisCache (the
        # default); the "+ memo" rows use other instances of the same caches.
        limiter._store_for(dj_redis)._memo = None
        limiter._store_for(dj_rediscache)._memo = None
        dj_redis_memo = DjangoRedisCache(server.url, {})
        dj_rediscache_memo = RedisCache(server.url, {})
        locmem = LocMemCache("bench", {})
        embedded = FastCache("bench-embedded", {})
        dedicated = client.connection_pool.get_connection()
        packed_ping = (b"*1\r\n$4\r\nPING\r\n",)

        def raw_ping():
            dedicated.send_packed_command(packed_ping)
            dedicated.read_response()

        for history in (100, 10_000):
            for regime in ("allowed", "denied"):
                def attrs(regime=regime, history=history):
                    if regime == "allowed":
                        # Limit 2H/hour, a clock of its own advancing 1h/H per check: H
                        # entries in the window.
                        return {"rate": f"{2 * history}/hour",
                                "timer": fake_timer(3600 / history)}
                    # Limit H/hour, history full: every check is a denial.
                    return {"rate": f"{history}/hour"}

                # Our Redis check uses Redis TIME (no fake clock): allowed, a limit it never
                # reaches; its cost does not depend on the history's length.
                redis_attrs = {"rate": "10000000/hour"} if regime == "allowed" else attrs()
                small = history == 100
                cases = [
                    ("DRF, LocMemCache", drf.AnonRateThrottle, locmem, attrs(),
                     400 if small else 10),
                    ("ours, in-process", throttling.AnonRateThrottle, embedded, attrs(), 4000),
                    ("DRF, django-redis", drf.AnonRateThrottle, dj_redis, attrs(),
                     100 if small else 10),
                    ("ours, django-redis", throttling.AnonRateThrottle, dj_redis, redis_attrs,
                     300),
                    ("DRF, Django RedisCache", drf.AnonRateThrottle, dj_rediscache, attrs(),
                     100 if small else 10),
                    ("ours, Django RedisCache", throttling.AnonRateThrottle, dj_rediscache,
                     redis_attrs, 300),
                    ("ours, Redis", throttling.AnonRateThrottle, fastcache_redis, redis_attrs, 300),
                    ("ours, django-redis + memo", throttling.AnonRateThrottle, dj_redis_memo,
                     redis_attrs, 300),
                    ("ours, Django RedisCache + memo", throttling.AnonRateThrottle,
                     dj_rediscache_memo, redis_attrs, 300),
                ]
                limiter.clear_local()
                client.flushall()
                locmem.clear()
                embedded.clear()
                alternatives = [("Redis PING (redis-py)", client.ping, 300),
                                ("Redis PING (dedicated connection)", raw_ping, 300)]
                for name, base, cache, extra, n in cases:
                    cls = type("B", (base,), {"cache": cache, **extra})

                    def check(cls=cls):
                        cls().allow_request(request, None)  # a fresh instance per request

                    for _ in range(history + 10):  # fill the history first
                        check()
                    alternatives.append((name, check, n))
                for name, cache, n in (("ours, peek (Redis)", fastcache_redis, 300),
                                       ("ours, peek (in-process)", embedded, 4000)):
                    peeker = type("P", (throttling.AnonRateThrottle,),
                                  {"cache": cache, **redis_attrs})()
                    alternatives.append((name, lambda p=peeker: p.peek(request), n))
                interleaved(alternatives, 1)  # warm-up (connections, listener threads)
                results = interleaved(alternatives, rounds)
                for name, _fn, _n in alternatives:
                    rows.append((f"{name} [{regime}]", history, results[name]))
                ping = results["Redis PING (redis-py)"]
                rows.append((f"  ratio DRF LocMem / ours local [{regime}]", history,
                             results["DRF, LocMemCache"] / results["ours, in-process"]))
                rows.append((f"  ratio DRF django-redis / ours Redis [{regime}]", history,
                             results["DRF, django-redis"] / results["ours, Redis"]))
                rows.append((f"  ratio DRF / ours, both django-redis [{regime}]", history,
                             results["DRF, django-redis"] / results["ours, django-redis"]))
                rows.append((f"  ratio DRF / ours, both RedisCache [{regime}]", history,
                             results["DRF, Django RedisCache"]
                             / results["ours, Django RedisCache"]))
                rows.append((f"  ratio DRF / ours + memo, django-redis [{regime}]", history,
                             results["DRF, django-redis"]
                             / results["ours, django-redis + memo"]))
                rows.append((f"  ratio DRF / ours + memo, RedisCache [{regime}]", history,
                             results["DRF, Django RedisCache"]
                             / results["ours, Django RedisCache + memo"]))
                rows.append((f"  ratio ours Redis / PING [{regime}]", history,
                             results["ours, Redis"] / ping))
        dedicated.disconnect()
        exact = []
        for name, base, cache in (("DRF, django-redis", drf.AnonRateThrottle, dj_redis),
                                  ("ours, django-redis", throttling.AnonRateThrottle, dj_redis),
                                  ("DRF, Django RedisCache", drf.AnonRateThrottle, dj_rediscache),
                                  ("ours, Django RedisCache", throttling.AnonRateThrottle,
                                   dj_rediscache),
                                  ("ours, Redis", throttling.AnonRateThrottle, fastcache_redis),
                                  ("ours, django-redis + memo", throttling.AnonRateThrottle,
                                   dj_redis_memo),
                                  ("ours, Django RedisCache + memo", throttling.AnonRateThrottle,
                                   dj_rediscache_memo)):
            client.flushall()
            exact.append((name, storm(type("S", (base,), {"cache": cache, "rate": "100/hour"}),
                                      request)))

    print(f"Python {sys.version.split()[0]}, Django {django.__version__}, "
          f"DRF {rest_framework.VERSION}, django-redis {django_redis.__version__}, "
          f"redis-py {redis.__version__}, django-fastcache {django_fastcache.__version__}")
    print(f"median of {rounds} interleaved rounds, fresh throttle per check")
    print(f"{'check':50} {'history':>8} {'us or ratio':>12}")
    for name, history, value in rows:
        unit = "x" if name.startswith("  ratio") else " us"
        print(f"{name:50} {history!s:>8} {value:>10.2f}{unit}")
    print("exactness: 16 threads x 40 checks, limit 100")
    for name, allowed in exact:
        print(f"{name:50} {allowed:>8} allowed")


if __name__ == "__main__":
    main()
