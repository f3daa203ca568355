"""Coherence benchmark: how soon a write in one process is visible in another whose
threads are busy, whether reads ever go backwards, and what an L1 hit costs.

    python benchmarks/bench_coherence.py [--quick] [--redis URL]

One redis-server (started here on a free port unless ``--redis`` names one). A writer
process sets key ``m`` to 1, 2, 3, ... every millisecond; a reader process runs 1, 4 or 8
threads that read ``m`` in CPU-bound loops (no sleep, no I/O but the cache's own), so they
compete for the GIL the whole time. Both are tests/coherence_worker.py (modes "writer" and
"readers"), the same worker the coherence tests use. Reported per thread count:

- write -> visible: from the writer's ``set`` returning to the first read in the reader
  process that returned that version or a later one (p50, p99, max over versions);
- stale for: the longest any read went on returning a version after the next version's
  write had returned;
- backwards: reads that returned an older version than a read in the same process that
  had completed before they began (must be 0).

Then the hot-key L1 hit (``get`` of a 5-field dict on FastCache with the coherent L1 on
Redis, best of 5 repeats) next to FastCache's embedded L1 in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKER = HERE.parent / "tests" / "coherence_worker.py"
THREADS = (1, 4, 8)
# Targets from issue 10, checked at 8 reader threads.
TARGET_P99 = 1e-3
TARGET_MAX = 10e-3
TARGET_HIT_NS = 310.0


def run_case(location: str, threads: int, seconds: float, *, interval: float = 0.001,
             options: dict | None = None, timeout: float = 120.0) -> dict:
    """One writer process and one reader process with ``threads`` threads, for ``seconds``;
    returns the figures described in the module docstring (delays in seconds)."""
    with tempfile.TemporaryDirectory(prefix="fastcache-coh-bench-") as tmp:
        # A key of its own: a reader must never see an earlier case's versions.
        base = {"location": location, "options": options or {}, "workers": 2, "dir": tmp,
                "key": f"m-{threads}-{time.monotonic_ns()}"}
        confs = [dict(base, id=0, mode="readers", threads=threads),
                 dict(base, id=1, mode="writer", interval=interval)]
        procs = [subprocess.Popen([sys.executable, str(WORKER), json.dumps(c)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for c in confs]
        try:
            deadline = time.monotonic() + timeout
            ready = [os.path.join(tmp, "ready0"), os.path.join(tmp, "ready1")]
            while not all(map(os.path.exists, ready)):
                if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                    raise RuntimeError("coherence workers did not start: " +
                                       " | ".join(p.stderr.read() if p.poll() is not None
                                                  else "running" for p in procs))
                time.sleep(0.01)
            time.sleep(seconds)
            open(os.path.join(tmp, "stop"), "w").close()
            for p in procs:
                _, err = p.communicate(timeout=timeout)
                if p.returncode != 0:
                    raise RuntimeError(f"coherence worker failed:\n{err}")
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        with open(os.path.join(tmp, "worker0.json")) as f:
            reader = json.load(f)
        with open(os.path.join(tmp, "worker1.json")) as f:
            writer = json.load(f)
    return analyze(reader, writer["write_end"], threads)


def analyze(reader: dict, write_end: list[float], threads: int) -> dict:
    """Visibility delays and staleness from the reader's runs and the writes' end times
    (``write_end[v - 1]``: when version v's write returned, same monotonic clock)."""
    firsts = sorted((t_first, value) for runs in reader["runs"] for value, t_first, _ in runs)
    delays = []
    i = 0
    newest = 0
    for v in range(1, len(write_end) + 1):
        # The first read that returned v or later.
        while i < len(firsts) and newest < v:
            newest = max(newest, firsts[i][1])
            seen_at = firsts[i][0]
            i += 1
        if newest < v:
            break  # never seen before the reader stopped
        delays.append(max(0.0, seen_at - write_end[v - 1]))
        if i == 0:
            break
    stale = 0.0
    for runs in reader["runs"]:
        for value, _t_first, t_last in runs:
            if value < len(write_end) and write_end[value] < t_last:
                stale = max(stale, t_last - write_end[value])
    delays.sort()
    return {
        "threads": threads,
        "reads": reader["reads"],
        "versions": len(write_end),
        "seen": len(delays),
        "p50": statistics.median(delays) if delays else float("nan"),
        "p99": delays[min(len(delays) - 1, int(len(delays) * 0.99))] if delays else float("nan"),
        "max": delays[-1] if delays else float("nan"),
        "stale": stale,
        "backwards": reader["backwards"],
        "l1_hits": reader["stats"].get("l1_hits", 0),
        "l1_misses": reader["stats"].get("l1_misses", 0),
        "listener": reader["stats"].get("l1_listener_kind", "?"),
    }


def print_table(rows: list[dict]) -> None:
    print(f"\n{'threads':>7} {'reads':>10} {'versions':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'max ms':>8} {'stale ms':>9} {'backwards':>9} {'L1 hit %':>8}  listener")
    for r in rows:
        lookups = r["l1_hits"] + r["l1_misses"]
        hit = 100.0 * r["l1_hits"] / lookups if lookups else 0.0
        print(f"{r['threads']:>7} {r['reads']:>10} {r['versions']:>8} {r['p50'] * 1e3:>8.3f} "
              f"{r['p99'] * 1e3:>8.3f} {r['max'] * 1e3:>8.3f} {r['stale'] * 1e3:>9.3f} "
              f"{r['backwards']:>9} {hit:>8.1f}  {r['listener']}")


def hit_cost(url: str, budget: float) -> tuple[float, float]:
    """ns per hot-key hit: FastCache L1 on Redis, and FastCache's embedded L1."""
    from bench_cache import VALUES, measure
    from django_fastcache.cache import FastCache

    value = VALUES["dict"]
    coherent = FastCache(url, {"TIMEOUT": 3600, "KEY_PREFIX": "hotcoh"})
    embedded = FastCache("bench-coherence-hot", {"TIMEOUT": 3600})
    coherent.set("hot", value)
    embedded.set("hot", value)
    deadline = time.monotonic() + 10
    while coherent.stats()["l1_listener"] != "up" and time.monotonic() < deadline:
        coherent.get("hot")
        time.sleep(0.01)
    time.sleep(0.05)  # this process's own write comes back as an invalidation
    coherent.get("hot")
    best_c = best_e = float("inf")
    for _ in range(3):
        best_c = min(best_c, measure(lambda: coherent.get("hot"), budget))
        best_e = min(best_e, measure(lambda: embedded.get("hot"), budget))
    return best_c, best_e


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    sys.path.insert(0, str(HERE))
    from bench_cache import LocalRedis, setup_django

    setup_django()
    versions = ", ".join(f"{p} {version(p)}" for p in ("django-fastcache", "redis", "hiredis"))
    print(f"Python {platform.python_version()}, {versions}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs")
    server = None if args.redis else LocalRedis()
    try:
        if server is not None:
            server.start()
        url = args.redis or server.url
        print(f"\nWrite -> visible across processes, one writer (a version every 1 ms) and a "
              f"reader process whose threads read in CPU-bound loops, {seconds:.0f} s each")
        rows = [run_case(url, n, seconds) for n in THREADS]
        print_table(rows)
        last = rows[-1]
        ok = last["p99"] < TARGET_P99 and last["max"] < TARGET_MAX
        print(f"  targets at {last['threads']} threads: p99 < 1 ms and max < 10 ms: "
              f"{'met' if ok else 'MISSED'}; backwards reads 0: "
              f"{'met' if all(r['backwards'] == 0 for r in rows) else 'MISSED'}")
        coherent, embedded = hit_cost(url, 0.05 if args.quick else 0.2)
        # Absolute times move with the machine's load; the embedded L1 measured in the same
        # run (the same lookup without coherence) is the steadier yardstick.
        print(f"\nHot-key L1 hit (get of a 5-field dict, best of 3 x 5 repeats): "
              f"L1+Redis {coherent:.0f} ns, embedded L1 {embedded:.0f} ns "
              f"({coherent / embedded:.2f}x); target <= ~{TARGET_HIT_NS:.0f} ns: "
              f"{'met' if coherent <= TARGET_HIT_NS * 1.05 else 'MISSED'}; "
              f"no slower than the embedded L1 (within 10%): "
              f"{'met' if coherent <= embedded * 1.1 else 'MISSED'}")
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
