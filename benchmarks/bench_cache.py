"""Cache backend benchmark: FastCache against the alternatives, in one run, same values.

    python benchmarks/bench_cache.py [--quick] [--redis URL | --no-redis]

Two tables: the embedded default (FastCache's L1) against LocMemCache; then FastCache on
Redis against django-redis (pickle and msgpack serializers) and Django's own RedisCache,
all on one redis-server (started here on a free port unless ``--redis`` names one), plus
FastCache's per-call latency while that server is stopped (the circuit breaker open).
Then the coherent L1 in front of that Redis: a hot-key read against django-redis and the
embedded L1, and a Zipf(0.99) read/write mix over 100,000 keys (1% writes) from 4
processes, FastCache against django-redis (throughput, hit ratio), interleaved and repeated;
each worker runs the mix untimed first, as a site's worker has served before it is
measured (a forked worker's L1 starts empty).
Then django-redis's hash, set and sorted-set commands, FastCache against django-redis
(``--structures``: that table alone). Prints ns/op (best of several repeats) per operation
and value, and each alternative's time as a multiple of FastCache's (">1x" means FastCache
is faster). Methods are called on the backend instance, not through
``django.core.cache.cache`` (a proxy whose per-call lookup costs microseconds), as a hot
loop in an application should.
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
        # The Redis-tier figures are about the round trip: the L1 is off here (see below).
        "FastCache": lambda: FastCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "fc",
                                             "OPTIONS": {"L1": False}}),
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


def structure_operations(cache) -> dict[str, Callable[[], object]]:
    """django-redis's hash, set and sorted-set commands: one round trip each."""
    member = (7, "x" * 40)  # set members must be hashable once decoded
    members = [f"m{i}" for i in range(10)]
    cache.delete_many(["h", "s", "z"])
    cache.hset("h", mapping={f"f{i}": i for i in range(10)})
    cache.sadd("s", *members)
    cache.zadd("z", {m: i for i, m in enumerate(members)})
    return {
        "hset": lambda: cache.hset("h", "f0", member),
        "hexists": lambda: cache.hexists("h", "f1"),
        "hkeys (10)": lambda: cache.hkeys("h"),
        "sadd": lambda: cache.sadd("s", member),
        "sismember": lambda: cache.sismember("s", "m3"),
        "smembers (10)": lambda: cache.smembers("s"),
        "scard": lambda: cache.scard("s"),
        "zadd": lambda: cache.zadd("z", {"m3": 3}),
        "zincrby": lambda: cache.zincrby("z", 1, "m4"),
        "zscore": lambda: cache.zscore("z", "m5"),
        "zrange (10)": lambda: cache.zrange("z", 0, -1, withscores=True),
    }


def run_structures(url: str, budget: float) -> None:
    from django_fastcache.cache import FastCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    made = {
        "FastCache": FastCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "sfc"}),
        "django-redis": DjangoRedisCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "sdr"}),
    }
    ops = {name: structure_operations(cache) for name, cache in made.items()}
    results: dict[tuple[str, str, str], float] = {}
    # Interleaved rounds, best of each: a busy machine slows one backend's run, not its row.
    for _ in range(5):
        for op in ops["FastCache"]:
            for name in made:
                t = measure(ops[name][op], budget / 5)
                results[("struct", op, name)] = min(results.get(("struct", op, name), t), t)
    print("\nHash, set and sorted-set commands (one round trip each; FastCache with its L1 on)")
    print_table(results, list(made), unit=1000.0, unit_name="us")
    # The client's own CPU per call (time.process_time: this process only), which a busy
    # machine inflates far less than wall time: what each library adds to the round trip.
    cpu: dict[tuple[str, str, str], float] = {}
    calls = max(200, int(20_000 * budget))
    for _ in range(5):
        for op in ops["FastCache"]:
            for name in made:
                fn = ops[name][op]
                start = time.process_time()
                for _ in range(calls):
                    fn()
                t = (time.process_time() - start) / calls * 1e9
                cpu[("struct", op, name)] = min(cpu.get(("struct", op, name), t), t)
    print("\nThe same, client CPU time per call (this process only)")
    print_table(cpu, list(made), unit=1000.0, unit_name="us")


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


def hot_key(url: str, budget: float, rounds: int = 3) -> None:
    """One key read over and over: FastCache with its coherent L1 on Redis, django-redis on
    the same Redis, and FastCache's embedded L1; rounds interleaved, best of each kept."""
    from django_fastcache.cache import FastCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    value = VALUES["dict"]
    made = {
        "FastCache L1+Redis": FastCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "hot"}),
        "django-redis": DjangoRedisCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "hotdr"}),
        "FastCache embedded": FastCache("bench-hot", {"TIMEOUT": 3600}),
    }
    for cache in made.values():
        cache.set("hot", value)
    coherent = made["FastCache L1+Redis"]
    deadline = time.monotonic() + 10
    while coherent.stats()["l1_listener"] != "up" and time.monotonic() < deadline:
        coherent.get("hot")
        time.sleep(0.01)
    time.sleep(0.05)  # this process's own write comes back as an invalidation: let it pass
    best: dict[str, float] = {}
    for _ in range(rounds):
        for name, cache in made.items():
            t = measure(lambda c=cache: c.get("hot"), budget)
            best[name] = min(best.get(name, t), t)
    base = best["FastCache L1+Redis"]
    print(f"\nHot key, get of a 5-field dict (best of {rounds} interleaved rounds x 5 repeats)")
    for name, t in best.items():
        print(f"  {name:20} {t:9.0f} ns  {t / base:8.2f}x FastCache L1+Redis")
    faster = best["django-redis"] / base
    within = base / best["FastCache embedded"]
    stats = coherent.stats()
    print(f"  targets: >= 100x faster than django-redis: {faster:.0f}x "
          f"({'met' if faster >= 100 else 'MISSED'}); within 2x of the embedded L1: "
          f"{within:.2f}x ({'met' if within <= 2 else 'MISSED'}); "
          f"L1 hit ratio {stats['l1_hit_ratio']:.4f}, listener {stats['l1_listener']}")


ZIPF_KEYS = 100_000
ZIPF_WARMUP = 3.0  # seconds each worker runs the mix, untimed, before it is measured


def _zipf_cdf(n: int, s: float) -> list[float]:
    total, acc = 0.0, []
    for rank in range(1, n + 1):
        total += 1.0 / rank ** s
        acc.append(total)
    return [a / total for a in acc]


def _zipf_worker(factory_name: str, url: str, seconds: float, seed: int, queue) -> None:
    import bisect
    import random

    cache = _zipf_factories(url)[factory_name]()
    cdf = _zipf_cdf(ZIPF_KEYS, 0.99)
    rng = random.Random(seed)
    rand, find = rng.random, bisect.bisect_left
    keys = [f"z:{i}" for i in range(ZIPF_KEYS)]
    value = VALUES["dict"]

    def run(seconds: float) -> tuple[int, int]:
        ops = hits = 0
        end = time.perf_counter() + seconds
        while True:
            for _ in range(200):
                key = keys[find(cdf, rand())]
                if rand() < 0.01:
                    cache.set(key, value)
                elif cache.get(key) is not None:
                    hits += 1
                ops += 1
            if time.perf_counter() >= end:
                return ops, hits

    # A worker of a running site has served for a while: a forked worker's L1 starts
    # empty (it never inherits its parent's copies), so it warms up first, untimed.
    run(ZIPF_WARMUP)
    before = cache.stats() if hasattr(cache, "stats") else {}
    ops, hits = run(seconds)
    stats = cache.stats() if hasattr(cache, "stats") else {}
    queue.put((ops, hits, stats.get("l1_hits", 0) - before.get("l1_hits", 0),
               stats.get("l1_misses", 0) - before.get("l1_misses", 0)))


def _zipf_factories(url: str) -> dict[str, Callable[[], object]]:
    from django_fastcache.cache import FastCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    return {
        "FastCache L1+Redis": lambda: FastCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "zf"}),
        "django-redis": lambda: DjangoRedisCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "zd"}),
    }


def zipf_mix(url: str, seconds: float, processes: int = 4, rounds: int = 2,
             ) -> dict[str, list[float]]:
    """Prints the mix's table; returns each backend's throughput (ops/s) per round."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for factory in _zipf_factories(url).values():
        cache = factory()
        keys = [f"z:{i}" for i in range(ZIPF_KEYS)]
        for i in range(0, ZIPF_KEYS, 1000):
            cache.set_many({k: VALUES["dict"] for k in keys[i:i + 1000]})
    print(f"\nZipf(0.99) over {ZIPF_KEYS:,} keys, 1% writes, {processes} processes x "
          f"{seconds:g} s after {ZIPF_WARMUP:g} s of warm-up each, {rounds} interleaved rounds")
    print(f"  {'backend':20} {'round':>5} {'ops/s':>12} {'found':>7} {'L1 hit ratio':>13}")
    totals: dict[str, list[float]] = {}
    for r in range(rounds):
        for name in _zipf_factories(url):
            queue = ctx.Queue()
            procs = [ctx.Process(target=_zipf_worker, args=(name, url, seconds, r * 100 + i, queue))
                     for i in range(processes)]
            for p in procs:
                p.start()
            results = [queue.get(timeout=seconds + 120) for _ in procs]
            for p in procs:
                p.join()
            ops = sum(x[0] for x in results)
            found = sum(x[1] for x in results) / max(1, sum(x[0] for x in results))
            l1h, l1m = sum(x[2] for x in results), sum(x[3] for x in results)
            ratio = f"{l1h / (l1h + l1m):.4f}" if l1h + l1m else "-"
            totals.setdefault(name, []).append(ops / seconds)
            print(f"  {name:20} {r + 1:>5} {ops / seconds:12,.0f} {found:7.3f} {ratio:>13}")
    fc, dr = max(totals["FastCache L1+Redis"]), max(totals["django-redis"])
    print(f"  best throughput: FastCache L1+Redis {fc:,.0f} ops/s, django-redis {dr:,.0f} "
          f"ops/s: {fc / dr:.1f}x")
    return totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--redis", metavar="URL", help="use this Redis (its database is "
                       "flushed) instead of starting one; no 'Redis down' row then")
    where.add_argument("--no-redis", action="store_true", help="the L1 table only")
    parser.add_argument("--structures", action="store_true",
                        help="only the hash/set/sorted-set table (needs Redis)")
    args = parser.parse_args()
    budget = 0.02 if args.quick else 0.2
    setup_django()

    versions = ", ".join(f"{p} {version(p)}" for p in
                         ("django-fastcache", "redis", "hiredis", "django-redis", "msgpack"))
    print(f"Python {platform.python_version()}, Django {django.get_version()}, {versions}, "
          f"{platform.machine()}, {os.cpu_count()} CPUs")

    if not args.structures:
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
        if args.structures:
            run_structures(url, budget)
            return
        print(f"\nRedis (one round trip each; redis-server {_server_version(url)} at {url})")
        made = {name: factory() for name, factory in redis_backends(url).items()}
        results = run_table(made, budget, many=True)
        print_table(results, list(made), unit=1000.0, unit_name="us")
        print_targets(results)
        hot_key(url, budget)
        zipf_mix(url, 1.0 if args.quick else 3.0)
        run_structures(url, budget)
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
