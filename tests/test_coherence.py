"""The coherent L1 in front of Redis, across real processes: how soon a write in one
process is visible in the others, and that no process ever returns a value older than the
bound after raw writes, expiry, FLUSHDB, a killed listener, a Redis restart, a Sentinel
failover and on a cluster (checked over the recorded histories); then, in this process,
the race between a fill and an invalidation, fork safety, options and stats."""

from __future__ import annotations

import asyncio
import importlib.util
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
from test_redis_client import tls_server  # noqa: F401 (a fixture)

pytestmark = pytest.mark.redis

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "coherence_worker.py")
_BENCH = os.path.join(os.path.dirname(HERE), "benchmarks", "bench_coherence.py")
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
                # Workers start (Django, the listener) and warm up; on a loaded machine
                # that can take seconds, and the faults must hit workers that are up.
                ready = [os.path.join(tmp, f"ready{i}") for i in range(n)]
                wait_until(lambda: all(map(os.path.exists, ready)) or
                           any(p.poll() is not None for p in procs), 60, "the workers")
                time.sleep(0.3)
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


# ---------------------------------------------------------------------- busy reader threads

def _bench_coherence():
    """benchmarks/bench_coherence.py: its run_case() drives the writer and reader workers
    and measures what the benchmark reports, so the test checks the same figures."""
    spec = importlib.util.spec_from_file_location("bench_coherence", _BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("threads", [1, 4, 8])
def test_reads_never_go_backwards_with_cpu_bound_reader_threads(server, threads):
    """A writer process sets a key to 1, 2, 3, ...; a reader process runs ``threads``
    threads reading it in CPU-bound loops. No read returns an older version than a read
    that completed before it began, and no version stays visible longer than BOUND after
    the next one was written, although the readers never give the GIL up willingly."""
    row = _bench_coherence().run_case(server.url, threads, 2.0)
    print(f"\n{threads} reader threads: {row['reads']} reads, {row['versions']} versions, "
          f"write->visible p50 {row['p50'] * 1e3:.3f} ms, p99 {row['p99'] * 1e3:.3f} ms, "
          f"max {row['max'] * 1e3:.3f} ms, stale for at most {row['stale'] * 1e3:.3f} ms, "
          f"backwards {row['backwards']}, listener {row['listener']}")
    assert row["reads"] > 10_000 and row["versions"] > 50, row
    assert row["seen"] > row["versions"] // 2, row  # the readers followed the writer
    assert row["backwards"] == 0, row
    assert row["stale"] < BOUND, row
    assert row["max"] < BOUND, row
    assert row["l1_hits"] > row["l1_misses"], row  # served from the L1, not from Redis
    assert row["listener"] == "native"


# ---------------------------------------------------------------------- histories under faults

def test_no_stale_reads_through_raw_writes_expiry_flush_listener_kill_and_restart(server):
    redis_cli = require_binary("redis-cli")
    raw = server.client()
    events = {}

    def faults(tmp):
        cli = [redis_cli, "-p", str(server.port)]
        # A raw redis-cli SET, of a key the workers read (plain ints read back as ints).
        for _ in range(3):
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


# ---------------------------------------------------------------------- in this process

def up_cache(location, **params) -> FastCache:
    cache = FastCache(location, params)
    cache.clear()
    cache.get("__warm__")
    wait_until(lambda: cache.stats()["l1_listener"] == "up", 10, "the listener")
    return cache


def raw_set(cache, raw, key, value, **kwargs) -> None:
    """Writes through another client and waits for this process's listener to hear of it,
    so that no invalidation is still in flight when the test reads."""
    before = cache.stats()["l1_invalidated_keys"]
    raw.set(cache.make_key(key), cache._engine.dumps(value), **kwargs)
    wait_until(lambda: cache.stats()["l1_invalidated_keys"] > before, 5, "the invalidation")


def test_an_invalidation_during_a_fill_never_leaves_the_old_value(clean_redis_server):
    cache = up_cache(clean_redis_server.url, KEY_PREFIX="race")
    raw = clean_redis_server.client()
    tier = cache._tier
    cache.set("k", "old")
    k = cache.make_key("k")
    cache._store.invalidate([k])  # not in the L1: the next get reads Redis
    real = tier.wire.execute_many  # the read's one I/O step
    before = cache.stats()["l1_invalidated_keys"]

    def slow_read(commands, write=True):
        reply = real(commands, write=write)  # the old value, read...
        raw.set(k, cache._engine.dumps("new"))  # ...then overwritten by someone else,
        wait_until(lambda: cache.stats()["l1_invalidated_keys"] > before, 5,
                   "the invalidation")  # whose message arrives before the fill
        return reply

    tier.wire.execute_many = slow_read
    try:
        assert cache.get("k") == "old"  # what Redis held when it was read
    finally:
        tier.wire.execute_many = real
    assert cache._engine.l1_get(k, "absent") == "absent"
    assert cache.get("k") == "new"
    assert cache.stats()["l1_fills_refused"] >= 1
    raw.close()


def _slowed_reads(tier, gate):
    """Makes each read of the tier wait on ``gate`` (a threading.Event) before it is
    sent; returns the list of command batches sent and the undo."""
    real = tier.wire.execute_many
    sent = []

    def slow(commands, write=True):
        sent.append(commands)
        gate.wait(10)
        return real(commands, write=write)

    tier.wire.execute_many = slow
    return sent, lambda: setattr(tier.wire, "execute_many", real)


def test_concurrent_misses_of_one_key_share_one_read(clean_redis_server):
    import threading

    cache = up_cache(clean_redis_server.url, KEY_PREFIX="flight")
    cache.set("k", {"v": 1})
    cache.set("absent-neighbour", 1)
    k = cache.make_key("k")
    cache._store.invalidate([k, cache.make_key("nothing")])
    gate = threading.Event()
    sent, undo = _slowed_reads(cache._tier, gate)
    results: list = []
    try:
        threads = [threading.Thread(target=lambda key=key: results.append((key, cache.get(key))))
                   for key in ["k"] * 8 + ["nothing"] * 4]
        for t in threads:
            t.start()
        wait_until(lambda: len(sent) == 2, 5, "the two leaders' reads")
        time.sleep(0.05)  # the other ten threads are waiting, not reading
        assert len(sent) == 2
        gate.set()
        for t in threads:
            t.join(10)
    finally:
        undo()
    assert sorted(results, key=repr) == sorted([("k", {"v": 1})] * 8 + [("nothing", None)] * 4,
                                               key=repr)
    assert len(sent) == 2  # one read of "k", one of "nothing"
    assert cache._tier._flights == {}
    # Each waiter got its own copy of the value (the L1's copy-on-read still holds).
    values = [v for key, v in results if key == "k"]
    assert len({id(v) for v in values}) == len(values)


def test_a_waiter_does_not_take_a_leaders_result_older_than_a_write_it_saw(clean_redis_server):
    # The leader reads "old"; meanwhile this process writes "new" and a thread reads it;
    # a miss that starts after that must not return the leader's "old".
    import threading

    cache = up_cache(clean_redis_server.url, KEY_PREFIX="flight2")
    cache.set("k", "old")
    k = cache.make_key("k")
    cache._store.invalidate([k])
    tier = cache._tier
    real = tier.wire.execute_many
    read_sent = threading.Event()
    release = threading.Event()
    calls = []

    def slow(commands, write=True):
        calls.append(commands)
        if len(calls) == 1:  # the leader's read: Redis answers "old"...
            reply = real(commands, write=write)
            read_sent.set()
            release.wait(10)  # ...and its reply is delivered late
            return reply
        return real(commands, write=write)

    tier.wire.execute_many = slow
    out = {}
    try:
        leader = threading.Thread(target=lambda: out.setdefault("leader", cache.get("k")))
        leader.start()
        read_sent.wait(10)
        tier.wire.execute_many = real  # this process's write goes straight through
        cache.set("k", "new")
        cache._store.invalidate([k])  # evicted again: the next get misses the L1
        tier.wire.execute_many = slow
        waiter = threading.Thread(target=lambda: out.setdefault("waiter", cache.get("k")))
        waiter.start()
        time.sleep(0.05)
        release.set()
        leader.join(10)
        waiter.join(10)
    finally:
        tier.wire.execute_many = real
    assert out["leader"] == "old"
    assert out["waiter"] == "new"


def test_a_failed_leader_read_leaves_its_waiters_to_read_for_themselves(clean_redis_server):
    import threading

    # A database of its own: the error below is counted by the failure policy, which is
    # shared by every cache of one LOCATION (other tests assert a count of 0 on theirs).
    cache = up_cache(clean_redis_server.url + "/5", KEY_PREFIX="flight3",
                     OPTIONS={"IGNORE_EXCEPTIONS": False})
    cache.set("k", 7)
    k = cache.make_key("k")
    cache._store.invalidate([k])
    tier = cache._tier
    real = tier.wire.execute_many
    gate = threading.Event()
    calls = []

    def flaky(commands, write=True):
        calls.append(commands)
        if len(calls) == 1:
            gate.wait(10)
            raise ConnectionError("the leader's connection broke")
        return real(commands, write=write)

    tier.wire.execute_many = flaky
    out: list = []
    try:
        threads = [threading.Thread(target=lambda: out.append(_get_or_error(cache, "k")))
                   for _ in range(4)]
        for t in threads:
            t.start()
        wait_until(lambda: len(calls) == 1, 5, "the leader's read")
        time.sleep(0.05)
        gate.set()
        for t in threads:
            t.join(10)
    finally:
        tier.wire.execute_many = real
    assert out.count(7) >= 3  # the waiters read again; only the leader saw the error
    assert cache.get("k") == 7


def test_a_child_forked_during_a_read_in_flight_does_not_wait_for_it(clean_redis_server):
    # gunicorn --preload: a parent thread is the leader of a read when the fork happens;
    # that read never finishes in the child, whose misses of the key must not wait for it.
    import threading

    cache = up_cache(clean_redis_server.url, KEY_PREFIX="flight4")
    cache.set("k", "v")
    k = cache.make_key("k")
    cache._store.invalidate([k])
    gate = threading.Event()
    sent, undo = _slowed_reads(cache._tier, gate)
    leader = threading.Thread(target=cache.get, args=("k",))
    leader.start()
    wait_until(lambda: k in cache._tier._flights, 5, "the leader's read")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this thread exists; the leader's read is the parent's
        try:
            undo()
            ok = cache._tier._flights == {}
            deadline = time.monotonic() + 10
            while cache.stats()["l1_listener"] != "up" and time.monotonic() < deadline:
                cache.get("warm")
                time.sleep(0.005)
            started = time.monotonic()
            ok = ok and cache.get("k") == "v" and time.monotonic() - started < 0.5
            os.write(w, b"ok" if ok else b"bad")
        finally:
            os._exit(0)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            assert f.read() == b"ok"
    finally:
        os.waitpid(pid, 0)
        gate.set()
        leader.join(10)
        undo()


def _get_or_error(cache, key):
    try:
        return cache.get(key)
    except Exception as exc:  # the leader's error, as the policy passes it on
        return exc


_FORK_CHILD = textwrap.dedent("""
    import os, sys, time
    import django
    from django.conf import settings
    settings.configure(SECRET_KEY="x")
    django.setup()
    from django_fastcache.cache import FastCache

    cache = FastCache(sys.argv[1], {"KEY_PREFIX": "fork"})
    cache.set("k", "parent")
    cache.get("k")
    while cache.stats()["l1_listener"] != "up":
        cache.get("k")
        time.sleep(0.005)
    assert cache.get("k") == "parent" and cache.stats()["l1_entries"] >= 1
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        stats = cache.stats()
        # An empty, bypassed L1 and no listener until first use.
        ok = stats["l1_entries"] == 0 and stats["l1_listener"] == "down"
        assert cache.get("k") == "parent"
        deadline = time.time() + 10
        while cache.stats()["l1_listener"] != "up" and time.time() < deadline:
            time.sleep(0.005)
        cache.get("k")
        ok = ok and cache.get("k") == "parent" and cache.stats()["l1_hits"] >= 1
        os.write(w, b"ready\\n")
        deadline = time.time() + 10
        while cache.get("k") != "changed" and time.time() < deadline:
            time.sleep(0.001)
        ok = ok and cache.get("k") == "changed"
        os.write(w, b"ok\\n" if ok else b"bad %r\\n" % (cache.stats(),))
        os._exit(0)
    f = os.fdopen(r)
    assert f.readline() == "ready\\n"
    cache.set("k", "changed")  # the parent writes; the child's own listener must see it
    print(f.readline().strip())
    os.waitpid(pid, 0)
""")


def test_a_forked_child_starts_empty_and_runs_its_own_listener(clean_redis_server):
    done = subprocess.run([sys.executable, "-c", _FORK_CHILD, clean_redis_server.url],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok", done.stdout


_FORK_BUSY = textwrap.dedent("""
    import json, os, sys, threading, time
    import django
    from django.conf import settings
    settings.configure(SECRET_KEY="x")
    django.setup()
    from django_fastcache.cache import FastCache

    CHILDREN, BATCH = int(sys.argv[2]), 10
    cache = FastCache(sys.argv[1], {"KEY_PREFIX": "forkbusy",
                                    "OPTIONS": {"IGNORE_EXCEPTIONS": False}})
    cache.set("k", "parent")
    while cache.stats()["l1_listener"] != "up":
        cache.get("k")
        time.sleep(0.005)
    cache.get("k")
    before = cache.stats()
    stop = threading.Event()
    busy_errors = []

    def busy():  # a parent thread in the middle of cache calls whenever a fork happens
        i = 0
        while not stop.is_set():
            i += 1
            try:
                assert cache.get("k") == "parent"
                cache.set("busy", i)
                cache.get("busy")
            except Exception as exc:
                busy_errors.append(repr(exc))

    def child(w):
        try:
            s = cache.stats()
            problems = []
            if s["l1_entries"] != 0 or s["l1_listener"] != "down" or s["l1_listener_starts"] != 0:
                problems.append(("not clean", s["l1_entries"], s["l1_listener"]))
            if cache.get("k") != "parent":
                problems.append("wrong value")
            deadline = time.monotonic() + 20
            while cache.stats()["l1_listener"] != "up" and time.monotonic() < deadline:
                cache.get("k")
                time.sleep(0.002)
            cache.get("k")
            if cache.get("k") != "parent":
                problems.append("wrong value after up")
            cache.set("child:%d" % os.getpid(), os.getpid())
            if cache.get("child:%d" % os.getpid()) != os.getpid():
                problems.append("own write not read back")
            s = cache.stats()
            if s["l1_listener"] != "up" or s["l1_listener_starts"] != 1 or s["l1_hits"] < 1:
                problems.append(("listener", s["l1_listener"], s["l1_listener_starts"],
                                 s["l1_listener_error"]))
            os.write(w, (json.dumps(problems) + "\\n").encode())
        except BaseException as exc:
            os.write(w, (json.dumps([repr(exc)]) + "\\n").encode())
        finally:
            os._exit(0)

    t = threading.Thread(target=busy, daemon=True)
    t.start()
    time.sleep(0.05)
    failures = []
    done = 0
    while done < CHILDREN:
        pipes = []
        for _ in range(min(BATCH, CHILDREN - done)):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(r)
                child(w)
            os.close(w)
            pipes.append((pid, r))
        for pid, r in pipes:
            with os.fdopen(r) as f:
                line = f.readline()
            _, status = os.waitpid(pid, 0)
            problems = json.loads(line) if line else ["no report"]
            if problems or status != 0:
                failures.append((pid, status, problems))
        done += len(pipes)
    stop.set()
    t.join()
    after = cache.stats()
    print(json.dumps({"children": done, "failures": failures[:5], "failed": len(failures),
                      "busy_errors": busy_errors[:5],
                      "parent": [after["l1_listener"],
                                 after["l1_listener_downs"] - before["l1_listener_downs"],
                                 after["l1_listener_starts"], cache.get("k")]}))
""")


def test_forked_children_of_a_busy_parent_start_clean_and_never_fail(clean_redis_server):
    """200 children forked while another parent thread is in the middle of cache calls:
    each starts with an empty, bypassed L1 and no listener, reads correct values, starts
    exactly one listener of its own and is served by it; the parent's listener is never
    disturbed (no child closed or shut down its connection)."""
    done = subprocess.run([sys.executable, "-c", _FORK_BUSY, clean_redis_server.url, "200"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-5000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\nfork with a busy parent: {report}")
    assert report["children"] == 200
    assert report["failed"] == 0, report["failures"]
    assert report["busy_errors"] == []
    assert report["parent"] == ["up", 0, 1, "parent"]


def _follows_raw_writes(cache, raw, kind: str) -> None:
    """The cache's listener is ``kind`` and up, and a raw client's write reaches its L1."""
    cache.clear()
    cache.get("__warm__")
    wait_until(lambda: cache.stats()["l1_listener"] == "up", 10, "the listener")
    assert cache.stats()["l1_listener_kind"] == kind
    raw_set(cache, raw, "k", "one")
    assert cache.get("k") == "one" and cache.get("k") == "one"
    assert cache._engine.l1_get(cache.make_key("k"), "absent") == "one"  # held in the L1
    raw_set(cache, raw, "k", "two")
    assert cache.get("k") == "two"


@pytest.fixture(scope="module")
def acl_server():
    # The default user needs a password. alice may use the invalidation channel (an ACL
    # user needs it: `&__redis__:invalidate`); bob may not.
    with RedisServer("--user", "alice", "on", ">wonder land", "~*", "&__redis__:invalidate",
                     "+@all", "--user", "bob", "on", ">builder", "~*", "+@all",
                     password="defaultpw") as server:
        yield server


@pytest.mark.parametrize("userinfo", [":defaultpw", "alice:wonder%20land"])
def test_the_native_listener_authenticates_as_the_location_says(acl_server, userinfo):
    url = f"redis://{userinfo}@127.0.0.1:{acl_server.port}/3"
    cache = FastCache(url, {"KEY_PREFIX": "acl" + userinfo[:3]})
    raw = acl_server.client(db=3)
    _follows_raw_writes(cache, raw, "native")
    raw.close()


def test_the_native_listener_over_a_unix_socket(clean_redis_server):
    cache = FastCache(f"unix://{clean_redis_server.unix_path}?db=0", {"KEY_PREFIX": "unix"})
    raw = clean_redis_server.client()
    _follows_raw_writes(cache, raw, "native")
    raw.close()


def test_over_tls_the_python_listener_keeps_the_l1_coherent(tls_server):  # noqa: F811
    """The native listener has no TLS: a rediss:// LOCATION gets the Python listener."""
    url = f"rediss://127.0.0.1:{tls_server.tls_port}/5"
    cache = FastCache(url, {"KEY_PREFIX": "tls", "OPTIONS": {"CONNECTION_KWARGS": {
        "ssl_ca_certs": tls_server.ca, "ssl_cert_reqs": "required"}}})
    raw = tls_server.client(db=5)
    _follows_raw_writes(cache, raw, "python")
    raw.close()


def _tls_options(server) -> dict:
    return {"CONNECTION_KWARGS": {"ssl_ca_certs": server.ca, "ssl_cert_reqs": "required"}}


def test_over_tls_every_process_stays_coherent_through_a_flush_a_kill_and_a_restart(
        tls_server):  # noqa: F811
    """The Python listener across processes: raw writes (on the plain port: tracking is
    the server's, whatever connection writes), FLUSHDB, its connection killed, the server
    restarted; no stale read beyond the bound, and every worker's listener is up again."""
    raw = tls_server.client()
    events: dict = {"flushes": []}

    def faults(tmp):
        for _ in range(3):
            raw.set("coh:1:raw", time.monotonic_ns())
            time.sleep(0.2)
        t0 = time.monotonic()
        raw.flushdb()
        events["flushes"].append((t0, time.monotonic()))
        time.sleep(0.4)
        events["killed"] = raw.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        time.sleep(0.5)
        t0 = time.monotonic()
        tls_server.restart()
        events["flushes"].append((t0, time.monotonic()))
        time.sleep(2.5)  # the listeners reconnect (backoff up to 1 s) and serve again

    try:
        records = run_workers(f"rediss://127.0.0.1:{tls_server.tls_port}", 3, "history",
                              options=_tls_options(tls_server), keys_per_worker=4,
                              extra_keys=["raw"], during=faults)
    finally:
        raw.close()
    result = check_history(records, flushes=events["flushes"])
    stats = l1_stats(records)
    print(f"\nTLS, faults: {result}, {stats}, listeners killed: {events['killed']}")
    assert events["killed"] >= 3  # (and this process's listeners of the other TLS tests)
    assert stats["l1_listener_downs"] >= 6  # the kill and the restart, in every worker
    assert stats["l1_hits"] > 0 and stats["l1_flushes"] >= 3
    for r in records:
        assert r["stats"]["l1_listener_kind"] == "python"
        assert r["stats"]["l1_listener"] == "up", r["stats"]
        assert r["stats"]["l1_listener_ups"] >= 3  # first start, after the kill, the restart


def test_over_tls_a_hung_or_restarted_server_empties_and_bypasses_the_l1_until_it_is_back(
        tls_server):  # noqa: F811
    """A hung server (SIGSTOP) misses the PING deadline, a restart drops the connection:
    each time the L1 is emptied and bypassed at once, then used again once resubscribed."""
    cache = up_cache(f"rediss://127.0.0.1:{tls_server.tls_port}/6", KEY_PREFIX="tlsdown",
                     OPTIONS={**_tls_options(tls_server), "SOCKET_TIMEOUT": 0.5})
    raw = tls_server.client(db=6)
    try:
        for fault, undo in ((tls_server.pause, tls_server.resume),
                            (tls_server.restart, lambda: None)):
            cache.set("k", "before")
            assert cache.get("k") == "before"
            wait_until(lambda: cache._engine.l1_get(cache.make_key("k"), None) == "before", 5,
                       "the value in the L1")
            downs = cache.stats()["l1_listener_downs"]
            t0 = time.monotonic()
            fault()
            wait_until(lambda d=downs: cache.stats()["l1_listener_downs"] > d, 5,
                       "the listener to give up on the server")
            gone = time.monotonic() - t0
            assert not cache._store.usable
            assert cache._engine.l1_get(cache.make_key("k"), "absent") == "absent"
            assert gone < 3.0, gone  # PONG_DEADLINE plus one PING interval, and slack
            undo()
            wait_until(lambda: cache.stats()["l1_listener"] == "up", 10, "the listener")
            raw.set(cache.make_key("k"), cache._engine.dumps("after"))
            wait_until(lambda: cache.get("k") == "after", 5, "the new value")
        assert cache.stats()["l1_listener_kind"] == "python"
        assert cache.stats()["l1_listener_ups"] >= 3
    finally:
        raw.close()


def test_the_python_listener_on_a_cluster_reads_every_master_and_fails_as_one(
        clean_redis_cluster):
    """The Python listener (the TLS fallback, forced here on a plain cluster) has one link
    per master, read on threads of their own: a write on any master reaches the L1, and
    one lost link takes the whole L1 down until every link is back."""
    from unittest import mock

    import redis
    from django_fastcache import coherence
    from django_fastcache.redis_client import key_slot

    # A LOCATION of its own ("/0"): no other test's store, or its native listener, is used.
    with mock.patch.object(coherence, "_needs_tls", return_value=True):
        cache = up_cache(clean_redis_cluster.url.rstrip("/") + "/0", KEY_PREFIX="pyclu")
    assert cache.stats()["l1_listener_kind"] == "python"
    assert cache.stats()["l1_listener_connections"] == len(clean_redis_cluster.masters())
    slots = clean_redis_cluster.nodes[0].command("CLUSTER", "SLOTS")
    by_master: dict = {}
    for j in range(64):
        by_master.setdefault(_master_of(slots, key_slot(cache.make_key(f"k{j}"))), f"k{j}")
    assert len(by_master) == len(clean_redis_cluster.masters())
    host, port = clean_redis_cluster.startup_nodes[0]
    raw = redis.RedisCluster(host=host, port=port)
    try:
        for key in by_master.values():
            cache.set(key, "one")
            wait_until(lambda k=key: cache.get(k) == "one" and
                       cache._engine.l1_get(cache.make_key(k), None) == "one", 5, "the L1")
            raw_set(cache, raw, key, "two")
            assert cache.get(key) == "two"
        downs = cache.stats()["l1_listener_downs"]
        clean_redis_cluster.masters()[-1].command("CLIENT", "KILL", "TYPE", "pubsub")
        wait_until(lambda: cache.stats()["l1_listener_downs"] > downs, 5, "the L1 to go down")
        wait_until(lambda: cache.stats()["l1_listener"] == "up", 10, "the listener")
        assert cache.stats()["l1_listener_connections"] == len(clean_redis_cluster.masters())
        for key in by_master.values():
            raw_set(cache, raw, key, "three")
            assert cache.get(key) == "three"
    finally:
        raw.close()


def test_a_user_without_the_invalidation_channel_keeps_the_l1_bypassed_and_says_why(
        acl_server):
    cache = FastCache(f"redis://bob:builder@127.0.0.1:{acl_server.port}/3",
                      {"KEY_PREFIX": "bob"})
    cache.set("k", 1)
    assert cache.get("k") == 1  # served by Redis
    wait_until(lambda: "NOPERM" in cache.stats()["l1_listener_error"], 10,
               "the listener's error")
    assert cache.stats()["l1_listener"] != "up" and not cache._store.usable
    assert cache.get("k") == 1
    assert cache._engine.l1_get(cache.make_key("k"), "absent") == "absent"


def test_aget_serves_hits_without_awaiting_and_fills_race_free(clean_redis_server):
    cache = up_cache(clean_redis_server.url, KEY_PREFIX="async")
    raw = clean_redis_server.client()

    async def scenario():
        # Written by another client: no invalidation of this process's own write to race.
        raw_set(cache, raw, "k", {"a": [1]})
        assert await cache.aget("k") == {"a": [1]}  # a miss, filled
        coro = cache.aget("k")
        try:
            coro.send(None)  # a hit completes on the first step, with nothing awaited
        except StopIteration as stop:
            assert stop.value == {"a": [1]}
        else:
            raise AssertionError("a hit awaited I/O")
        raw.set(cache.make_key("k"), cache._engine.dumps("new"))
        deadline = time.monotonic() + 1
        while await cache.aget("k") != "new":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.001)

    asyncio.run(scenario())
    raw.close()


def test_values_above_l1_max_item_bytes_are_read_from_redis_each_time(clean_redis_server):
    cache = up_cache(clean_redis_server.url, KEY_PREFIX="big",
                     OPTIONS={"L1_MAX_ITEM_BYTES": 1000})
    raw = clean_redis_server.client()
    raw_set(cache, raw, "small", "s" * 100)
    raw_set(cache, raw, "big", "b" * 5000)
    raw.close()
    assert cache.get("small") == "s" * 100 and cache.get("big") == "b" * 5000
    entries = cache.stats()["l1_entries"]
    assert cache.get("big") == "b" * 5000
    assert cache._engine.l1_get(cache.make_key("big"), "absent") == "absent"
    assert cache._engine.l1_get(cache.make_key("small"), "absent") == "s" * 100
    assert cache.stats()["l1_entries"] == entries


def test_l1_timeout_caps_an_entry_without_a_redis_ttl(clean_redis_server):
    cache = up_cache(clean_redis_server.url, KEY_PREFIX="cap", OPTIONS={"L1_TIMEOUT": 0.1})
    raw = clean_redis_server.client()
    raw_set(cache, raw, "k", "v")
    raw.close()
    assert cache.get("k") == "v"
    assert cache._engine.l1_get(cache.make_key("k"), "absent") == "v"
    time.sleep(0.15)
    assert cache._engine.l1_get(cache.make_key("k"), "absent") == "absent"
    assert cache.get("k") == "v"  # still in Redis


def test_stats_name_the_listener_state_and_its_counters(clean_redis_server):
    cache = up_cache(clean_redis_server.url, KEY_PREFIX="st")
    cache.set("k", 1)
    cache.get("k")
    stats = cache.stats()
    for field in ("l1_hits", "l1_misses", "l1_hit_ratio", "l1_listener", "l1_invalidated_keys",
                  "l1_invalidation_messages", "l1_resets", "l1_listener_downs", "l1_fills",
                  "l1_fills_refused", "l1_tracked_prefixes"):
        assert field in stats, field
    assert stats["tier"] == "l1+redis" and stats["l1_listener"] == "up"
    assert stats["l1_tracked_prefixes"] == ["st:"] or "" in stats["l1_tracked_prefixes"] or \
        any("st:".startswith(p) for p in stats["l1_tracked_prefixes"])


@pytest.mark.parametrize("options, named", [
    ({"L1": "yes"}, "L1"),
    ({"L1_MAX_ITEM_BYTES": -1}, "L1_MAX_ITEM_BYTES"),
    ({"L1_MAX_BYTES": 0}, "MAX_BYTES"),
    ({"L1_TIMEOUT": "soon"}, "L1_TIMEOUT"),
])
def test_bad_l1_options_are_refused_by_name(options, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        FastCache("redis://127.0.0.1:1", {"OPTIONS": options})
