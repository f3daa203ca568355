"""Cache backend benchmark: FastCache against the alternatives, in one run, same values.

    python benchmarks/bench_cache.py [--quick] [--redis URL | --no-redis]

Two tables: the embedded default (FastCache's L1) against LocMemCache; then FastCache on
Redis against django-redis (pickle and msgpack serializers) and Django's own RedisCache,
all on one redis-server (started here on a free port unless ``--redis`` names one), plus
FastCache's per-call latency while that server is stopped (the circuit breaker open).
Prints ns/op (best of several repeats) per operation and value, and each alternative's
time as a multiple of FastCache's (">1x" means FastCache is faster). Methods are called on
the backend instance, not through ``django.core.cache.cache`` (a proxy whose per-call
lookup costs microseconds), as a hot loop in an application should.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from importlib.metadata import version

import django
from django.conf import settings

VALUES: dict[str, object] = {
    "dict": {"id": 1, "name": "x" * 200, "tags": ["a", "b", "c"], "score": 1.5, "ok": True},
    "list": list(range(20)),
    "str1k": "s" * 1024,
}


def setup_django() -> None:
    settings.configure(
        SECRET_KEY="benchmark",
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    )
    django.setup()


def backends() -> dict[str, Callable[[], object]]:
    from django.core.cache.backends.locmem import LocMemCache
    from django_fastcache.cache import FastCache

    return {
        "FastCache (L1)": lambda: FastCache("bench-fast", {"TIMEOUT": 3600}),
        "LocMemCache": lambda: LocMemCache("bench-locmem", {"TIMEOUT": 3600}),
    }


def redis_backends(url: str) -> dict[str, Callable[[], object]]:
    from django.core.cache.backends.redis import RedisCache
    from django_fastcache.cache import FastCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    # A key prefix each: the serializers differ, so the backends must not read each
    # other's values.
    return {
        "FastCache": lambda: FastCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "fc"}),
        "django-redis": lambda: DjangoRedisCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "dr"}),
        "django-redis msgpack": lambda: DjangoRedisCache(url, {
            "TIMEOUT": 3600, "KEY_PREFIX": "drm",
            "OPTIONS": {"SERIALIZER": "django_redis.serializers.msgpack.MSGPackSerializer"}}),
        "RedisCache": lambda: RedisCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "dj"}),
    }


def operations(cache, value, many: bool = False) -> dict[str, Callable[[], object]]:
    keys = [f"many:{i}" for i in range(100)]
    data = {k: value for k in keys}
    cache.set("hit", value)
    cache.set_many(data)
    cache.set("counter", 0)
    ops = {
        "get (hit)": lambda: cache.get("hit"),
        "get (miss)": lambda: cache.get("absent"),
        "set": lambda: cache.set("hit", value),
        "get_many (100)": lambda: cache.get_many(keys),
    }
    if many:
        ops["set_many (100)"] = lambda: cache.set_many(data)
    ops["incr"] = lambda: cache.incr("counter")
    return ops


def measure(fn: Callable[[], object], budget: float) -> float:
    """Best-of-5 ns per call, with a loop count sized to `budget` seconds per repeat."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * budget / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def run_table(made: dict[str, object], budget: float, many: bool = False) -> dict:
    results: dict[tuple[str, str, str], float] = {}
    for value_name, value in VALUES.items():
        for name, cache in made.items():
            for op, fn in operations(cache, value, many).items():
                if op == "incr" and value_name != "dict":
                    continue  # the counter does not depend on the value
                results[(value_name, op, name)] = measure(fn, budget)
    return results


def print_table(results: dict, names: list[str], unit: float = 1.0, unit_name: str = "ns") -> None:
    """One row per value and operation; ratios are each alternative's time over the first's."""
    baseline = names[0]
    width = max(15, *(len(n) for n in names))
    header = f"{'value':6} {'operation':15}" + "".join(f" {n:>{width}}" for n in names)
    header += "".join(f" {n + ' ratio':>{width + 6}}" for n in names[1:])
    print(header)
    print("-" * len(header))
    for (value_name, op, name), _ in results.items():
        if name != baseline:
            continue
        row = f"{value_name:6} {op:15}"
        base = results[(value_name, op, baseline)]
        row += "".join(f" {results[(value_name, op, n)] / unit:{width - 3}.0f} {unit_name}"
                       for n in names)
        row += "".join(f" {results[(value_name, op, n)] / base:{width + 5}.2f}x"
                       for n in names[1:])
        print(row)
    sys.stdout.flush()


# FastCache's time as a fraction of django-redis (pickle)'s, at most: the goals of the
# Redis tier (one round trip like theirs, but less Python around it).
TARGETS = {"get (hit)": 0.9, "get (miss)": 0.9, "set": 0.9, "get_many (100)": 0.5,
           "set_many (100)": 0.5}


def print_targets(results: dict) -> bool:
    ok = True
    print("\nFastCache / django-redis (pickle), target in brackets:")
    for value_name in VALUES:
        cells = []
        for op, target in TARGETS.items():
            ratio = (results[(value_name, op, "FastCache")]
                     / results[(value_name, op, "django-redis")])
            met = ratio <= target
            ok &= met
            cells.append(f"{op} {ratio:.2f} (<={target}){'' if met else ' MISSED'}")
        print(f"  {value_name:6} " + ", ".join(cells))
    return ok


class LocalRedis:
    """A throwaway redis-server on a free port, no persistence; stopped by pid."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            sys.exit("redis-server not found on PATH (make redis-server installs it); "
                     "or pass --redis URL, or --no-redis")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="fastcache-bench-")
        self.args = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                     "--appendonly", "no", "--dir", self.dir]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, cwd=self.dir)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def redis_down(url: str, server: LocalRedis, calls: int = 20_000) -> tuple[float, float, dict]:
    """p50 and p99 (seconds) of FastCache.get while the server is stopped, breaker open."""
    from django_fastcache.cache import FastCache

    cache = FastCache(url, {"KEY_PREFIX": "down"})
    cache.set("k", 1)
    # The outage is on purpose: its warning lines would only clutter the table.
    logging.getLogger("django_fastcache").setLevel(logging.CRITICAL)
    server.stop()
    while cache.breaker.state == "closed":  # the first few calls fail and open it
        cache.get("k")
    samples = []
    perf = time.perf_counter
    for _ in range(calls):
        t = perf()
        cache.get("k")
        samples.append(perf() - t)
    samples.sort()
    return samples[len(samples) // 2], samples[int(len(samples) * 0.99)], cache.stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--redis", metavar="URL", help="use this Redis (its database is "
                       "flushed) instead of starting one; no 'Redis down' row then")
    where.add_argument("--no-redis", action="store_true", help="the L1 table only")
    args = parser.parse_args()
    budget = 0.02 if args.quick else 0.2
    setup_django()

    versions = ", ".join(f"{p} {version(p)}" for p in
                         ("django-fastcache", "redis", "hiredis", "django-redis", "msgpack"))
    print(f"Python {platform.python_version()}, Django {django.get_version()}, {versions}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs")

    print("\nEmbedded default (in-process) against LocMemCache")
    made = {name: factory() for name, factory in backends().items()}
    print_table(run_table(made, budget), list(made))
    if args.no_redis:
        return

    server = None if args.redis else LocalRedis()
    try:
        if server is not None:
            server.start()
        url = args.redis or server.url
        import redis

        redis.Redis.from_url(url).flushdb()
        print(f"\nRedis (one round trip each; redis-server {_server_version(url)} at {url})")
        made = {name: factory() for name, factory in redis_backends(url).items()}
        results = run_table(made, budget, many=True)
        print_table(results, list(made), unit=1000.0, unit_name="us")
        print_targets(results)
        if server is not None:
            p50, p99, stats = redis_down(url, server)
            print(f"\nRedis down (server stopped, breaker {stats['breaker_state']}): "
                  f"FastCache.get p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us "
                  f"(target p99 < 1000 us: {'met' if p99 < 1e-3 else 'MISSED'}); "
                  f"{stats['short_circuited']} calls short-circuited")
    finally:
        if server is not None:
            server.close()


def _server_version(url: str) -> str:
    import redis

    return redis.Redis.from_url(url).info("server")["redis_version"]


if __name__ == "__main__":
    main()
