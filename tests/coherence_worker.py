"""One worker process of the coherence tests (tests/test_coherence.py): a FastCache with the
L1 on in front of Redis, reading and writing versioned values and recording what it did
and saw, with times from the system-wide monotonic clock, as JSON for the test to check.

    python coherence_worker.py CONFIG_JSON

``mode`` "pulse": versions 1..pulses of one key are written in turn by worker v % workers,
each once its writer has seen the version before; every worker records when it first saw
each version. ``mode`` "history": each worker writes its own keys with increasing versions
(while no ``pause`` file exists) and reads every key, until a ``stop`` file appears.
"""

from __future__ import annotations

import json
import os
import random
import sys
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


try:
    pulse() if cfg["mode"] == "pulse" else history()
finally:
    stats = cache.stats()
    out["stats"] = {k: v for k, v in stats.items() if isinstance(v, (int, float, str))}
    with open(os.path.join(cfg["dir"], f"worker{me}.json"), "w") as f:
        json.dump(out, f)
