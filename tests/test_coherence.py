"""The coherent L1 in front of Redis, across real processes: how soon a write in one
process is visible in the others, and that no process ever returns a value older than the
bound after raw writes, expiry, FLUSHDB, a killed listener, a Redis restart, a Sentinel
failover and on a cluster (checked over the recorded histories); then, in this process,
the race between a fill and an invalidation, fork safety, options and stats."""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import pytest
from django.core.exceptions import ImproperlyConfigured
from django_fastcache.cache import FastCache
from redis_servers import RedisSentinelSet, RedisServer, require_binary, wait_until

pytestmark = pytest.mark.redis

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "coherence_worker.py")
# Staleness a process may show after a change completed elsewhere. Invalidations take
# well under a millisecond on loopback (see the printed delays); the bound is generous
# for a 2-core machine shared with compilers, and for a hung-server health check.
BOUND = 1.0


def run_workers(location, n: int, mode: str, *, options=None, during=None, **cfg) -> list[dict]:
    """Runs ``n`` workers; ``during(dir)`` runs in this process meanwhile (history mode:
    the workers stop when it returns). Returns each worker's record."""
    with tempfile.TemporaryDirectory(prefix="fastcache-coh-") as tmp:
        procs = []
        for i in range(n):
            conf = {"location": location, "options": options or {}, "id": i, "workers": n,
                    "mode": mode, "dir": tmp, **cfg}
            procs.append(subprocess.Popen([sys.executable, WORKER, json.dumps(conf)],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
        try:
            if during is not None:
                time.sleep(1.0)  # workers start (Django, the listener) and warm up
                during(tmp)
                open(os.path.join(tmp, "stop"), "w").close()
            for p in procs:
                _, err = p.communicate(timeout=60)
                assert p.returncode == 0, err
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        records = []
        for i in range(n):
            with open(os.path.join(tmp, f"worker{i}.json")) as f:
                records.append(json.load(f))
        return records


def check_history(records: list[dict], *, flushes=(), expiring=None) -> dict:
    """Linearizability-style check over versioned values. Per key, versions increase with
    real time (one writer per key). A read of version v that started at t is stale if a
    write of a larger version of that key completed before t - BOUND; or if a flush
    (start, end) began after v's write completed and the read started after end + BOUND;
    or if it read ``expiring`` = (key, expires_at) after expires_at + BOUND."""
    writes: dict[str, list] = {}
    ends: dict[tuple[str, int], float] = {}
    for r in records:
        for key, version, _t0, t1 in r["writes"]:
            writes.setdefault(key, []).append((t1, version))
            ends[(key, version)] = t1
    for w in writes.values():
        w.sort()
    stale = []
    reads = 0
    for r in records:
        for key, version, t0, _t1 in r["reads"]:
            reads += 1
            if version is None:
                if expiring is None or key != expiring[0]:
                    continue
            if expiring is not None and key == expiring[0]:
                if version is not None and t0 > expiring[1] + BOUND:
                    stale.append(("expired", r["id"], key, version, t0))
                continue
            newest_done = max((v for t1, v in writes.get(key, []) if t1 < t0 - BOUND),
                              default=None)
            if newest_done is not None and version < newest_done:
                stale.append(("overwritten", r["id"], key, version, newest_done, t0))
            written = ends.get((key, version))
            for start, end in flushes:
                if written is not None and written < start and t0 > end + BOUND:
                    stale.append(("flushed", r["id"], key, version, t0))
    assert reads > 1000, f"too few reads to say anything ({reads})"
    assert not stale, f"{len(stale)} stale reads, e.g. {stale[:5]}"
    return {"reads": reads, "writes": sum(len(w) for w in writes.values())}


def l1_stats(records: list[dict]) -> dict:
    keys = ("l1_hits", "l1_misses", "l1_listener_downs", "l1_invalidated_keys", "l1_flushes",
            "l1_fills_refused")
    return {k: sum(r["stats"].get(k, 0) for r in records) for k in keys}


@pytest.fixture
def server():
    with RedisServer() as srv:
        yield srv


# ---------------------------------------------------------------------- write to visibility

@pytest.mark.parametrize("workers", [2, 4])
def test_a_write_in_one_process_is_visible_in_every_other_within_the_bound(server, workers):
    records = run_workers(server.url, workers, "pulse", pulses=150, duration=40)
    write_end = {}
    for r in records:
        write_end.update({int(v): t for v, t in r["write_end"].items()})
    assert len(write_end) == 150, "the chain of writes stalled"
    delays = []
    for r in records:
        for v, t in r["seen"].items():
            v = int(v)
            if v in r["write_end"] or str(v) in r["write_end"]:
                continue  # its own write
            delays.append(max(0.0, t - write_end[v]))
    delays.sort()
    p50 = statistics.median(delays)
    p99 = delays[int(len(delays) * 0.99)]
    print(f"\n{workers} processes, {len(delays)} write->visible delays: p50 {p50 * 1e3:.3f} ms, "
          f"p99 {p99 * 1e3:.3f} ms, max {delays[-1] * 1e3:.3f} ms; {l1_stats(records)}")
    assert delays[-1] < BOUND
    assert l1_stats(records)["l1_hits"] > 0  # the readers were served from their L1


# ---------------------------------------------------------------------- histories under faults

def test_no_stale_reads_through_raw_writes_expiry_flush_listener_kill_and_restart(server):
    redis_cli = require_binary("redis-cli")
    raw = server.client()
    events = {}

    def faults(tmp):
        cli = [redis_cli, "-p", str(server.port)]
        # A raw redis-cli SET, of a key the workers read (plain ints read back as ints).
        for v in (1, 2, 3):
            subprocess.run(cli + ["SET", "coh:1:raw", str(time.monotonic_ns())], check=True,
                           capture_output=True)
            time.sleep(0.2)
        # A key expiring in Redis while the workers hold it in their L1.
        raw.set("coh:1:exp", 7, px=300)
        events["expiring"] = ("exp", time.monotonic() + 0.3)
        time.sleep(0.6)
        t0 = time.monotonic()
        subprocess.run(cli + ["FLUSHDB"], check=True, capture_output=True)
        events.setdefault("flushes", []).append((t0, time.monotonic()))
        time.sleep(0.4)
        killed = raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        events["killed"] = killed
        time.sleep(0.5)
        t0 = time.monotonic()
        server.restart()  # no persistence: the data is gone, as after a flush
        events["flushes"].append((t0, time.monotonic()))
        time.sleep(1.0)

    try:
        records = run_workers(server.url, 3, "history", keys_per_worker=4,
                              extra_keys=["raw", "exp"], during=faults)
    finally:
        raw.close()
    result = check_history(records, flushes=events["flushes"], expiring=events["expiring"])
    stats = l1_stats(records)
    print(f"\nsingle node, faults: {result}, {stats}, listeners killed: {events['killed']}")
    assert events["killed"] == 3
    assert stats["l1_listener_downs"] >= 6  # the kill and the restart, in every worker
    assert stats["l1_hits"] > 0 and stats["l1_flushes"] >= 3


def test_no_stale_reads_across_a_sentinel_failover():
    with RedisSentinelSet() as sset:
        events = {}

        def failover(tmp):
            time.sleep(1.0)
            pause = os.path.join(tmp, "pause")
            open(pause, "w").close()  # no write may be lost with the old primary
            time.sleep(0.2)
            sset.primary.command("WAIT", 1, 2000)
            events["took"] = sset.kill_primary()
            os.unlink(pause)
            events["resumed"] = time.monotonic()
            time.sleep(1.5)

        records = run_workers("redis:///0", 2, "history", keys_per_worker=4,
                              options=sset.options(), during=failover)
    result = check_history(records)
    stats = l1_stats(records)
    print(f"\nsentinel failover ({events['took']:.1f} s): {result}, {stats}")
    assert stats["l1_listener_downs"] >= 2 and stats["l1_hits"] > 0
    writes_after = [w for r in records for w in r["writes"] if w[2] > events["resumed"]]
    assert writes_after, "no writes after the failover: nothing was checked there"


def test_no_stale_reads_on_a_cluster_with_keys_on_every_master(redis_cluster):
    from django_fastcache.redis_client import key_slot

    redis_cluster.flush()
    masters = redis_cluster.masters()
    slots = redis_cluster.nodes[0].command("CLUSTER", "SLOTS")
    by_master: dict = {}
    for w in range(2):
        for j in range(8):
            k = f"coh:1:own:{w}:{j}"
            by_master.setdefault(_master_of(slots, key_slot(k)), []).append(k)
    assert len(by_master) == len(masters), f"keys do not cover every master: {by_master}"

    def kill_listeners(tmp):
        time.sleep(0.8)
        for node in masters:
            node.command("CLIENT", "KILL", "TYPE", "pubsub")
        time.sleep(1.2)

    records = run_workers(redis_cluster.url, 2, "history", keys_per_worker=8,
                          during=kill_listeners)
    result = check_history(records)
    stats = l1_stats(records)
    print(f"\ncluster: {result}, {stats}")
    assert stats["l1_listener_downs"] >= 2 and stats["l1_hits"] > 0


def _master_of(slots, slot: int) -> tuple:
    """The primary serving ``slot`` in a CLUSTER SLOTS reply (raw or as redis-py parses it)."""
    if isinstance(slots, dict):
        for (start, end), info in slots.items():
            if start <= slot <= end:
                return tuple(info["primary"])
    else:
        for entry in slots:
            if entry[0] <= slot <= entry[1]:
                return (entry[2][0], entry[2][1])
    raise AssertionError(f"slot {slot} is not served")
