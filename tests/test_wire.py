"""The wire layer under load: forked children with a busy parent thread start clean and
build their clients once; a hung server costs a timeout per breaker trial, not per thread
per call; and every read path ("L1, else Redis": get, aget, get_many, aget_many, tag
counters) fills the L1 on a miss, so the next read sends no command to Redis."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import warnings

import pytest
from django_fastcache.cache import FastCache
from redis_servers import RedisServer

pytestmark = pytest.mark.redis


def make_cache(location, **params) -> FastCache:
    cache = FastCache(location, params)
    cache.clear()
    return cache


def wait_for_listener(cache) -> None:
    cache.get("__warm__")  # starts the listener
    deadline = time.monotonic() + 10
    while cache.stats()["l1_listener"] != "up":
        assert time.monotonic() < deadline, cache.stats()
        time.sleep(0.005)


# ---------------------------------------------------------------------- fork

def _child(cache, i: int) -> int:
    """In a forked child: two threads make the first calls at once; each value must be
    right and the client set must be built once. The exit status says what failed."""
    tier = cache._tier
    built = []
    make = tier.clients._make

    def counting(asyncio_):
        built.append(asyncio_)
        return make(asyncio_)

    tier.clients._make = counting
    errors = []

    def first_calls(n: int) -> None:
        try:
            if cache.get("shared") != "from-parent":
                errors.append("shared")
            cache.set(f"child:{i}:{n}", i * 10 + n, 30)
            if cache.get(f"child:{i}:{n}") != i * 10 + n:
                errors.append("own")
            if cache.get_many(["shared", f"child:{i}:{n}"]) != {
                    "shared": "from-parent", f"child:{i}:{n}": i * 10 + n}:
                errors.append("many")
        except Exception as exc:  # noqa: BLE001 - reported through the exit status
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_calls, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        return 1
    if built != [False]:
        return 2  # the sync client set was built more than once (or never)
    if cache.stats()["errors"]:
        return 3
    return 0


def test_forked_children_with_a_busy_parent_thread_start_clean(clean_redis_server):
    cache = make_cache(clean_redis_server.url, KEY_PREFIX="fork",
                       OPTIONS={"IGNORE_EXCEPTIONS": False})
    cache.set("shared", "from-parent", 60)
    wait_for_listener(cache)
    stop = threading.Event()
    parent_errors: list[str] = []
    parent_calls = [0]

    def busy() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                cache.set("busy", n, 60)
                if cache.get("busy") != n or cache.get("shared") != "from-parent":
                    parent_errors.append(f"wrong value at {n}")
                cache.get_many(["busy", "shared"])
            except Exception as exc:  # noqa: BLE001
                parent_errors.append(repr(exc))
            parent_calls[0] += 1

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    statuses = []
    try:
        for i in range(200):
            with warnings.catch_warnings():  # 3.12+: fork() of a multi-threaded process
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                code = 99
                try:
                    code = _child(cache, i)
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            statuses.append(os.waitstatus_to_exitcode(status))
    finally:
        stop.set()
        thread.join(10)
    failures = {code: statuses.count(code) for code in set(statuses) if code != 0}
    assert failures == {}, f"children failed (exit status: count): {failures}"
    assert parent_errors == [] and parent_calls[0] > 200
    # The parent is unaffected: same clients, connections still in step.
    assert cache.get("shared") == "from-parent" and cache.stats()["errors"] == 0
    raw = clean_redis_server.client()
    assert raw.get(cache.make_key("child:199:1")) == b"1991"


# ---------------------------------------------------------------------- a hung server

SOCKET_TIMEOUT = 0.2


def _hung_cache(server: RedisServer, prefix: str) -> FastCache:
    return make_cache(server.url, KEY_PREFIX=prefix, OPTIONS={
        "L1": False, "SOCKET_TIMEOUT": SOCKET_TIMEOUT, "SOCKET_CONNECT_TIMEOUT": SOCKET_TIMEOUT,
        "CIRCUIT_BREAKER_RESET_TIMEOUT": 0.5})


def test_a_hung_server_costs_one_thread_two_timeouts_not_the_threshold():
    """The first timeout trips the breaker half-open; the trial right after it times out
    too and opens it. Before: CIRCUIT_BREAKER_THRESHOLD (5) timeouts in a row."""
    with RedisServer() as server:
        cache = _hung_cache(server, "hung1")
        cache.set("k", 1)
        server.pause()
        try:
            durations = []
            for _ in range(8):
                start = time.perf_counter()
                assert cache.get("k") is None
                durations.append(time.perf_counter() - start)
        finally:
            server.resume()
        blocked = [d for d in durations if d >= SOCKET_TIMEOUT * 0.8]
        assert len(blocked) == 2, durations
        assert cache.stats()["breaker_suspected"] == 1


def test_a_hung_server_costs_a_timeout_per_breaker_trial_with_8_threads():
    threads, pause = 8, 2.5
    with RedisServer() as server:
        cache = _hung_cache(server, "hung8")
        cache.set("k", 1)
        wire = cache._tier.wire
        sent = wire.execute_many
        # Every call that reached the socket: (start, end, failed), monotonic seconds.
        attempts: list[tuple[float, float, bool]] = []
        calls: list[tuple[float, float]] = []
        lock = threading.Lock()

        def recording(*args, **kwargs):
            start = time.monotonic()
            failed = True
            try:
                result = sent(*args, **kwargs)
                failed = False
                return result
            finally:
                with lock:
                    attempts.append((start, time.monotonic(), failed))

        wire.execute_many = recording
        stop = threading.Event()

        def loop() -> None:
            while not stop.is_set():
                start = time.monotonic()
                cache.get("k")
                with lock:
                    calls.append((start, time.monotonic()))

        workers = [threading.Thread(target=loop) for _ in range(threads)]
        for w in workers:
            w.start()
        time.sleep(0.3)
        paused_at = time.monotonic()
        server.pause()
        time.sleep(pause)
        resumed_at = time.monotonic()
        server.resume()
        time.sleep(0.8)
        stop.set()
        for w in workers:
            w.join(10)
        stats = cache.stats()

    failed = sorted((s, e) for s, e, f in attempts if f)
    assert failed, "no call failed: the server was not hung"
    tripped = min(e for _, e in failed)  # the first timeout
    # Before the first timeout: at most the calls in flight, one per thread.
    assert sum(1 for s, _ in failed if s < tripped) <= threads
    # After it, only trials reach the hung server, one at a time, and each costs about
    # one socket timeout (a reconnecting trial a few: connect, handshake, command).
    trials = [(s, e) for s, e in failed if s >= tripped]
    for (_, e1), (s2, _) in zip(trials, trials[1:], strict=False):
        assert s2 >= e1 - 0.005, ("two trials overlapped", trials)
    assert len(trials) <= pause / 0.5 + 2, trials
    hung = [(s, e) for s, e, _ in attempts if paused_at <= s < resumed_at]
    total = sum(min(e, resumed_at) - s for s, e in hung)
    bound = 10 * SOCKET_TIMEOUT * (len(trials) + 1)  # 10x looser than one timeout each
    assert total <= bound + threads * SOCKET_TIMEOUT, (total, len(trials), stats)
    # Every other call during the outage was short-circuited, in microseconds.
    short = [e - s for s, e in calls if tripped < s and e < resumed_at
             and not any(a <= s and e <= b for a, b in hung)]
    assert short and sorted(short)[len(short) // 2] < 0.005
    # Service resumed: the breaker closed and calls answer.
    assert stats["breaker_state"] == "closed"
    assert any(s > resumed_at and not f for s, _, f in attempts)


# ---------------------------------------------------------------------- L1 fills

def _commands(raw) -> dict[str, int]:
    stats = raw.info("commandstats")
    return {name[len("cmdstat_"):]: row["calls"] for name, row in stats.items()
            if name[len("cmdstat_"):] in ("get", "mget", "pttl", "set", "evalsha", "incrby")}


@pytest.fixture
def l1(clean_redis_server):
    cache = make_cache(clean_redis_server.url, KEY_PREFIX="fill")
    wait_for_listener(cache)
    raw = clean_redis_server.client()
    yield cache, raw
    raw.close()


def _empty_l1(cache, raw) -> None:
    """Waits until the listener has applied every invalidation sent so far (this
    process's own writes come back as invalidations, which would drop copies filled
    after them), then empties the L1, still usable: the next reads miss. Invalidations
    arrive in order on one connection: once a marker written now is dropped from the
    L1, all earlier ones were applied."""
    marker = cache.make_key("__marker__")
    cache._engine.l1_set(marker, 1, 60.0)
    raw.set(marker, b"1")
    deadline = time.monotonic() + 10
    while cache._engine.l1_get(marker, None) is not None:
        assert time.monotonic() < deadline, cache.stats()
        time.sleep(0.002)
    cache._store.reset(True)


def test_get_many_fills_the_l1_and_the_next_call_sends_nothing(l1):
    cache, raw = l1
    cache.set_many({f"k{i}": i for i in range(10)}, 60)
    _empty_l1(cache, raw)
    hits = cache.stats()["l1_hits"]
    assert cache.get_many([f"k{i}" for i in range(10)]) == {f"k{i}": i for i in range(10)}
    before = _commands(raw)
    for _ in range(3):
        assert cache.get_many([f"k{i}" for i in range(10)]) == {f"k{i}": i for i in range(10)}
    assert _commands(raw) == before
    assert cache.stats()["l1_hits"] - hits == 30
    # The copies took the Redis TTL.
    assert 50 < cache.ttl("k0") <= 60


def test_aget_many_uses_and_fills_the_l1_and_counts(l1):
    cache, raw = l1
    cache.set_many({f"a{i}": f"v{i}" for i in range(5)}, 60)
    _empty_l1(cache, raw)
    stats = cache.stats()

    async def reads():
        first = await cache.aget_many([f"a{i}" for i in range(5)] + ["missing"])
        middle = _commands(raw)
        second = await cache.aget_many([f"a{i}" for i in range(5)])
        return first, middle, second

    first, middle, second = asyncio.run(reads())
    assert first == second == {f"a{i}": f"v{i}" for i in range(5)}
    assert _commands(raw) == middle
    after = cache.stats()
    assert after["l1_hits"] - stats["l1_hits"] == 5
    assert after["redis_hits"] - stats["redis_hits"] == 5
    assert after["redis_misses"] - stats["redis_misses"] == 1


def test_aset_many_fills_the_l1(l1):
    """aset_many hands each written value to the L1 (``Engine.l1_write``, which keeps it
    unless an invalidation of the key came meanwhile), as set_many does; it used to drop
    every copy instead."""
    cache, _ = l1
    tier = cache._tier
    written, dropped = [], []
    wrote, changed = tier._wrote, tier._changed
    tier._wrote = lambda k, token, value, size, px: (written.append((k, value, px)),
                                                     wrote(k, token, value, size, px))
    tier._changed = lambda k: (dropped.append(k), changed(k))
    data = {f"s{i}": [i] for i in range(5)}
    asyncio.run(cache.aset_many(data, 60))
    assert written == [(cache.make_key(k), v, 60_000) for k, v in data.items()]
    assert dropped == []
    written.clear()
    cache.set_many(data, 60)
    assert written == [(cache.make_key(k), v, 60_000) for k, v in data.items()]


def test_aget_fills_the_l1(l1):
    cache, raw = l1
    cache.set("one", {"x": 1}, 60)
    _empty_l1(cache, raw)

    async def run():
        assert await cache.aget("one") == {"x": 1}
        before = _commands(raw)
        assert await cache.aget("one") == {"x": 1}
        return before

    before = asyncio.run(run())
    assert _commands(raw) == before


def test_tagged_reads_are_l1_hits_after_one_miss(l1):
    cache, raw = l1
    cache.set("page", "<html>", 60, tags=["posts", "author:1"])
    _empty_l1(cache, raw)
    assert cache.get("page") == "<html>"
    before = _commands(raw)
    for _ in range(5):
        assert cache.get("page") == "<html>"
        assert cache.get_many(["page"]) == {"page": "<html>"}
    assert _commands(raw) == before, "tag counters or the entry were read from Redis again"
    # An invalidation is still seen at once.
    cache.invalidate_tags("posts")
    assert cache.get("page") is None
