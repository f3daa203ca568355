"""FastCache on Redis: the contract against a single node, a 3-master cluster (with and
without a hash-tagged KEY_PREFIX), a Sentinel set (all with the coherent L1 on, the
default), and a single node with ``L1=False``; then what only the Redis tier promises:
values shared across processes, unreadable values served as misses, signed pickles, and
the L1's cap by the Redis TTL. tests/test_coherence.py covers coherence itself."""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import textwrap
import time

import pytest
from contract import CacheContract
from django_fastcache.cache import FastCache

pytestmark = pytest.mark.redis

HERE = os.path.dirname(os.path.abspath(__file__))


def make_cache(location, **params) -> FastCache:
    """A backend on ``location``, emptied (Redis and the L1 of that location)."""
    cache = FastCache(location, params)
    cache.clear()
    return cache


class TestSingleNode(CacheContract):
    @pytest.fixture
    def cache(self, clean_redis_server):
        return make_cache(clean_redis_server.url)


class TestSingleNodeUnixSocketWithPrefix(CacheContract):
    @pytest.fixture
    def cache(self, clean_redis_server):
        return make_cache(f"unix://{clean_redis_server.unix_path}", KEY_PREFIX="site", VERSION=2)


class TestCluster(CacheContract):
    """Keys spread over every master: multi-key operations span slots and nodes."""

    @pytest.fixture
    def cache(self, clean_redis_cluster):
        return make_cache(clean_redis_cluster.url)


class TestClusterHashTaggedPrefix(CacheContract):
    """A ``{app}`` hash tag in KEY_PREFIX puts every key of the cache in one slot."""

    @pytest.fixture
    def cache(self, clean_redis_cluster):
        return make_cache(clean_redis_cluster.url, KEY_PREFIX="{app}")


class TestSentinel(CacheContract):
    @pytest.fixture
    def cache(self, clean_redis_sentinel):
        return make_cache("redis:///0", OPTIONS=clean_redis_sentinel.options())


class TestSingleNodeWithoutL1(CacheContract):
    @pytest.fixture
    def cache(self, clean_redis_server):
        return make_cache(clean_redis_server.url, OPTIONS={"L1": False})


# ---------------------------------------------------------------------- across processes

_CHILD = textwrap.dedent("""
    import sys
    import django
    from django.conf import settings

    settings.configure(
        SECRET_KEY="django-fastcache-tests-not-secret",
        USE_TZ=True,
        CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache",
                            "LOCATION": sys.argv[1], "KEY_PREFIX": "x"}},
    )
    django.setup()
    import datetime, decimal
    from django.core.cache import cache

    sys.path.insert(0, sys.argv[2])
    from contract import Point
    cache.set("shared", {"when": datetime.date(2024, 2, 29), "amount": decimal.Decimal("1.50"),
                         "pair": (1, "a"), "tags": {"x"}, "point": Point(3, 4)}, 60)
    cache.set("n", 41, 60)
    print(cache.get("shared")["point"].x)
""")


def test_a_value_written_by_another_process_reads_back_exactly(clean_redis_server):
    import datetime
    import decimal

    from contract import Point

    done = subprocess.run([sys.executable, "-c", _CHILD, clean_redis_server.url, HERE],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "3"
    cache = FastCache(clean_redis_server.url, {"KEY_PREFIX": "x"})
    got = cache.get("shared")
    assert got == {"when": datetime.date(2024, 2, 29), "amount": decimal.Decimal("1.50"),
                   "pair": (1, "a"), "tags": {"x"}, "point": Point(3, 4)}
    assert type(got["pair"]) is tuple and type(got["amount"]) is decimal.Decimal
    assert cache.incr("n") == 42  # stored as a Redis integer by the other process


@pytest.fixture
def raw_and_cache(clean_redis_server):
    """A cache on the single node and a raw redis-py client to the same node. Its decode
    errors are each logged (ERROR_LOG_INTERVAL=0): the default, one line per 30 s per
    cache, is checked in tests/test_codec_security.py."""
    cache = FastCache(clean_redis_server.url, {"OPTIONS": {"ERROR_LOG_INTERVAL": 0}})
    # The L1 is shared per LOCATION: the fixture's FLUSHALL reaches it through the listener,
    # asynchronously; clear() drops an earlier test's copies here and now.
    cache.clear()
    raw = clean_redis_server.client()
    yield cache, raw, cache.make_and_validate_key
    raw.close()


@pytest.mark.parametrize("blob", [
    bytes([0xA0]) + b"\x81\xa1a\x01",  # header of format version 2: not this build's
    bytes([0xF0]),                      # version 7, no body
], ids=["version-2", "version-7-empty"])
def test_a_value_in_an_unknown_format_version_is_a_miss_and_a_log_line(raw_and_cache, caplog,
                                                                        blob):
    cache, raw, key = raw_and_cache
    raw.set(key("future"), blob)
    with caplog.at_level(logging.WARNING, logger="django_fastcache"):
        assert cache.get("future", "dflt") == "dflt"
        assert cache.get_many(["future"]) == {}
    lines = [r for r in caplog.records if r.name.startswith("django_fastcache")]
    assert len(lines) == 2 and all(r.levelno == logging.WARNING for r in lines)
    assert "future" in lines[0].getMessage()
    assert cache.stats()["decode_errors"] == 2
    assert raw.get(key("future")) == blob  # left alone for whoever can read it


@pytest.mark.parametrize("blob", [
    b"",                         # empty
    b"\x00\x01garbage",          # no header
    bytes([0x90]) + b"\xc1",     # version 1, msgpack's never-used byte
    bytes([0x90]) + b"\x92\x01",  # version 1, an array cut short
    bytes([0x91]) + b"not zlib",  # compressed flag, not zlib data
    b"12x",                      # neither an integer nor a headed value
], ids=["empty", "no-header", "bad-msgpack", "truncated", "bad-zlib", "almost-int"])
def test_corrupt_bytes_written_by_a_raw_client_are_a_miss_and_a_log_line(raw_and_cache, caplog,
                                                                          blob):
    cache, raw, key = raw_and_cache
    raw.set(key("bad"), blob)
    with caplog.at_level(logging.DEBUG, logger="django_fastcache"):
        assert cache.get("bad") is None
    lines = [r for r in caplog.records if r.name.startswith("django_fastcache")]
    assert [r.levelno for r in lines] == [logging.WARNING]
    assert "bad" in lines[0].getMessage()
    # Nothing else: the policy saw no error, the breaker stays closed, writes still work.
    stats = cache.stats()
    assert (stats["errors"], stats["breaker_state"], stats["decode_errors"]) == (0, "closed", 1)
    cache.set("bad", "repaired")
    assert cache.get("bad") == "repaired"


class Tripwire:
    """Unpickling one of these appends to a file: proof that a pickle was loaded."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (_trip, (self.path,))


def _trip(path: str):
    with open(path, "a") as f:
        f.write("unpickled\n")
    return "tripped"


@pytest.mark.parametrize("flags", [0x02, 0x06, 0x03], ids=["unsigned", "bad-signature",
                                                            "compressed-unsigned"])
def test_signed_pickle_never_unpickles_a_payload_without_a_valid_signature(
        raw_and_cache, caplog, tmp_path, flags):
    import zlib

    cache, raw, key = raw_and_cache  # PICKLE="signed" is the default
    marker = tmp_path / "tripped"
    payload = pickle.dumps(Tripwire(str(marker)))
    assert pickle.loads(payload) == "tripped" and marker.exists()  # the tripwire works
    marker.unlink()
    if flags & 0x04:
        body = b"\x00" * 32 + payload  # a forged (all-zero) signature
    elif flags & 0x01:
        body = zlib.compress(payload)
    else:
        body = payload
    raw.set(key("evil"), bytes([0x90 | flags]) + body)
    with caplog.at_level(logging.WARNING, logger="django_fastcache"):
        assert cache.get("evil") is None
        assert cache.get_many(["evil"]) == {}
        with pytest.raises(ValueError):
            cache.incr("evil")  # not an integer: read back, refused, never unpickled
    assert not marker.exists()
    assert any("signature" in r.getMessage() or "unsigned" in r.getMessage()
               for r in caplog.records)
    cache.set("fine", Tripwire(str(marker)))  # our own signed pickles still load
    assert cache.get("fine") == "tripped" and marker.exists()


# ---------------------------------------------------------------------- the L1's lifetime

@pytest.fixture
def l1_cache(clean_redis_server):
    cache = make_cache(clean_redis_server.url, KEY_PREFIX="l1t")
    raw = clean_redis_server.client()
    wait_for_listener(cache)
    yield cache, raw
    raw.close()


def wait_for_listener(cache) -> None:
    cache.get("__warm__")  # starts the listener
    deadline = time.monotonic() + 10
    while cache.stats()["l1_listener"] != "up":
        assert time.monotonic() < deadline, cache.stats()
        time.sleep(0.005)


def test_a_raw_write_replaces_the_l1_copy_at_once(l1_cache):
    cache, raw = l1_cache
    cache.set("k", "old", 60)
    assert cache.get("k") == "old" and cache.get("k") == "old"
    assert cache.stats()["l1_hits"] >= 1
    raw.set(cache.make_key("k"), cache._engine.dumps("new"), px=60_000)
    written = time.monotonic()
    while cache.get("k") != "new":
        assert time.monotonic() - written < 1.0, "the L1 kept the old value"
        time.sleep(0.0005)


def test_l1_never_outlives_the_redis_expiry(l1_cache):
    cache, raw = l1_cache
    cache.set("short", "v", timeout=0.1)  # the L1 copy takes the Redis TTL
    assert cache.get("short") == "v"
    time.sleep(0.15)
    assert cache.get("short") is None
    # Filled from a read: the L1 copy takes the TTL Redis reports.
    raw.set(cache.make_key("read"), cache._engine.dumps("r"), px=100)
    assert cache.get("read") == "r" and cache.get("read") == "r"
    time.sleep(0.15)
    assert cache.get("read") is None


def test_with_l1_off_every_read_goes_to_redis(clean_redis_server):
    cache = make_cache(clean_redis_server.url, KEY_PREFIX="nol1", OPTIONS={"L1": False})
    raw = clean_redis_server.client()
    try:
        cache.set("k", "old")
        assert cache.get("k") == "old"
        raw.set(cache.make_key("k"), cache._engine.dumps("new"))
        assert cache.get("k") == "new"
        stats = cache.stats()
        assert stats["tier"] == "redis" and not any(k.startswith("l1_") for k in stats)
        assert cache._engine.l1_get(cache.make_key("k"), None) is None
    finally:
        raw.close()


def test_threads_that_end_hand_their_connection_back(clean_redis_server):
    """Each thread keeps a connection for itself; one that ends must return it, or a
    server with short-lived threads would exhaust MAX_CONNECTIONS."""
    import gc
    import threading

    cache = make_cache(clean_redis_server.url, KEY_PREFIX="threads",
                       OPTIONS={"MAX_CONNECTIONS": 4})
    seen = []

    def request(i):
        cache.set(f"k{i}", i)
        seen.append(cache.get(f"k{i}"))

    for i in range(20):
        thread = threading.Thread(target=request, args=(i,))
        thread.start()
        thread.join()
        gc.collect()
    assert seen == list(range(20))
    assert cache.stats()["errors"] == 0
