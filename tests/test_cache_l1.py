"""FastCache on the embedded default (L1 only): the contract under every L1 configuration,
and what only the in-process tier promises (sharing, copies, bounds, counters, clock)."""

from __future__ import annotations

import itertools
import threading

import pytest
from contract import CacheContract, Point
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django_fastcache.cache import FastCache
from django_fastcache.errors import SerializationError

_locations = itertools.count()


def make_cache(**params) -> FastCache:
    """A backend on a LOCATION of its own, so tests never see each other's keys."""
    location = params.pop("LOCATION", None) or f"test-{next(_locations)}"
    return FastCache(location, params)


def reverse_custom(key: str) -> str:
    return key.split("|", 2)[2]


def custom_key(key, key_prefix, version):
    return f"{key_prefix}|{version}|{key}"


class TestDefaultConfig(CacheContract):
    @pytest.fixture
    def cache(self):
        return make_cache()


class TestPrefixVersionAndOneShard(CacheContract):
    @pytest.fixture
    def cache(self):
        return make_cache(KEY_PREFIX="site", VERSION=3, OPTIONS={"SHARDS": 1})


class TestPickleSerializer(CacheContract):
    @pytest.fixture
    def cache(self):
        return make_cache(OPTIONS={"SERIALIZER": "pickle", "PICKLE": "unsigned"})


class TestCustomKeyFunction(CacheContract):
    @pytest.fixture
    def cache(self):
        return make_cache(
            KEY_PREFIX="p",
            KEY_FUNCTION=custom_key,
            OPTIONS={"REVERSE_KEY_FUNCTION": "test_cache_l1.reverse_custom"},
        )


class FakeClock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clocked():
    cache = make_cache()
    clock = FakeClock()
    cache._engine.set_clock(clock)
    return cache, clock


def test_entries_expire_when_their_time_comes(clocked):
    cache, clock = clocked
    cache.set("short", 1, timeout=10)
    cache.set("forever", 2, timeout=None)
    clock.now += 9.999
    assert cache.get("short") == 1
    clock.now += 0.001
    assert cache.get("short") is None
    assert not cache.has_key("short")
    assert cache.add("short", 3, timeout=5) is True  # an expired key is free to add
    clock.now += 10**9
    assert cache.get("forever") == 2
    assert cache.stats()["expirations"] >= 1


def test_incr_keeps_expiry_on_the_fake_clock(clocked):
    cache, clock = clocked
    cache.set("n", 1, timeout=10)
    clock.now += 5
    assert cache.incr("n") == 2
    clock.now += 5
    assert cache.get("n") is None


def test_immutable_values_are_shared_not_copied():
    cache = make_cache()
    text, frozen = "some text" * 10, (1, "a", (2, 3))
    cache.set("t", text)
    cache.set("f", frozen)
    assert cache.get("t") is text
    assert cache.get("f") is frozen


def test_containers_come_back_as_fresh_copies_with_shared_leaves():
    cache = make_cache()
    leaf = "leaf" * 50
    cache.set("d", {"k": [leaf]})
    first, second = cache.get("d"), cache.get("d")
    assert first == second and first is not second
    assert first["k"] is not second["k"]
    assert first["k"][0] is leaf


def test_pickled_objects_are_unpickled_per_hit():
    cache = make_cache()
    cache.set("p", Point(1, 2))
    a, b = cache.get("p"), cache.get("p")
    assert a == b == Point(1, 2) and a is not b


def test_pickle_forbid_refuses_objects_msgpack_cannot_hold():
    cache = make_cache(OPTIONS={"PICKLE": "forbid"})
    with pytest.raises(SerializationError, match="Point"):
        cache.set("p", Point(1, 2))
    with pytest.raises(TypeError):  # SerializationError is a TypeError too
        cache.set("p", Point(1, 2))
    cache.set("ok", {"a": [1, (2, 3)]})
    assert cache.get("ok") == {"a": [1, (2, 3)]}


def test_aliases_with_one_location_share_one_store_across_threads():
    params = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": "shared-loc"}
    with override_settings(CACHES={"default": params, "other": {**params, "KEY_PREFIX": ""}}):
        caches["default"].set("k", "from default")
        seen = []
        thread = threading.Thread(target=lambda: seen.append(caches["other"].get("k")))
        thread.start()
        thread.join()
        assert seen == ["from default"]
        assert caches["default"] is not caches["other"]


def test_different_locations_are_isolated():
    a, b = make_cache(LOCATION="iso-a"), make_cache(LOCATION="iso-b")
    a.set("k", 1)
    assert b.get("k") is None


def test_entry_bound_culls_like_django():
    cache = make_cache(OPTIONS={"MAX_ENTRIES": 30})
    for i in range(1, 50):
        cache.set(f"cull{i}", "value", 1000)
    assert sum(cache.has_key(f"cull{i}") for i in range(1, 50)) == 29
    assert cache.stats()["evictions"] == 20


def test_byte_bound_evicts_and_oversized_values_are_not_stored():
    cache = make_cache(OPTIONS={"MAX_BYTES": 64 * 1024})
    for i in range(200):
        cache.set(f"k{i}", "x" * 1000)
    stats = cache.stats()
    assert stats["bytes"] <= 64 * 1024
    assert stats["evictions"] > 0
    assert stats["entries"] < 200
    cache.set("huge", "y" * 100_000)
    assert cache.get("huge") is None


def test_hot_keys_survive_a_scan_better_than_lru_would():
    # SIEVE keeps a key that was hit while a stream of one-off keys passes through.
    cache = make_cache(OPTIONS={"MAX_ENTRIES": 100, "CULL_FREQUENCY": 100})
    cache.set("hot", 1)
    for i in range(1000):
        assert cache.get("hot") == 1
        cache.set(f"scan{i}", i)
    assert cache.get("hot") == 1


def test_stats_count_hits_misses_and_sets():
    cache = make_cache()
    cache.set("a", 1)
    cache.get("a")
    cache.get("a")
    cache.get("b")
    stats = cache.stats()
    assert (stats["hits"], stats["misses"], stats["sets"], stats["entries"]) == (2, 1, 1, 1)
    assert stats["hit_ratio"] == pytest.approx(2 / 3)
    assert stats["tier"] == "l1"


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"MAX_BYTES": 0}, "MAX_BYTES"),
        ({"MAX_ENTRIES": "many"}, "MAX_ENTRIES"),
        ({"CULL_FREQUENCY": -1}, "CULL_FREQUENCY"),
        ({"SERIALIZER": "yaml"}, "SERIALIZER"),
        ({"COMPRESSOR": "brotli"}, "COMPRESSOR"),
        ({"COMPRESSOR": "lz4", "COMPRESS_LEVEL": 17}, "COMPRESS_LEVEL"),
        ({"MAX_VALUE_BYTES": 0}, "MAX_VALUE_BYTES"),
        ({"MAX_VALUE_BYTES": "1MB"}, "MAX_VALUE_BYTES"),
        ({"SIGNING_KEY_FALLBACKS": ["old"]}, "SIGNING_KEY_FALLBACKS"),
        ({"SIGNING_KEY": "new", "SIGNING_KEY_FALLBACKS": "old"}, "SIGNING_KEY_FALLBACKS"),
        ({"PICKLE": "maybe"}, "PICKLE"),
        ({"SERIALIZER": "pickle", "PICKLE": "forbid"}, "SERIALIZER"),
        ({"COMPRESS_LEVEL": 12}, "COMPRESS_LEVEL"),
        ({"PICKLE_PROTOCOL": 99}, "PICKLE_PROTOCOL"),
        ({"SIGNING_KEY": ""}, "SIGNING_KEY"),
        ({"MAX_BYTE": 10}, "MAX_BYTE"),
    ],
)
def test_bad_options_are_refused_naming_the_option(options, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        make_cache(OPTIONS=options)


def test_the_embedded_default_needs_no_secret_key():
    # Its values never leave the process: it signs with a key of its own, as LocMemCache
    # needs no SECRET_KEY either.
    with override_settings(SECRET_KEY=""):
        cache = make_cache()
        cache.set("point", Point(1, 2))
        assert cache.get("point") == Point(1, 2)


def test_keys_with_custom_key_function_need_a_reverse_function():
    cache = make_cache(KEY_FUNCTION=custom_key)
    cache.set("k", 1)
    with pytest.raises(ImproperlyConfigured, match="REVERSE_KEY_FUNCTION"):
        cache.keys("*")
