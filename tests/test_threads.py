"""Thread safety of the L1 backend: threads hammering the same keys with every kind of call,
with the interpreter switching threads as often as it can, must see only whole values,
lose no increment, and leave the store's counters and internal invariants consistent."""

from __future__ import annotations

import itertools
import random
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from django_fastcache.cache import FastCache

THREADS = 8
HAMMER_SECONDS = 3.0
KEYS = [f"k{i}" for i in range(8)]
NUMBERS = [f"n{i}" for i in range(4)]
_locations = itertools.count()


def make_cache(**options) -> FastCache:
    return FastCache(f"threads-{next(_locations)}", {"OPTIONS": options})


class Torn(AssertionError):
    """A value read back that was not written whole by one writer."""


class Stamped:
    """A value only pickle can carry: each hit unpickles a fresh one."""

    def __init__(self, r: int) -> None:
        self.r, self.text, self.parts = r, str(r), [r, r * 3]


def make_value(r: int):
    """One of three stored forms (shared tuple, copied dict, pickled object), each of whose
    fields derives from `r`, so a value mixed from two writes is detectable."""
    kind = r % 3
    if kind == 0:
        return (r, str(r), (r * 2, -r))
    if kind == 1:
        return {"r": r, "s": str(r), "l": [r, -r, r * 2], "b": str(r).encode(),
                "sub": {"h": r % 97, "set": {r, r + 1}}}
    return Stamped(r)


def check_value(v) -> None:
    if v is None:
        return
    if isinstance(v, tuple):
        r = v[0]
        ok = v == (r, str(r), (r * 2, -r))
    elif isinstance(v, dict):
        r = v["r"]
        ok = v == {"r": r, "s": str(r), "l": [r, -r, r * 2], "b": str(r).encode(),
                   "sub": {"h": r % 97, "set": {r, r + 1}}}
        # The caller owns its copy: scribbling on it must not reach other readers.
        v["l"].append("mine")
        v["sub"]["set"].add("mine")
        v["r"] = None
    elif isinstance(v, Stamped):
        r = v.r
        ok = v.text == str(r) and v.parts == [r, r * 3]
        v.parts.append("mine")
    else:
        ok = False
    if not ok:
        raise Torn(f"torn or foreign value: {v!r}")


class CountingEngine:
    """Forwards to the backend's engine, counting the keys it is asked to look up."""

    def __init__(self, engine) -> None:
        self._engine = engine
        self._lock = threading.Lock()
        self.lookups = 0

    def get(self, key, default, version):
        with self._lock:
            self.lookups += 1
        return self._engine.get(key, default, version)

    def get_many(self, keys, version):
        keys = list(keys)
        with self._lock:
            self.lookups += len(keys)
        return self._engine.get_many(keys, version)

    def __getattr__(self, name):
        return getattr(self._engine, name)


@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


def _run_threads(target, n: int = THREADS) -> None:
    errors: list[BaseException] = []

    def guarded(i):
        try:
            target(i)
        except BaseException as exc:  # reported on the main thread below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=HAMMER_SECONDS + 60)
        assert not t.is_alive(), "a thread is stuck (deadlock?)"
    if errors:
        raise errors[0]


def test_mixed_operations_on_shared_keys_see_only_whole_values(fast_switching):
    cache = make_cache(MAX_ENTRIES=1000)
    gets = [0] * THREADS
    counter_incrs = [0] * THREADS
    deadline = time.monotonic() + HAMMER_SECONDS

    def worker(i: int) -> None:
        rng = random.Random(i)
        lookups = incrs = 0
        while time.monotonic() < deadline:
            key = rng.choice(KEYS)
            op = rng.randrange(12)
            if op == 0:
                lookups += 1
                check_value(cache.get(key))
            elif op == 1:
                cache.set(key, make_value(rng.randrange(10**9)), timeout=300)
            elif op == 2:
                cache.add(key, make_value(rng.randrange(10**9)), timeout=300)
            elif op == 3:
                cache.delete(key)
            elif op == 4:
                number = rng.choice(NUMBERS)
                if rng.random() < 0.5:
                    cache.set(number, rng.randrange(1000), timeout=None)
                else:
                    try:
                        assert isinstance(cache.incr(number, rng.randrange(-5, 6)), int)
                    except ValueError:  # deleted meanwhile: Django's "not found"
                        pass
            elif op == 5:
                cache.touch(key, rng.choice([300, None]))
            elif op == 6:
                chosen = rng.sample(KEYS, 3)
                lookups += len(chosen)
                got = cache.get_many(chosen)
                assert set(got) <= set(chosen)
                for v in got.values():
                    check_value(v)
            elif op == 7:
                cache.set_many({k: make_value(rng.randrange(10**9)) for k in rng.sample(KEYS, 3)},
                               timeout=300)
            elif op == 8:
                r = rng.randrange(10**9)
                check_value(cache.get_or_set(key, lambda r=r: make_value(r), timeout=300))
            elif op == 9:
                cache.delete_pattern(rng.choice(["k[0-3]", "k?", "n*", "nothing*"]))
            elif op == 10:
                cache.incr("counter", 1)
                incrs += 1
            else:
                cache.delete_many(rng.sample(KEYS, 2))
        gets[i] += lookups
        counter_incrs[i] += incrs

    # Every store lookup goes through the engine's get or get_many (get_or_set's too).
    # Every path into the engine goes through the proxy: the fast get and the rest.
    engine = cache._engine = cache._cache = CountingEngine(cache._engine)
    cache._get = engine.get
    cache.set("counter", 0, timeout=None)
    _run_threads(worker)

    assert cache.get("counter") == sum(counter_incrs)
    stats = cache.stats()
    expected_lookups = engine.lookups
    assert expected_lookups > sum(gets) > 1000
    assert stats["hits"] + stats["misses"] == expected_lookups
    assert stats["entries"] == len(cache.keys("*"))
    assert cache._store._check_invariants() == ""
    print(f"{expected_lookups} lookups, {sum(counter_incrs)} counter increments, {stats}")


def test_concurrent_incr_loses_no_update(fast_switching):
    cache = make_cache()
    per_thread = 5000
    cache.set("hits", 0, timeout=None)
    cache.set("float", 0.5, timeout=None)

    def worker(i: int) -> None:
        for _ in range(per_thread):
            cache.incr("hits")
            cache.decr("float", -1)  # float += 1: another numeric type on the in-place path

    _run_threads(worker)
    assert cache.get("hits") == THREADS * per_thread
    assert cache.get("float") == 0.5 + THREADS * per_thread
    assert cache._store._check_invariants() == ""


def test_concurrent_eviction_keeps_the_store_consistent(fast_switching):
    # Small bounds: every write culls or evicts while others read and write.
    cache = make_cache(MAX_ENTRIES=50, MAX_BYTES=64 * 1024, SHARDS=4)
    deadline = time.monotonic() + 1.0

    def worker(i: int) -> None:
        rng = random.Random(100 + i)
        while time.monotonic() < deadline:
            key = f"e{rng.randrange(200)}"
            if rng.random() < 0.5:
                cache.set(key, make_value(rng.randrange(10**9)), timeout=rng.choice([0.05, 300]))
            else:
                check_value(cache.get(key))

    _run_threads(worker)
    stats = cache.stats()
    assert stats["evictions"] > 0
    # Concurrent writers may each pass the bound check before either culls (store.hpp).
    assert stats["entries"] <= 50 + THREADS
    assert stats["bytes"] <= 64 * 1024
    assert cache._store._check_invariants() == ""


# Run in a subprocess: a deadlock would hold the GIL and hang this process for good.
_PYTHON_DELTA_SCRIPT = textwrap.dedent("""
    import sys, threading, time
    from django.conf import settings
    settings.configure(SECRET_KEY="x")
    from django_fastcache.cache import FastCache

    sys.setswitchinterval(1e-6)
    cache = FastCache("python-delta", {"OPTIONS": {"SHARDS": 1}})
    cache.set("n", 0, timeout=None)

    class Step:
        # Python code inside the addition gives the interpreter a chance to switch threads.
        def __radd__(self, other):
            for _ in range(200):
                pass
            return other + 1

    stop = time.monotonic() + 1.0
    def reader():
        while time.monotonic() < stop:
            cache.get("n")
    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    done = 0
    while time.monotonic() < stop:
        cache.incr("n", Step())
        done += 1
    for t in threads:
        t.join()
    assert cache.get("n") == done, (cache.get("n"), done)
    print("incremented", done)
""")


def test_incr_by_a_python_level_number_does_not_deadlock_readers():
    try:
        proc = subprocess.run([sys.executable, "-c", _PYTHON_DELTA_SCRIPT], capture_output=True,
                              text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("incr with a delta whose __radd__ is Python code deadlocked")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "incremented" in proc.stdout
