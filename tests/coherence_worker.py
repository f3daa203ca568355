"""One worker process of the coherence tests (tests/test_coherence.py): a FastCache with the
L1 on in front of Redis, reading and writing versioned values and recording what it did
and saw, with times from the system-wide monotonic clock, as JSON for the test to check.

    python coherence_worker.py CONFIG_JSON

``mode`` "pulse": versions 1..pulses of one key are written in turn by worker v % workers,
each once its writer has seen the version before; every worker records when it first saw
each version. ``mode`` "history": each worker writes its own keys with increasing versions
(while no ``pause`` file exists) and reads every key, until a ``stop`` file appears.
``mode`` "writer": sets ``key`` to 1, 2, 3, ... every ``interval`` seconds until ``stop``,
recording when each write completed. ``mode`` "readers": ``threads`` threads read it in
CPU-bound loops (no sleep, no I/O but the cache's own) until ``stop``; each records, per run
of equal values it read, (value, start of the run's first read, start of its last read),
and a shared high-water mark counts backwards reads: a read that returned less than a read
which had completed (and raised the mark) before it began. benchmarks/bench_coherence.py
runs these two modes as well.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time

import django
from django.conf import settings

cfg = json.loads(sys.argv[1])
settings.configure(
    SECRET_KEY="django-fastcache-tests-not-secret",
    CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache",
                        "LOCATION": cfg["location"], "KEY_PREFIX": "coh",
                        "OPTIONS": {"IGNORE_EXCEPTIONS": False, **cfg.get("options", {})}}},
)
django.setup()

from django.core.cache import caches  # noqa: E402

cache = caches["default"]
me, workers = cfg["id"], cfg["workers"]
now = time.monotonic
out: dict = {"id": me, "reads": [], "writes": [], "seen": {}, "write_end": {}}


def pulse() -> None:
    seen: dict[int, float] = {}
    latest = 0
    deadline = now() + cfg["duration"]
    while latest < cfg["pulses"] and now() < deadline:
        value = cache.get("pulse")
        t = now()
        if isinstance(value, int) and value > latest:
            for v in range(latest + 1, value + 1):
                seen[v] = t
            latest = value
        nxt = latest + 1
        if nxt <= cfg["pulses"] and nxt % workers == me:
            time.sleep(0.002)  # let the others settle on the version before
            cache.set("pulse", nxt, 60)
            out["write_end"][nxt] = now()
            seen[nxt] = now()
            latest = nxt
        # A request handler does I/O between cache reads, which lets the listener thread
        # take the GIL; a loop of pure L1 hits would hold it for the whole switch interval.
        time.sleep(0)
    out["seen"] = seen


def history() -> None:
    own = [f"own:{me}:{j}" for j in range(cfg["keys_per_worker"])]
    every = [f"own:{w}:{j}" for w in range(workers) for j in range(cfg["keys_per_worker"])]
    every += cfg.get("extra_keys", [])
    stop, pause = os.path.join(cfg["dir"], "stop"), os.path.join(cfg["dir"], "pause")
    rng = random.Random(me)
    n = 0
    paused = False
    cache.get(every[0])
    deadline = now() + 30
    while cache.stats().get("l1_listener") != "up" and now() < deadline:
        time.sleep(0.005)
    open(os.path.join(cfg["dir"], f"ready{me}"), "w").close()
    while True:
        n += 1
        if n % 50 == 0:
            if os.path.exists(stop):
                break
            paused = os.path.exists(pause)
        if not paused and rng.random() < 0.2:
            key = rng.choice(own)
            version = time.monotonic_ns()
            t0 = now()
            try:
                cache.set(key, version, 60)
            except Exception:
                continue  # outcome unknown: not a completed write
            out["writes"].append([key, version, t0, now()])
        else:
            key = rng.choice(every)
            t0 = now()
            try:
                value = cache.get(key)
            except Exception:
                continue
            out["reads"].append([key, value if isinstance(value, int) else None, t0, now()])
        if n % 8 == 0:
            time.sleep(0)


def writer() -> None:
    stop = os.path.join(cfg["dir"], "stop")
    key = cfg["key"]
    cache.set(key, 0, 3600)
    open(os.path.join(cfg["dir"], f"ready{me}"), "w").close()
    version = 0
    ends = []
    while not os.path.exists(stop):
        version += 1
        cache.set(key, version, 3600)
        ends.append(now())
        time.sleep(cfg["interval"])
    out["write_end"] = ends  # ends[v - 1]: when version v's write returned


def readers() -> None:
    stop = os.path.join(cfg["dir"], "stop")
    key = cfg["key"]
    cache.get(key)
    deadline = now() + 30
    while cache.stats().get("l1_listener") != "up" and now() < deadline:
        time.sleep(0.005)
    high = [0]  # the largest value any completed read returned
    backwards = [0]
    runs: list[list] = [[] for _ in range(cfg["threads"])]
    counts = [0] * cfg["threads"]
    get = cache.get
    started = threading.Barrier(cfg["threads"] + 1)

    def loop(i: int) -> None:
        mine = runs[i]
        last = None
        n = 0
        started.wait()
        while True:
            n += 1
            if n % 2048 == 0 and os.path.exists(stop):
                break
            mark = high[0]
            t0 = now()
            value = get(key)
            if not isinstance(value, int):
                continue
            if value < mark:
                backwards[0] += 1
            if value > high[0]:
                high[0] = value
            if value != last:
                mine.append([value, t0, t0])
                last = value
            else:
                mine[-1][2] = t0
            sum(range(20))  # the application's own work between cache reads
        counts[i] = n

    threads = [threading.Thread(target=loop, args=(i,)) for i in range(cfg["threads"])]
    for t in threads:
        t.start()
    started.wait()
    open(os.path.join(cfg["dir"], f"ready{me}"), "w").close()
    for t in threads:
        t.join()
    out["runs"] = runs
    out["backwards"] = backwards[0]
    out["reads"] = sum(counts)


try:
    {"pulse": pulse, "history": history, "writer": writer, "readers": readers}[cfg["mode"]]()
finally:
    stats = cache.stats()
    out["stats"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    with open(os.path.join(cfg["dir"], f"worker{me}.json"), "w") as f:
        json.dump(out, f)
