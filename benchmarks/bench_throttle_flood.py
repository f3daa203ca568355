"""The in-process throttle table under a flood of spoofed identities (issue 11 item 2).

Run ``python benchmarks/bench_throttle_flood.py [identities]`` (default 1,000,000). It
sends that many checks, each with a new 8 KB identity (what a client rotating
``X-Forwarded-For`` under ``NUM_PROXIES=None`` produces) at the default rate "1000/day",
into a table of the default size (64 MiB, 16 shards), then prints:

- the table's accounted bytes and keys, and the growth of the process's resident memory;
- the decisions for 200 new clients and for a client that had reached its limit before
  the flood;
- the cost of one check on the full table: a new key whose insertion drops state, a
  repeat client, and new keys while the table's keys expire at staggered times (the case
  that made the old table sweep a shard on every check), and a repeat client on an empty
  table.

Times are CPU time (the machine may be shared), the median of 5 runs of a loop, per
check, through the throttles' builtin.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

import django
from django.conf import settings

settings.configure()
django.setup()

from django_fastcache import _core, limiter  # noqa: E402

S = 1_000_000
PAD = "x" * 8192


def rss_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def per_check_ns(fn, n: int) -> float:
    runs = []
    for _ in range(5):
        start = time.process_time()
        fn(n)
        runs.append((time.process_time() - start) / n * 1e9)
    return statistics.median(runs)


def main() -> None:
    identities = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    table = _core.Limiter(64 << 20, 16)
    check = table.checker(limiter.Decision, "local")
    policy = limiter.make_policy("1000/day", name="anon")
    victim = limiter.make_policy("3/day", name="strict")
    now = 1_700_000_000.0
    for _ in range(4):
        check("throttle_strict_198.51.100.7", victim, 1, now)

    before = rss_bytes()
    start = time.process_time()
    for i in range(identities):
        check(f"throttle_anon_{i}," + PAD, policy, 1, now + i * 1e-3)
    flood_s = time.process_time() - start
    now += identities * 1e-3
    grown = rss_bytes() - before
    stats = table.stats()
    new_allowed = sum(check(f"throttle_anon_192.0.2.{c}", policy, 1, now).allowed
                      for c in range(200))
    victim_allowed = check("throttle_strict_198.51.100.7", victim, 1, now).allowed

    print(f"python {sys.version.split()[0]}")
    print(f"flood: {identities:,} identities of 8 KB, {flood_s / identities * 1e6:.2f} us "
          "per check (8 KB digest included)")
    count = {name: f"{stats[name]:,}" if name in stats else "-"
             for name in ("pinned_keys", "dropped_live", "untracked")}
    print(f"table: {stats['bytes'] / 2**20:.1f} MiB accounted, {stats['keys']:,} keys, "
          f"{count['pinned_keys']} pinned; dropped live {count['dropped_live']}, "
          f"untracked {count['untracked']}; process RSS grew {grown / 2**20:.1f} MiB")
    print(f"after the flood: {new_allowed} of 200 new clients allowed; the client at its "
          f"limit is {'allowed' if victim_allowed else 'denied'}")

    counter = [0]

    def new_keys(n):
        base = counter[0]
        counter[0] += n
        for i in range(base, base + n):
            check(f"throttle_anon_203.0.{i >> 8 & 255}.{i & 255}/{i}", policy, 1, now)

    def repeat(n):
        for _ in range(n):
            check("throttle_anon_192.0.2.1", policy, 1, now)

    print(f"full table, new key (drops state): {per_check_ns(new_keys, 20000):,.0f} ns/check")
    print(f"full table, repeat client:         {per_check_ns(repeat, 20000):,.0f} ns/check")

    # Keys expiring at staggered times: "1/min" keys arriving every 0.1 ms, so the table
    # is full long before the first expires, and from then on one expires per check.
    stagger = _core.Limiter(64 << 20, 16)
    scheck = stagger.checker(limiter.Decision, "local")
    per_minute = limiter.make_policy("1/min", name="anon")
    t = [now]
    keys = [0]

    def staggered(n):
        for _ in range(n):
            t[0] += 1e-4
            keys[0] += 1
            scheck(f"throttle_anon_{keys[0]}", per_minute, 1, t[0])

    while t[0] < now + 70:  # past the first expiries
        staggered(50_000)
    print(f"full table, staggered expiry:      {per_check_ns(staggered, 20000):,.0f} ns/check "
          f"({stagger.stats()['keys']:,} keys)")
    cold = _core.Limiter(64 << 20, 16).checker(limiter.Decision, "local")
    print(f"empty table, repeat client:        "
          f"{per_check_ns(lambda n: [cold('k', policy, 1, now) for _ in range(n)], 20000):,.0f} "
          "ns/check")


if __name__ == "__main__":
    main()
