"""FastCache against django-redis itself: the same calls, in the same test run, on both
backends, compared by return values and types, stored TTLs and what ``get`` returns
afterwards.

django-redis always runs on the session's single Redis node (its own KEY_PREFIX); FastCache
runs on that node too (with and without the L1), on a 3-master Cluster and on a Sentinel
set, and must answer exactly as django-redis did. Multi-key set commands use hash-tagged
keys (``{g}a``) so that on the Cluster they share a slot. Where FastCache differs on
purpose, the test says so in its name and asserts FastCache's behaviour.

Needs django-redis 7.0+ (its sorted-set commands), which needs Django 5.2+; the pyproject
``test`` extra says ``django-redis>=6.0`` so that the Django 4.2 entry of the test matrix
(which does not run this module) still installs.
"""

from __future__ import annotations

import contextlib
import datetime
import pickle
import threading
import time
from unittest import mock

import pytest
import redis
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.exceptions import ImproperlyConfigured
from django_fastcache import coherence
from django_fastcache.cache import FastCache
from django_fastcache.errors import ConnectionInterrupted, ConnectionTimeout, CrossSlotError
from django_redis.cache import RedisCache

pytestmark = pytest.mark.redis


def typed(x):
    """``x`` with the type of every part spelled out, sets in a fixed order: equal only if
    values and types are."""
    if isinstance(x, (set, frozenset)):
        return (type(x).__name__, sorted((typed(i) for i in x), key=repr))
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, [typed(i) for i in x])
    if isinstance(x, dict):
        return ("dict", sorted(((typed(k), typed(v)) for k, v in x.items()), key=repr))
    return (type(x).__name__, x)


def near(ttl, expected):
    """A TTL to an absolute time: the whole second it rounds to depends on when in the
    current second it is read, so only "within a second" is compared."""
    return abs(ttl - expected) <= 1


def seconds(ms):
    """A PTTL in whole seconds (both sides are read a few ms apart)."""
    return ms if ms in (None, 0) else (ms + 500) // 1000


def raised(call):
    """The name of the exception ``call`` raises (None if it returns)."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - the name is what is compared
        return type(exc).__name__ + (": WRONGTYPE" if "WRONGTYPE" in str(exc) else "")
    return None


# ---------------------------------------------------------------------- scenarios
# Each takes a cache and returns what its calls returned, in order.

def s_set_nx_xx(c):
    return [c.set("k", 1, nx=True), c.set("k", 2, nx=True), c.get("k"),
            c.set("k", "x", xx=True), c.set("absent", 1, xx=True), c.get("k"), c.get("absent"),
            c.set("k", 5, timeout=0, nx=True), c.get("k"), c.set("k", 6, timeout=-1),
            c.get("k"), c.set("gone", 1, timeout=0), c.get("gone"),
            c.set("m", {"a": [1, 2]}), c.get("m"), c.ttl("m")]


def s_add(c):
    return [c.add("a", 1), c.add("a", 2), c.get("a"), c.add("b", 1, timeout=None), c.ttl("b")]


def s_incr_ignore_key_check(c):
    return [c.incr("n", 10, ignore_key_check=True), c.incr("n", 5, ignore_key_check=True),
            c.get("n"), c.ttl("n"), c.decr("n", 3), c.get("n")]


def s_incr_missing_raises(c):
    out = []
    for call in (lambda: c.incr("missing"), lambda: c.decr("missing")):
        try:
            out.append(call())
        except ValueError:
            out.append("ValueError")
    return out


def s_incr_big_ints(c):
    c.set("big", 2**63 - 1, timeout=100)
    c.set("neg", -(2**63), timeout=None)
    c.set("huge", 10**30)
    c.set("flt", 1.5)
    return [c.incr("big"), c.get("big"), near(c.ttl("big"), 100), c.decr("neg"), c.get("neg"),
            c.ttl("neg"), c.incr("huge", 10**20), c.get("huge"), c.incr("flt", 2), c.get("flt"),
            c.incr("big", -(2**63)), c.get("big")]


def s_expire_family(c):
    c.set("e", 1, timeout=None)
    c.set("p", 1, timeout=None)
    c.set("n", 1, timeout=None)
    # Whole seconds: redis-py drops a datetime's fraction, FastCache keeps milliseconds.
    when = datetime.datetime.fromtimestamp(int(time.time()) + 200, datetime.timezone.utc)
    return [c.ttl("e"), c.expire("e", 100), c.ttl("e"), c.expire("e", DEFAULT_TIMEOUT),
            c.ttl("e"), seconds(c.pttl("e")), c.pexpire("p", 50_000), seconds(c.pttl("p")),
            c.pexpire("p", 300_000), c.ttl("p"), c.persist("p"), c.ttl("p"),
            c.persist("p"), c.persist("missing"), c.expire("missing", 10),
            c.pexpire("missing", 10), c.ttl("missing"), c.pttl("missing"),
            c.expire_at("n", when), near(c.ttl("n"), 200),
            c.pexpire_at("n", int(when.timestamp() * 1000) + 100_000), near(c.ttl("n"), 300),
            c.expire_at("missing", when), c.pexpire_at("missing", 10**13),
            c.touch("n", 30), c.ttl("n"), c.touch("n", None), c.ttl("n"), c.touch("missing"),
            c.touch("n"), c.ttl("n"), c.expire("n", 0), c.get("n")]


def s_delete(c):
    c.set_many({"a": 1, "b": 2, "c": 3})
    return [c.delete_many(["a", "b", "zz"]), c.get_many(["a", "b", "c"]),
            bool(c.delete("c")), bool(c.delete("c")), c.has_key("c")]


def s_versions(c):
    c.set("v", "two", version=2)
    return [c.get("v"), c.get("v", version=2), c.has_key("v", version=2),
            c.incr_version("v", version=2), c.get("v", version=2), c.get("v", version=3),
            c.sadd("vs", 1, version=7), c.smembers("vs"), c.smembers("vs", version=7),
            c.ttl("v", version=3), c.delete_many(["v"], version=3), c.get("v", version=3)]


def s_keys(c):
    c.set_many({"user:1": 1, "user:2": 2, "item:1": 3, "us[e]r*": 4})
    return [sorted(c.keys("user:*")), sorted(c.iter_keys("user:*")), sorted(c.keys("*")),
            sorted(c.iter_keys("item:?")), c.delete_pattern("user:*"), sorted(c.keys("*")),
            c.delete_pattern("nothing*")]


def s_lock(c):
    lock = c.lock("L", timeout=5)
    other = c.lock("L", timeout=5)
    return [lock.acquire(blocking=False), other.acquire(blocking=False), lock.locked(),
            lock.owned(), other.owned(), lock.release(), lock.locked(),
            other.acquire(blocking=False), other.release()]


def s_hash(c):
    return [c.hset("h", "f1", {"a": 1}), c.hset("h", "f1", [1, 2]),
            c.hset("h", mapping={"f2": 2, "f3": "three"}),
            c.hset("h", "f4", 4, mapping={"f5": (5,)}), c.hlen("h"), sorted(c.hkeys("h")),
            c.hexists("h", "f1"), c.hexists("h", "nope"), c.hdel("h", "f1"), c.hdel("h", "f1"),
            c.hlen("h"), c.hlen("missing"), c.hkeys("missing"), c.hexists("missing", "f"),
            c.hdel("missing", "f"), c.ttl("h"), c.expire("h", 50), c.ttl("h"),
            raised(lambda: c.sadd("h", 1)), c.has_key("h"),
            c.delete("h"), c.hlen("h")]


def s_sets(c):
    return [c.sadd("{g}a", 1, 2, "x", (1, 2), 2), c.sadd("{g}b", 2, "y"), c.sadd("{g}b", 2),
            c.scard("{g}a"), c.scard("{g}missing"), c.smembers("{g}a"), c.smembers("{g}missing"),
            c.sismember("{g}a", "x"), c.sismember("{g}a", "z"), c.sismember("{g}missing", 1),
            c.smismember("{g}a", 1, "z", (1, 2)), c.sdiff("{g}a", "{g}b"),
            c.sinter("{g}a", "{g}b"), c.sunion("{g}a", "{g}b"), c.sdiff("{g}missing", "{g}a"),
            c.sdiffstore("{g}d", "{g}a", "{g}b"), c.smembers("{g}d"),
            c.sinterstore("{g}i", "{g}a", "{g}b"), c.smembers("{g}i"),
            c.sunionstore("{g}u", "{g}a", "{g}b"), c.smembers("{g}u"),
            c.sinterstore("{g}i", "{g}a", "{g}missing"), c.smembers("{g}i"),
            c.smove("{g}a", "{g}b", "x"), c.smove("{g}a", "{g}b", "x"), c.smembers("{g}b"),
            c.srem("{g}b", "x", "y", "nope"), c.smembers("{g}b"), c.srem("{g}missing", 1),
            c.sscan("{g}a"), sorted(c.sscan_iter("{g}a"), key=repr),
            c.sscan("{g}missing"), list(c.sscan_iter("{g}missing")),
            c.srandmember("{g}missing"), c.srandmember("{g}missing", 2),
            c.spop("{g}missing"), c.spop("{g}missing", 2), c.ttl("{g}a"),
            raised(lambda: c.incr("{g}a")),
            raised(lambda: c.zadd("{g}a", {"x": 1})), c.set("{g}i", "plain"),
            c.get("{g}i"), raised(lambda: c.smembers("{g}i"))]


def s_set_random(c):
    c.sadd("r", 1, 2, 3)
    one = c.srandmember("r")
    two = c.srandmember("r", 2)
    rep = c.srandmember("r", -5)
    popped = c.spop("r")
    rest = c.spop("r", 5)
    return [one in {1, 2, 3}, type(one), type(two), len(two), set(two) <= {1, 2, 3},
            type(rep), len(rep), popped in {1, 2, 3}, type(rest), rest | {popped},
            c.scard("r"), c.smembers("r")]


def s_zsets(c):
    return [c.zadd("z", {"a": 1, "b": 2.5, (1, 2): -1, 7: 10}), c.zadd("z", {"a": 3}),
            c.zadd("z", {"a": 4}, ch=True), c.zadd("z", {"a": 1}, nx=True),
            c.zadd("z", {"q": 1}, xx=True), c.zadd("z", {"a": 2}, incr=True),
            c.zadd("z", {"b": 1}, gt=True, ch=True), c.zadd("z", {"b": 1}, lt=True, ch=True),
            c.zcard("z"), c.zcard("missing"), c.zcount("z", 0, 5), c.zcount("z", "-inf", "+inf"),
            c.zincrby("z", 1.5, "b"), c.zincrby("z", 2, "new"), c.zscore("z", "b"),
            c.zscore("z", "nope"), c.zscore("missing", "a"), c.zrank("z", (1, 2)),
            c.zrank("z", "nope"), c.zrange("z", 0, -1), c.zrange("z", 0, 1, withscores=True),
            c.zrange("z", 0, -1, desc=True), c.zrange("z", 0, -1, withscores=True,
                                                         score_cast_func=int),
            c.zrangebyscore("z", 0, 5), c.zrangebyscore("z", "-inf", "+inf", start=1, num=2,
                                                        withscores=True),
            c.zrevrange("z", 0, 1), c.zrevrange("z", 0, -1, withscores=True),
            c.zrevrangebyscore("z", 10, 2), c.zrevrangebyscore("z", "+inf", "-inf", start=0,
                                                               num=2, withscores=True),
            c.zrange("missing", 0, -1), c.zrangebyscore("missing", 0, 1),
            c.zrem("z", "new", "nope"), c.zremrangebyscore("z", 9, 10), c.zrange("z", 0, -1),
            c.zpopmax("z"), c.zpopmin("z"), c.zpopmax("z", 5), c.zpopmin("z"),
            c.zpopmin("z", 2), c.zcard("z"), c.zpopmax("missing"), c.zpopmin("missing", 2),
            c.zrem("missing", "a"), c.zremrangebyscore("missing", 0, 1),
            c.delete("z")]


SCENARIOS = [s_set_nx_xx, s_add, s_incr_ignore_key_check, s_incr_missing_raises,
             s_incr_big_ints, s_expire_family, s_delete, s_versions, s_keys, s_lock, s_hash,
             s_sets, s_set_random, s_zsets]


# ---------------------------------------------------------------------- deployments

@pytest.fixture
def django_redis_cache(clean_redis_server):
    return RedisCache(clean_redis_server.url, {"KEY_PREFIX": "dr"})


def _fastcache(location, **params) -> FastCache:
    cache = FastCache(location, params)
    cache.clear()
    return cache


@pytest.fixture(params=["single", "single-no-l1", "cluster", "sentinel"])
def fastcache(request, clean_redis_server):
    if request.param == "single":
        return _fastcache(clean_redis_server.url, KEY_PREFIX="fc")
    if request.param == "single-no-l1":
        return _fastcache(clean_redis_server.url, KEY_PREFIX="fc", OPTIONS={"L1": False})
    if request.param == "cluster":
        cluster = request.getfixturevalue("clean_redis_cluster")
        return _fastcache(cluster.url, KEY_PREFIX="fc")
    sentinel = request.getfixturevalue("clean_redis_sentinel")
    return _fastcache("redis:///0", KEY_PREFIX="fc", OPTIONS=sentinel.options())


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__[2:] for s in SCENARIOS])
def test_same_results_as_django_redis(scenario, fastcache, django_redis_cache):
    expected = scenario(django_redis_cache)
    got = scenario(fastcache)
    assert len(got) == len(expected)
    for i, (ours, theirs) in enumerate(zip(got, expected, strict=True)):
        assert typed(ours) == typed(theirs), f"call #{i} of {scenario.__name__}"


def test_lock_class_is_redis_pys(fastcache, django_redis_cache):
    assert isinstance(fastcache.lock("x"), redis.lock.Lock)
    assert isinstance(django_redis_cache.lock("x"), redis.lock.Lock)


def test_stored_values_share_member_encoding_of_ints(fastcache, django_redis_cache):
    """Plain ints are members stored as their decimal text on both sides, so a raw
    client reading either set sees the same bytes."""
    for c in (fastcache, django_redis_cache):
        c.sadd("ints", 1, 22)
        raw = c.client.get_client(write=False)
        assert raw.smembers(c.make_key("ints") if c is fastcache
                            else c.client.make_key("ints")) == {b"1", b"22"}


# ---------------------------------------------------------------------- client access

def test_client_and_get_redis_connection(fastcache, settings):
    import django_fastcache
    from django.core.cache import caches

    client = fastcache.client.get_client(write=True)
    assert isinstance(client, (redis.Redis, redis.cluster.RedisCluster))
    assert isinstance(fastcache.client.get_client(write=False),
                      (redis.Redis, redis.cluster.RedisCluster))
    assert fastcache.client.get_client_with_index()[0] is client
    fastcache.set("k", {"a": 1})
    raw = client.get(fastcache.client.make_key("k"))
    assert fastcache.client.decode(raw) == {"a": 1}
    assert fastcache.client.reverse_key(fastcache.make_key("k")) == "k"

    settings.CACHES = {"default": {"BACKEND": "django_fastcache.cache.FastCache",
                                   "LOCATION": fastcache._location, "KEY_PREFIX": "fc",
                                   "OPTIONS": dict(fastcache._tier.clients.config.sentinels
                                                   and {"SENTINELS": list(
                                                       fastcache._tier.clients.config.sentinels),
                                                       "SENTINEL_SERVICE":
                                                       fastcache._tier.clients.config.service}
                                                   or {})}}
    conn = django_fastcache.get_redis_connection("default", write=True)
    assert conn.get(caches["default"].make_key("k")) == raw


def test_client_on_the_embedded_default_says_it_needs_redis():
    cache = FastCache("compat-embedded", {})
    with pytest.raises(ImproperlyConfigured, match="Redis LOCATION"):
        cache.client.get_client()
    for call in (lambda: cache.sadd("s", 1), lambda: cache.hset("h", "f", 1),
                 lambda: cache.zadd("z", {"a": 1}), lambda: list(cache.sscan_iter("s"))):
        with pytest.raises(ImproperlyConfigured, match=r"needs a Redis LOCATION"):
            call()


def test_get_redis_connection_on_other_backends_is_not_implemented(settings):
    import django_fastcache

    settings.CACHES = {"default": {
        "BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "embedded": {"BACKEND": "django_fastcache.cache.FastCache"}}
    with pytest.raises(NotImplementedError, match="no Redis client"):
        django_fastcache.get_redis_connection()
    with pytest.raises(NotImplementedError, match="no Redis client"):
        django_fastcache.get_redis_connection("embedded")


# ---------------------------------------------------------------------- the embedded default

def test_embedded_default_extras_match_django_redis(django_redis_cache):
    """The scenarios that need no Redis data structure, on the embedded default."""
    cache = FastCache("compat-embedded-extras", {"KEY_PREFIX": "fc"})
    cache.clear()
    for scenario in (s_set_nx_xx, s_add, s_incr_ignore_key_check, s_incr_missing_raises,
                     s_delete):
        django_redis_cache.clear()
        expected = scenario(django_redis_cache)
        got = scenario(cache)
        assert typed(got) == typed(expected), scenario.__name__


# ---------------------------------------------------------------------- cluster slots

def test_cluster_multi_key_commands_without_a_shared_hash_tag_are_refused(clean_redis_cluster):
    cache = _fastcache(clean_redis_cluster.url, KEY_PREFIX="fc")
    cache.sadd("alpha", 1)
    cache.sadd("beta", 1)
    for call in (lambda: cache.sinter("alpha", "beta"), lambda: cache.sunion("alpha", "beta"),
                 lambda: cache.sdiff("alpha", "beta"),
                 lambda: cache.sunionstore("gamma", "alpha", "beta"),
                 lambda: cache.smove("alpha", "beta", 1)):
        with pytest.raises(CrossSlotError, match="hash tag"):
            call()
    # One hash tag: one slot, whatever the rest of the key says.
    cache.sadd("{t}alpha", 1, 2)
    cache.sadd("{t}beta", 2, 3)
    assert cache.sinter("{t}alpha", "{t}beta") == {2}
    assert cache.sunionstore("{t}gamma", "{t}alpha", "{t}beta") == 3


def test_cluster_hash_tagged_prefix_puts_every_key_in_one_slot(clean_redis_cluster):
    cache = _fastcache(clean_redis_cluster.url, KEY_PREFIX="{site}")
    cache.sadd("alpha", 1, 2)
    cache.sadd("beta", 2)
    assert cache.sdiff("alpha", "beta") == {1}


# ---------------------------------------------------------------------- the L1 is never stale

def _in_l1(cache, key, value) -> None:
    """Reads ``key`` until its value is held in the L1 (the invalidation listener starts
    on first use; until it is subscribed, reads bypass the L1)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        assert cache.get(key) == value
        if cache.stats()["l1_entries"] >= 1:
            return
        time.sleep(0.01)
    pytest.fail("the value never reached the L1")


def _held_cache(url, **params):
    """A FastCache on the Python invalidation listener (the one kept for TLS), whose
    message handling a test can hold back; the native listener offers no such hook."""
    # A LOCATION of its own (database 9), so that no store of an earlier test, and its
    # native listener, is reused.
    with mock.patch.object(coherence, "_needs_tls", return_value=True):
        cache = _fastcache(url.rstrip("/") + "/9", **params)
        cache.get("warm-up")  # starts the listener
    assert isinstance(cache._tier.listener, coherence.PythonInvalidationListener)
    return cache


@contextlib.contextmanager
def _listener_held(cache):
    """Holds back the invalidation messages Redis sends this process while the block
    runs, so that only the write path's own invalidation can keep the L1 right."""
    listener = cache._tier.listener
    release = threading.Event()
    drain = listener._drain

    def held(link):
        release.wait(5)
        drain(link)

    listener._drain = held
    try:
        yield
    finally:
        release.set()
        del listener._drain


def _overwrites(c):
    """Writes that replace a plain value held under "k" by a data structure."""
    c.sadd("{k}src", 1)
    return [
        lambda: c.sunionstore("k", "{k}src"),
        lambda: c.sinterstore("k", "{k}src"),
        lambda: c.sdiffstore("k", "{k}src"),
        lambda: (c.delete("k"), c.sadd("k", 1)),
        lambda: (c.delete("k"), c.hset("k", "f", 1)),
        lambda: (c.delete("k"), c.zadd("k", {"a": 1})),
    ]


@pytest.mark.parametrize("index", range(6))
def test_l1_copy_is_dropped_when_the_key_becomes_a_structure(clean_redis_server, index):
    cache = _held_cache(clean_redis_server.url, KEY_PREFIX="{k}")
    cache.set("k", "plain")
    _in_l1(cache, "k", "plain")
    overwrite = _overwrites(cache)[index]
    with _listener_held(cache):
        overwrite()
        # Not the L1's "plain": the key now holds a structure, which get reads as a miss.
        assert cache.get("k") is None


def test_l1_copy_is_dropped_by_set_xx_and_incr_ignore_key_check(clean_redis_server):
    cache = _held_cache(clean_redis_server.url, KEY_PREFIX="fc")
    cache.set("k", 1)
    _in_l1(cache, "k", 1)
    with _listener_held(cache):
        assert cache.set("k", 2, xx=True) is True
        assert cache.get("k") == 2
        assert cache.incr("k", 5, ignore_key_check=True) == 7
        assert cache.get("k") == 7
        assert cache.persist("k") is True and cache.get("k") == 7
    assert cache.expire("k", DEFAULT_TIMEOUT) and cache.ttl("k") == 300


def test_structure_writes_from_another_client_reach_the_l1(clean_redis_server):
    """Another process turns a key this process holds in its L1 into a set."""
    ours = _fastcache(clean_redis_server.url, KEY_PREFIX="fc")
    theirs = FastCache(clean_redis_server.url, {"KEY_PREFIX": "fc", "OPTIONS": {"L1": False}})
    ours.set("k", "plain")
    _in_l1(ours, "k", "plain")
    raw = redis.Redis.from_url(clean_redis_server.url)
    raw.delete(ours.make_key("k"))
    theirs.sadd("k", 1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if ours.get("k") is None:  # the structure reads as a miss once the copy is gone
            break
        time.sleep(0.01)
    else:
        pytest.fail("the L1 kept a copy of a key that is now a set")


# ---------------------------------------------------------------------- differences on purpose

def test_difference_ignore_exceptions_is_on_by_default():
    """django-redis raises on a dead Redis unless IGNORE_EXCEPTIONS; FastCache serves a
    miss by default, and with IGNORE_EXCEPTIONS=False raises an error that code written for
    django-redis (catching redis-py's ConnectionError) catches."""
    from redis_servers import free_port

    url = f"redis://127.0.0.1:{free_port()}"
    theirs = RedisCache(url, {"OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2}})
    with pytest.raises(redis.exceptions.ConnectionError):
        theirs.get("k")
    ours = FastCache(url, {"OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2}})
    assert ours.get("k") is None
    assert ours.scard("s") == 0 and ours.smembers("s") == set() and ours.zpopmax("z") is None
    assert ours.sadd("s", 1) == 0 and ours.hkeys("h") == []
    strict = FastCache(url, {"OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2,
                                          "IGNORE_EXCEPTIONS": False}})
    with pytest.raises(redis.exceptions.ConnectionError) as caught:
        strict.sadd("s", 1)
    assert isinstance(caught.value, ConnectionInterrupted)
    assert isinstance(caught.value, ConnectionError)


def test_timeout_twin_is_redis_pys_timeout_error():
    from redis_servers import RedisServer

    with RedisServer() as server:
        cache = FastCache(server.url, {"OPTIONS": {
            "SOCKET_TIMEOUT": 0.2, "IGNORE_EXCEPTIONS": False, "L1": False,
            "CIRCUIT_BREAKER_THRESHOLD": 0}})
        assert cache.sadd("s", 1) == 1
        server.pause()
        try:
            with pytest.raises(redis.exceptions.TimeoutError) as caught:
                cache.scard("s")
        finally:
            server.resume()
        assert isinstance(caught.value, ConnectionTimeout)
        assert isinstance(caught.value, TimeoutError)
        assert isinstance(caught.value, ConnectionInterrupted)


def test_difference_pickles_are_signed(clean_redis_server, django_redis_cache):
    """django-redis unpickles whatever Redis holds; FastCache refuses a pickle it did not
    sign (a poisoned Redis cannot run code in a worker) and serves a miss."""
    ours = _fastcache(clean_redis_server.url, KEY_PREFIX="fc")
    raw = redis.Redis.from_url(clean_redis_server.url)
    raw.set(django_redis_cache.client.make_key("p"), pickle.dumps({"evil": 1}))
    raw.set(ours.make_key("p"), pickle.dumps({"evil": 1}))
    assert django_redis_cache.get("p") == {"evil": 1}
    assert ours.get("p") is None


def test_difference_smove_applies_version_to_both_keys(fastcache, django_redis_cache):
    for c in (fastcache, django_redis_cache):
        c.sadd("{g}src", "m", version=2)
        assert c.smove("{g}src", "{g}dst", "m", version=2) is True
    assert fastcache.smembers("{g}dst", version=2) == {"m"}  # ours: the version given
    assert django_redis_cache.smembers("{g}dst") == {"m"}  # theirs: the default version


def test_difference_expire_none_persists(fastcache, django_redis_cache):
    """``expire(key, None)``: FastCache removes the timeout (as touch(key, None) does);
    django-redis passes None to Redis, which refuses it."""
    fastcache.set("k", 1)
    assert fastcache.expire("k", None) is True
    assert fastcache.ttl("k") is None
    django_redis_cache.set("k", 1)
    with pytest.raises(redis.exceptions.DataError):
        django_redis_cache.expire("k", None)


def test_difference_delete_many_of_no_keys_is_none(fastcache, django_redis_cache):
    """Django's cache contract (its test suite) wants None from ``delete_many([])``;
    django-redis answers 0. With keys, both answer the count."""
    assert fastcache.delete_many([]) is None
    assert django_redis_cache.delete_many([]) == 0


def test_difference_pexpire_default_timeout_is_the_cache_timeout(fastcache, django_redis_cache):
    """``pexpire(key, DEFAULT_TIMEOUT)``: FastCache applies the cache's TIMEOUT (300 s);
    django-redis passes that number to PEXPIRE, as 300 milliseconds."""
    for c in (fastcache, django_redis_cache):
        c.set("k", 1, timeout=None)
        assert c.pexpire("k", DEFAULT_TIMEOUT) is True
    assert fastcache.ttl("k") == 300
    assert django_redis_cache.pttl("k") <= 300


def test_difference_sscan_match_applies_to_decoded_str_members(fastcache, django_redis_cache):
    """Members are stored encoded, so FastCache matches the glob on decoded str members;
    django-redis sends the pattern pickled, which matches nothing here."""
    for c in (fastcache, django_redis_cache):
        c.sadd("s", "apple", "apricot", "banana", 42, "a*b")
    assert fastcache.sscan("s", match="ap*") == {"apple", "apricot"}
    assert set(fastcache.sscan_iter("s", match="?pp[kl]e")) == {"apple"}
    assert fastcache.sscan("s", match="a\\*b") == {"a*b"}
    assert django_redis_cache.sscan("s", match="ap*") == set()


def test_hget_and_hgetall_extend_django_redis(fastcache):
    fastcache.hset("h", mapping={"a": [1, 2], "b": None})
    assert fastcache.hget("h", "a") == [1, 2]
    assert fastcache.hget("h", "b", default="d") is None
    assert fastcache.hget("h", "zz", default="d") == "d"
    assert fastcache.hgetall("h") == {"a": [1, 2], "b": None}
    assert fastcache.hgetall("missing") == {}
    fastcache.zadd("z", {"a": 1, "b": 2})
    assert fastcache.zrevrank("z", "a") == 1
    assert fastcache.zmscore("z", "a", "nope") == [1.0, None]
    assert fastcache.zremrangebyrank("z", 0, 0) == 1 and fastcache.zrange("z", 0, -1) == ["b"]


# ---------------------------------------------------------------------- hostile data, threads

def test_members_other_programs_wrote_are_served_as_missing(fastcache, caplog):
    """Bytes this codec cannot read (a raw client, another language) are skipped and
    logged, as ``get`` serves them as a miss; the readable members still come back."""
    raw = fastcache.client.get_client(write=True)
    fastcache.sadd("s", "ok")
    raw.sadd(fastcache.make_key("s"), b"\xff\xfe garbage")
    assert fastcache.smembers("s") == {"ok"}
    assert fastcache.scard("s") == 2
    assert set(fastcache.sscan_iter("s")) == {"ok"}
    fastcache.hset("h", "good", 1)
    raw.hset(fastcache.make_key("h"), "bad", b"\xff\x00")
    assert fastcache.hget("h", "bad", default="d") == "d"
    assert fastcache.hgetall("h") == {"good": 1}
    raw.zadd(fastcache.make_key("z"), {b"\xff": 5, fastcache.client.encode("m"): 1})
    assert fastcache.zrange("z", 0, -1) == ["m"]
    assert fastcache.zrange("z", 0, -1, withscores=True) == [("m", 1.0)]
    assert fastcache.zpopmax("z") is None  # popped the unreadable member
    assert fastcache.zpopmin("z") == ("m", 1.0)
    assert "cannot be read" in caplog.text


def test_concurrent_writers_lose_nothing(fastcache):
    def work(n):
        for i in range(100):
            fastcache.sadd("s", (n, i))
            fastcache.zincrby("z", 1, "m")
            fastcache.hset("h", f"{n}:{i}", i)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fastcache.scard("s") == 800
    assert fastcache.zscore("z", "m") == 800.0
    assert fastcache.hlen("h") == 800


def test_difference_touch_none_on_a_key_without_expiry(fastcache, django_redis_cache):
    """``touch(key, None)`` answers whether the key exists (Django's contract, as
    LocMemCache answers); django-redis answers PERSIST's reply, False for a key that
    had no expiry."""
    for c in (fastcache, django_redis_cache):
        c.set("k", 1, timeout=None)
    assert fastcache.touch("k", None) is True
    assert django_redis_cache.touch("k", None) is False


_FORK_CHILD = """
import os, sys, threading
import django
from django.conf import settings
settings.configure(SECRET_KEY="x")
django.setup()
from django_fastcache import coherence
from django_fastcache.cache import FastCache

cache = FastCache(sys.argv[1], {"KEY_PREFIX": "forked"})
stop = threading.Event()

def busy():
    i = 0
    while not stop.is_set():
        cache.sadd("busy", i)
        cache.zincrby("zbusy", 1, "m")
        i += 1

t = threading.Thread(target=busy)
t.start()
codes = []
for _ in range(5):
    pid = os.fork()
    if pid == 0:  # the child: a thread of the parent was mid-call on a shared connection
        ok = cache.sadd("child", os.getpid()) == 1 and os.getpid() in cache.smembers("child")
        ok = ok and cache.hset("h", str(os.getpid()), 1) == 1 and cache.scard("busy") > 0
        os._exit(0 if ok else 1)
    codes.append(os.waitpid(pid, 0)[1])
stop.set()
t.join()
assert codes == [0] * 5, codes
assert cache.scard("child") == 5 and cache.hlen("h") == 5
print("ok")
"""


def test_fork_while_another_thread_is_mid_call(clean_redis_server):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _FORK_CHILD, clean_redis_server.url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_difference_hset_of_none_stores_none(fastcache, django_redis_cache):
    """``hset(key, field, None)``: FastCache stores None (any value ``set`` takes can be a
    hash value); django-redis passes None to redis-py, which refuses it."""
    assert fastcache.hset("h", "f", None) == 1
    assert fastcache.hexists("h", "f") and fastcache.hget("h", "f", default="d") is None
    with pytest.raises(redis.exceptions.DataError):
        django_redis_cache.hset("h", "f", None)


def test_difference_get_of_a_structure_key_is_a_miss(fastcache, django_redis_cache):
    """django-redis raises WRONGTYPE for ``get`` of a key holding a hash, set or sorted
    set; ours reads values with MGET (one round trip for get and get_many, TTLs included),
    which answers nil there: the key is a miss, as a value the cache cannot read is."""
    for c in (fastcache, django_redis_cache):
        c.hset("h", "f", 1)
        c.sadd("s", 1)
        c.zadd("z", {"m": 1})
    for key in ("h", "s", "z"):
        assert raised(lambda key=key: django_redis_cache.get(key)) == "ResponseError: WRONGTYPE"
        assert fastcache.get(key) is None
        assert fastcache.get(key, "default") == "default"
        assert fastcache.get_many([key]) == {}
