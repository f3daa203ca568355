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

Then the Zipf(0.99) read/write mix from 4 processes against django-redis (the one of
``bench_cache.py``, imported from there), and a hung Redis: the server is stopped
(SIGSTOP) while 8 threads call ``get`` in loops, on FastCache and then on django-redis,
both with a 1 s socket timeout and errors served as misses. Reported per backend: the time
threads spent blocked in calls that waited on the server (per process, per thread), how
fast calls are answered once the first timeouts have passed (one thread, server still
stopped: FastCache's circuit breaker), and how soon a read returns a value after the
server resumes. Skipped with ``--redis`` (the server is not ours to stop).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
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
# The Zipf mix's throughput against django-redis when issue 10 was filed: keep or beat.
TARGET_ZIPF = 3.4
HUNG_THREADS = 8
SOCKET_TIMEOUT = 1.0
# A call that took this long waited on the server: a breaker answer takes microseconds,
# but with 8 threads on a loaded machine a call may also wait for the GIL for a few
# hundred milliseconds, which is not the server's doing; a socket timeout is 1 s.
BLOCKED = 0.5 * SOCKET_TIMEOUT


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


def hung_redis(url: str, server, seconds: float, threads: int = HUNG_THREADS) -> list[dict]:
    """``threads`` threads call ``get`` of a missing key in loops; ``server`` is stopped
    (SIGSTOP) for ``seconds``; FastCache's run first, then django-redis's, each on a fresh
    stop. See the module docstring for what is returned."""
    import logging
    import threading

    from django_fastcache.cache import FastCache
    from django_redis.cache import RedisCache as DjangoRedisCache

    # The outage is on purpose: its warning lines would only clutter the table.
    logging.getLogger("django_fastcache").setLevel(logging.CRITICAL)
    made = {
        "FastCache L1+Redis": FastCache(url, {"KEY_PREFIX": "hungfc", "OPTIONS": {
            "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT,
            "IGNORE_EXCEPTIONS": True}}),
        "django-redis": DjangoRedisCache(url, {"KEY_PREFIX": "hungdr", "OPTIONS": {
            "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT,
            "IGNORE_EXCEPTIONS": True}}),
    }
    perf = time.perf_counter
    rows = []
    for name, cache in made.items():
        cache.set("present", 1, 3600)
        calls: list[list[tuple[float, float]]] = [[] for _ in range(threads)]
        stop = threading.Event()
        started = threading.Barrier(threads + 1)

        def loop(mine: list, cache=cache, stop=stop, started=started) -> None:
            get = cache.get
            started.wait()
            while not stop.is_set():
                t = perf()
                get("absent")
                mine.append((t, perf() - t))

        pool = [threading.Thread(target=loop, args=(calls[i],)) for i in range(threads)]
        for t in pool:
            t.start()
        started.wait()
        time.sleep(0.3)  # the threads run against a healthy server first
        os.kill(server.proc.pid, signal.SIGSTOP)
        t0 = perf()
        try:
            time.sleep(seconds)
            stop.set()
            for t in pool:
                t.join()
            # How fast a call is answered now, the server still stopped (one thread; at
            # most 100 calls or 2 s: django-redis waits out a socket timeout each time).
            answers = []
            budget = perf() + 2.0
            while len(answers) < 100 and perf() < budget:
                t = perf()
                cache.get("absent")
                answers.append(perf() - t)
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        resumed = perf()
        while cache.get("present") != 1 and perf() - resumed < 30:
            time.sleep(0.001)
        back = perf() - resumed
        during = [[d for t, d in mine if t + d > t0] for mine in calls]
        blocked = [sum(d for d in mine if d >= BLOCKED) for mine in during]
        answers.sort()
        stats = cache.stats() if hasattr(cache, "stats") else {}
        rows.append({
            "backend": name,
            "calls": sum(map(len, during)),
            "blocked_calls": sum(1 for mine in during for d in mine if d >= BLOCKED),
            "blocked": sum(blocked),
            "thread_max": max(blocked),
            "thread_mean": sum(blocked) / threads,
            "answer_p50": answers[len(answers) // 2],
            "answer_p99": answers[min(len(answers) - 1, int(len(answers) * 0.99))],
            "answers": len(answers),
            "back": back,
            "short_circuited": stats.get("short_circuited", "-"),
        })
    return rows


def print_hung(rows: list[dict], seconds: float, threads: int) -> None:
    print(f"\nHung Redis (SIGSTOP for {seconds:g} s), {threads} threads calling get in loops, "
          f"socket timeout {SOCKET_TIMEOUT:g} s, errors served as misses")
    print(f"  {'backend':20} {'calls':>8} {'blocked':>7} {'blocked s':>9} {'per thread s':>13} "
          f"{'answer p50/p99 us':>19} {'back in ms':>10} {'short-circuited':>15}")
    for r in rows:
        per_thread = f"{r['thread_max']:.2f}/{r['thread_mean']:.2f}"
        answer = f"{r['answer_p50'] * 1e6:.0f}/{r['answer_p99'] * 1e6:.0f}"
        print(f"  {r['backend']:20} {r['calls']:>8} {r['blocked_calls']:>7} "
              f"{r['blocked']:>9.2f} {per_thread:>13} {answer:>19} {r['back'] * 1e3:>10.1f} "
              f"{r['short_circuited']!s:>15}")
    fc, dr = rows[0], rows[1]
    print(f"  (blocked: calls that took >= {BLOCKED * 1e3:.0f} ms and their total time, "
          f"thread-seconds, for the process; per thread: max/mean; answer: one thread, "
          f"server still stopped, {fc['answers']} and {dr['answers']} calls)")
    print(f"  django-redis / FastCache: blocked time {dr['blocked'] / fc['blocked']:.1f}x, "
          f"answer p50 {dr['answer_p50'] / fc['answer_p50']:,.0f}x; FastCache blocked "
          f"{fc['blocked'] / SOCKET_TIMEOUT:.1f} socket timeouts in all for {threads} "
          f"threads (the calls in flight when it stopped, then one trial at a time)")
    print(f"  (a django-redis call on the stopped server took {dr['answer_p50']:.1f} s: "
          f"redis-py's default client retries timeouts; FastCache's back-in time is its "
          f"breaker's reset timeout)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    parser.add_argument("--redis", metavar="URL", help="use this Redis instead of starting one")
    args = parser.parse_args()
    seconds = 2.0 if args.quick else 5.0
    sys.path.insert(0, str(HERE))
    from bench_cache import LocalRedis, setup_django

    setup_django()
    versions = ", ".join(f"{p} {version(p)}" for p in
                         ("django-fastcache", "redis", "hiredis", "django-redis"))
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
        from bench_cache import zipf_mix

        totals = zipf_mix(url, 1.0 if args.quick else 3.0)
        ratio = max(totals["FastCache L1+Redis"]) / max(totals["django-redis"])
        print(f"  target: keep or beat {TARGET_ZIPF}x django-redis's throughput: {ratio:.2f}x "
              f"({'met' if ratio >= TARGET_ZIPF else 'MISSED'})")
        if server is not None:
            hang = 2.0 if args.quick else 4.0
            print_hung(hung_redis(url, server, hang), hang, HUNG_THREADS)
    finally:
        if server is not None:
            server.close()


if __name__ == "__main__":
    main()
