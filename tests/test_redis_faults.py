"""FastCache when Redis fails: a server stopped (refusing connections) or hung (SIGSTOP)
under a stream of requests, a Sentinel failover, and stampede protection across
processes. Each test starts the servers it breaks."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import pytest
from django_fastcache.cache import FastCache
from django_fastcache.errors import ConnectionInterrupted
from redis_servers import RedisSentinelSet, RedisServer, wait_until

pytestmark = pytest.mark.redis

RESET = 0.2  # CIRCUIT_BREAKER_RESET_TIMEOUT
SOCKET_TIMEOUT = 0.25
# Per-call latency while the breaker is open, measured on the 2-core dev machine: p50
# 2 us, p99 11-48 us. The bounds are ten times looser, and still far below the socket
# timeout (or the ~1 ms of a refused connection) that a call would wait without a breaker.
OPEN_P50_BOUND = 0.00002
OPEN_P99_BOUND = 0.0005


def make_cache(server: RedisServer, prefix: str, **options) -> FastCache:
    return FastCache(server.url, {"KEY_PREFIX": prefix, "OPTIONS": {
        "CIRCUIT_BREAKER_RESET_TIMEOUT": RESET, "SOCKET_TIMEOUT": SOCKET_TIMEOUT,
        "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT, **options}})


@pytest.fixture
def server():
    with RedisServer() as srv:
        yield srv


def one_request(cache: FastCache, i: int):
    """What a view might do: a read, a write, a multi-key read, a counter."""
    cache.get(f"user:{i % 10}")
    cache.set(f"user:{i % 10}", {"id": i, "name": "x" * 50}, 60)
    cache.get_many([f"user:{j}" for j in range(5)])
    cache.add("hits", 0)
    try:
        cache.incr("hits")
    except ValueError:  # Redis down: the counter reads as missing, as Django's API says
        pass


def p99(samples: list[float]) -> float:
    samples = sorted(samples)
    return samples[int(len(samples) * 0.99)]


def break_and_recover(cache: FastCache, server: RedisServer, fail, recover,
                      min_errors: int) -> dict:
    """Runs requests while ``fail`` breaks Redis and ``recover`` mends it; returns what
    the stream saw. No exception may escape any request. A hung server trips the breaker
    half-open at its first timeout; it is open once the trial failed too."""
    for i in range(20):
        one_request(cache, i)
    assert cache.get("user:1")["id"] == 11
    assert cache.stats()["breaker_state"] == "closed"

    fail()
    started = time.monotonic()
    i = 0
    while cache.breaker.state != "open":
        one_request(cache, i)
        i += 1
        assert time.monotonic() - started < 30, "the breaker never opened"
    opened_after = time.monotonic() - started
    stats = cache.stats()
    assert stats["breaker_state"] == "open" and stats["breaker_opens"] == 1
    assert stats["errors"] >= min_errors

    # Breaker open: each call returns at once, as a miss or a dropped write.
    timings = []
    for j in range(300):
        t = time.perf_counter()
        assert cache.get(f"user:{j % 10}", "miss") == "miss"
        timings.append(time.perf_counter() - t)
        t = time.perf_counter()
        cache.set(f"user:{j % 10}", j)
        timings.append(time.perf_counter() - t)
    p50 = sorted(timings)[len(timings) // 2]
    assert p50 < OPEN_P50_BOUND, f"p50 {p50 * 1e6:.0f} us while open"
    assert p99(timings) < OPEN_P99_BOUND, f"p99 {p99(timings) * 1e6:.0f} us while open"
    stats = cache.stats()
    assert stats["short_circuited"] >= 600 and stats["dropped_writes"] >= 300

    recover()
    recovered_at = time.monotonic()
    while True:
        one_request(cache, 0)
        cache.set("after", "back")
        if cache.get("after") == "back":
            break
        assert time.monotonic() - recovered_at < 10, "service never resumed"
        time.sleep(0.01)
    resumed_after = time.monotonic() - recovered_at
    assert cache.breaker.state == "closed"
    assert server.command("EXISTS", cache.make_key("after")) == 1
    return {"opened_after": opened_after, "resumed_after": resumed_after}


def test_a_stopped_server_opens_the_breaker_and_service_resumes_after_restart(server):
    cache = make_cache(server, "stop")
    seen = break_and_recover(cache, server, server.stop, server.start,
                             min_errors=cache.breaker.failure_threshold)
    # Refused connections fail in about a millisecond each: no socket timeout was paid.
    assert seen["opened_after"] < SOCKET_TIMEOUT
    # The first trial after the reset timeout succeeds and closes the breaker.
    assert seen["resumed_after"] < RESET + 1.0


def test_a_hung_server_opens_the_breaker_and_service_resumes_after_sigcont(server):
    cache = make_cache(server, "hang")
    seen = break_and_recover(cache, server, server.pause, server.resume, min_errors=2)
    # The first timeout trips the breaker half-open and the trial right after it opens
    # it: two socket timeouts, not one per call up to the threshold; then nothing waits.
    assert cache.stats()["breaker_suspected"] == 1
    assert seen["opened_after"] < SOCKET_TIMEOUT * 2 * 5
    assert seen["resumed_after"] < RESET + SOCKET_TIMEOUT + 1.0


def test_without_ignore_exceptions_the_caller_gets_connection_interrupted(server):
    cache = make_cache(server, "raise", IGNORE_EXCEPTIONS=False)
    cache.set("k", 1)
    server.stop()
    for _ in range(cache.breaker.failure_threshold):
        with pytest.raises(ConnectionInterrupted) as caught:
            cache.get("k")
        assert caught.value.__cause__ is not None  # chained from the redis-py error
    assert cache.breaker.state == "open"
    for call in (lambda: cache.get("k"), lambda: cache.set("k", 2),
                 lambda: cache.get_many(["k"]), lambda: cache.incr("k")):
        with pytest.raises(ConnectionInterrupted, match="circuit breaker open"):
            call()
    with pytest.raises(ConnectionError):  # the builtin it also is
        cache.delete("k")
    server.start()
    time.sleep(RESET)
    cache.set("k", 3)
    assert cache.get("k") == 3


def test_the_sentinel_primary_killed_writes_and_reads_resume_after_promotion():
    with RedisSentinelSet() as sentinel_set:
        cache = FastCache("redis:///0", {"KEY_PREFIX": "failover", "OPTIONS": {
            **sentinel_set.options(), "CIRCUIT_BREAKER_RESET_TIMEOUT": RESET,
            "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT}})
        cache.set("before", "written before")
        old_port = sentinel_set.primary.port
        wait_until(lambda: sentinel_set.replica.command("GET", cache.make_key("before")),
                   10, "the replica to receive the write")

        sentinel_set.kill_primary()
        assert sentinel_set.primary.port != old_port

        def works() -> bool:
            cache.set("after", "written after")
            return cache.get("after") == "written after"

        wait_until(works, 10, "the cache to write and read through the new primary", 0.05)
        assert cache.get("before") == "written before"  # replicated before the kill
        assert sentinel_set.primary.command("GET", cache.make_key("after")) is not None
        assert cache.stats()["breaker_state"] == "closed"


_GET_OR_SET_CHILD = textwrap.dedent("""
    import sys, time
    import django
    from django.conf import settings

    url = sys.argv[1]
    settings.configure(SECRET_KEY="not-secret", CACHES={"default": {
        "BACKEND": "django_fastcache.cache.FastCache", "LOCATION": url, "KEY_PREFIX": "gos"}})
    django.setup()
    import redis
    from django.core.cache import cache

    raw = redis.Redis.from_url(url)
    raw.incr("ready")
    while not raw.exists("go"):
        time.sleep(0.002)

    def compute():
        raw.incr("computations")
        time.sleep(0.5)
        return {"computed": True}

    print(cache.get_or_set("report", compute, 60))
""")


def test_get_or_set_across_processes_computes_once(server):
    workers = 4
    raw = server.client()
    try:
        procs = [subprocess.Popen([sys.executable, "-c", _GET_OR_SET_CHILD, server.url],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "PYTHONWARNINGS": "error"})
                 for _ in range(workers)]
        try:
            wait_until(lambda: int(raw.get("ready") or 0) == workers, 60,
                       "every process to be ready")
            raw.set("go", 1)
            outputs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
        for p, (out, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err
            assert out.strip() == "{'computed': True}"
        assert int(raw.get("computations")) == 1
    finally:
        raw.close()
