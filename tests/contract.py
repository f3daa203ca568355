"""The behaviour every FastCache configuration must have, in the shape of Django's
``BaseCacheTests``. A test module subclasses ``CacheContract`` once per configuration and
provides a ``cache`` fixture (a fresh, empty backend instance)."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import pickle
import threading
import uuid
import warnings

import pytest
from django.core.cache.backends.base import CacheKeyWarning
from django_fastcache.errors import LockError, LockNotOwnedError

SAMPLE_VALUES = [
    None, True, False, 0, -7, 2**40, 2**64 + 1, -(2**80), 1.5, -0.0, float("inf"),
    "", "text", "ünïcødé ✓", "x" * 5000, b"", b"\x00\xffbytes", bytearray(b"ba"),
    [], [1, [2, [3]]], (), (1, "a", (2.5,)), {"a": 1, "b": [1, 2], (1, 2): {"n": None}},
    {1, 2, 3}, frozenset({"a", (1, 2)}), datetime.date(2024, 2, 29),
    datetime.datetime(2024, 1, 2, 3, 4, 5, 678901),
    datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
    datetime.time(23, 59, 59, 999999), datetime.timedelta(days=-2, seconds=7, microseconds=9),
    decimal.Decimal("3.1400"), uuid.UUID("12345678-1234-5678-1234-567812345678"),
    {"id": 1, "name": "x" * 200, "tags": ["a", "b", "c"], "score": 1.5, "ok": True},
]


class Unpicklable:
    def __getstate__(self):
        raise pickle.PickleError("not picklable")


class Point:
    """A plain class: msgpack cannot hold it, pickle can."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


def same(a, b) -> bool:
    """Equal, and of the very same types all the way down (True is not 1, -0.0 not 0.0)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return repr(a) == repr(b)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (datetime.datetime, datetime.time)):
        return a == b and a.tzinfo == b.tzinfo and a.fold == b.fold and repr(a) == repr(b)
    return a == b


class CacheContract:
    # ------------------------------------------------------------------ basics

    def test_get_returns_default_on_miss(self, cache):
        assert cache.get("missing") is None
        assert cache.get("missing", "fallback") == "fallback"

    @pytest.mark.parametrize("value", SAMPLE_VALUES, ids=lambda v: type(v).__name__)
    def test_every_supported_type_round_trips_exactly(self, cache, value):
        cache.set("k", value)
        assert same(cache.get("k"), value)

    def test_objects_outside_msgpack_round_trip_through_pickle(self, cache):
        cache.set("p", {"point": Point(1, 2), "n": 3})
        assert cache.get("p") == {"point": Point(1, 2), "n": 3}

    def test_none_is_a_value_not_a_miss(self, cache):
        cache.set("null", None)
        assert cache.has_key("null")
        assert cache.get("null", "default") is None

    def test_returned_containers_are_private(self, cache):
        original = {"list": [1, 2], "nested": {"set": {1}}}
        cache.set("k", original)
        original["list"].append(3)
        got = cache.get("k")
        assert got == {"list": [1, 2], "nested": {"set": {1}}}
        got["list"].append(4)
        got["nested"]["set"].add(2)
        assert cache.get("k") == {"list": [1, 2], "nested": {"set": {1}}}

    def test_unpicklable_value_raises_pickle_error_and_stores_nothing(self, cache):
        with pytest.raises(pickle.PickleError):
            cache.set("u", Unpicklable())
        with pytest.raises(pickle.PickleError):
            cache.add("u", Unpicklable())
        assert not cache.has_key("u")

    # ------------------------------------------------------------------ timeouts

    def test_timeout_none_never_expires(self, cache):
        cache.set("k", 1, timeout=None)
        assert cache.ttl("k") is None

    @pytest.mark.parametrize("timeout", [0, -1, -100.5])
    def test_zero_or_negative_timeout_stores_nothing(self, cache, timeout):
        cache.set("k", "old")
        cache.set("k", "new", timeout=timeout)
        assert cache.get("k") is None
        assert cache.add("k2", "v", timeout=timeout) is True
        assert cache.get("k2") is None

    def test_positive_timeout_sets_ttl(self, cache):
        cache.set("k", 1, timeout=100)
        assert 99 <= cache.ttl("k") <= 100
        assert 99_000 <= cache.pttl("k") <= 100_000
        cache.set("f", 1, timeout=2.5)
        assert 2_000 <= cache.pttl("f") <= 2_500

    def test_default_timeout_applies_when_none_given(self, cache):
        cache.set("k", 1)
        assert 299 <= cache.ttl("k") <= 300

    def test_touch_changes_the_timeout_of_live_keys_only(self, cache):
        cache.set("k", 1, timeout=10)
        assert cache.touch("k", timeout=None) is True
        assert cache.ttl("k") is None
        assert cache.touch("k", timeout=50) is True
        assert 49 <= cache.ttl("k") <= 50
        assert cache.touch("missing") is False
        assert cache.touch("k", timeout=0) is True
        assert cache.get("k") is None

    def test_expire_persist_and_expire_at(self, cache):
        cache.set("k", 1, timeout=None)
        assert cache.expire("k", 20) is True
        assert 19 <= cache.ttl("k") <= 20
        assert cache.persist("k") is True
        assert cache.ttl("k") is None
        at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=30)
        assert cache.expire_at("k", at) is True
        assert 29 <= cache.ttl("k") <= 30
        assert cache.pexpire("k", 5000) is True
        assert 4_000 <= cache.pttl("k") <= 5_000
        assert cache.expire("missing", 10) is False
        assert cache.persist("missing") is False
        assert cache.ttl("missing") == 0

    # ------------------------------------------------------------------ writes

    def test_add_writes_only_when_absent(self, cache):
        assert cache.add("k", "first") is True
        assert cache.add("k", "second") is False
        assert cache.get("k") == "first"

    def test_delete_reports_whether_it_deleted(self, cache):
        cache.set("k", 1)
        assert cache.delete("k") is True
        assert cache.delete("k") is False

    def test_many_variants(self, cache):
        assert cache.set_many({"a": 1, "b": [2], "c": None}) == []
        assert cache.get_many(["a", "b", "c", "zz"]) == {"a": 1, "b": [2], "c": None}
        cache.delete_many(["a", "c", "zz"])
        assert cache.get_many(["a", "b", "c"]) == {"b": [2]}
        assert cache.get_many([]) == {}
        assert cache.set_many({}) == []

    def test_incr_and_decr(self, cache):
        cache.set("n", 10, timeout=100)
        assert cache.incr("n") == 11
        assert cache.incr("n", 5) == 16
        assert cache.decr("n", 20) == -4
        assert cache.get("n") == -4
        assert 99 <= cache.ttl("n") <= 100  # incr keeps the expiry
        with pytest.raises(ValueError, match="not found"):
            cache.incr("missing")
        cache.set("s", "text")
        with pytest.raises(TypeError):
            cache.incr("s")
        assert cache.get("s") == "text"

    def test_incr_on_big_numbers(self, cache):
        cache.set("big", 2**63 - 1)
        assert cache.incr("big") == 2**63
        assert cache.get("big") == 2**63

    def test_versions_and_prefixes_isolate_keys(self, cache):
        cache.set("k", "v1", version=1)
        cache.set("k", "v2", version=2)
        assert cache.get("k", version=1) == "v1"
        assert cache.get("k", version=2) == "v2"
        assert cache.incr_version("k", version=2) == 3
        assert cache.get("k", version=3) == "v2"
        assert cache.get("k", version=2) is None

    def test_clear_empties_the_cache(self, cache):
        cache.set_many({"a": 1, "b": 2})
        cache.clear()
        assert cache.get_many(["a", "b"]) == {}

    # ------------------------------------------------------------------ keys

    def test_invalid_keys_warn_as_django_does(self, cache):
        with pytest.warns(CacheKeyWarning, match="characters that will cause errors"):
            cache.set("has space", 1)
        with pytest.warns(CacheKeyWarning, match="longer than 250"):
            cache.get("x" * 300)
        with pytest.warns(CacheKeyWarning):
            assert cache.get("has space") == 1  # a warning, not a refusal

    def test_non_string_keys_are_formatted_like_django(self, cache):
        cache.set(42, "answer")
        assert cache.get("42") == "answer"

    def test_keys_and_delete_pattern_use_redis_globs(self, cache):
        cache.set_many({"user:1": 1, "user:2": 2, "users": 3, "item:[x]": 4})
        assert sorted(cache.keys("user:*")) == ["user:1", "user:2"]
        assert sorted(cache.keys("user?")) == ["users"]
        assert sorted(cache.iter_keys("item:\\[*")) == ["item:[x]"]
        assert cache.delete_pattern("user:*") == 2
        assert sorted(cache.keys("*")) == ["item:[x]", "users"]

    # ------------------------------------------------------------------ concurrency

    def test_get_or_set_computes_once_for_concurrent_callers(self, cache):
        calls = []
        start = threading.Barrier(8)
        release = threading.Event()

        def compute():
            calls.append(1)
            release.wait(5)
            return "computed"

        results = []

        def worker():
            start.wait(5)
            results.append(cache.get_or_set("slow", compute, timeout=60))

        threads = [threading.Thread(target=worker) for _ in range(8)]
        for t in threads:
            t.start()
        # Let every worker reach get_or_set before the computation finishes.
        while len(calls) == 0:
            threading.Event().wait(0.001)
        threading.Event().wait(0.05)
        release.set()
        for t in threads:
            t.join(10)
        assert results == ["computed"] * 8
        assert len(calls) == 1

    def test_lock_excludes_a_second_holder(self, cache):
        with cache.lock("job", timeout=10) as held:
            assert held.locked()
            assert cache.lock("job").acquire(blocking=False) is False
            assert cache.lock("job", blocking_timeout=0.05).acquire() is False
        assert cache.lock("job").acquire(blocking=False) is True

    def test_lock_release_by_a_stranger_fails(self, cache):
        mine = cache.lock("job2", timeout=10)
        assert mine.acquire()
        stranger = cache.lock("job2")
        with pytest.raises(LockNotOwnedError):
            stranger.release()
        mine.release()
        assert not mine.locked()
        with pytest.raises(LockError):
            with cache.lock("job2", timeout=10):
                with cache.lock("job2", blocking=False):
                    pass

    # ------------------------------------------------------------------ async

    def test_async_twins_behave_like_the_sync_api(self, cache):
        async def scenario():
            await cache.aset("a", {"x": [1]})
            assert await cache.aget("a") == {"x": [1]}
            assert await cache.aadd("a", 2) is False
            assert await cache.ahas_key("a")
            await cache.aset_many({"b": 1, "c": 2})
            assert await cache.aget_many(["a", "b", "c"]) == {"a": {"x": [1]}, "b": 1, "c": 2}
            assert await cache.aincr("b", 4) == 5
            assert await cache.adecr("b") == 4
            assert await cache.atouch("b", 100)
            assert await cache.aget_or_set("d", lambda: "made") == "made"
            assert await cache.adelete("a")
            await cache.adelete_many(["b", "c"])
            assert await cache.aget_many(["a", "b", "c"]) == {}
            await cache.aclear()
            assert await cache.aget("d") is None

        asyncio.run(scenario())

    def test_no_warning_for_valid_keys(self, cache):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            cache.set("fine:key", 1)
            cache.get("fine:key")
