"""The codec against whoever can write to the cache's Redis: decompression and container
bombs are bounded by MAX_VALUE_BYTES and by what the input can describe, and cost a miss
plus a rate-limited log line; signed pickles survive a SECRET_KEY rotation; the
compressors (zlib, zstd, lz4) and serializers (msgpack, pickle, json) each keep their
promises, and a value stays readable after the site switches compressor."""

from __future__ import annotations

import datetime
import decimal
import json
import logging
import struct
import subprocess
import sys
import time
import tracemalloc
import uuid
import zlib

import lz4.frame
import pytest
import zstandard
from contract import Point
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings
from django_fastcache import checks as fc_checks
from django_fastcache._core import Codec
from django_fastcache.cache import FastCache
from django_fastcache.errors import (
    DecodeError,
    SerializationError,
    SignatureError,
    ValueTooLargeError,
)

KEY = b"k" * 32
MB = 1 << 20
HEADER = 0x80 | 0x10


def array_header(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def cost(fn):
    """(seconds, peak traced bytes, outcome) of one call."""
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        outcome = fn()
    except DecodeError as exc:
        outcome = exc
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak, outcome


# ---------------------------------------------------------------------- bombs

def test_the_issues_zlib_bomb_is_a_cheap_refusal():
    # 16 KB of zlib holding 16M msgpack nils: 360 ms and 256 MiB per get before.
    bomb = bytes([HEADER | 0x1]) + zlib.compress(array_header(16 << 20) + b"\xc0" * (16 << 20), 9)
    assert len(bomb) < 20_000
    elapsed, peak, outcome = cost(lambda: Codec(signing_key=KEY).loads(bomb))
    assert isinstance(outcome, DecodeError) and "MAX_VALUE_BYTES" in str(outcome)
    assert peak < 8 * MB  # the 1 MiB bound and the compressed input, never the 16 MiB body
    assert elapsed < 1.0  # ~3 ms measured (benchmarks/bench_bombs.py); 10x+ looser


@pytest.mark.parametrize("compressor", ["zstd", "lz4"])
def test_zstd_and_lz4_bombs_are_refused_within_the_bound(compressor):
    zeros = b"\0" * (64 * MB)
    if compressor == "zstd":
        # A zstd frame declares its size: zstandard's decompress() would allocate it all.
        frame = bytes([HEADER | 0x1 | 0x8, 0x01]) + zstandard.ZstdCompressor().compress(zeros)
        unsized = bytes([HEADER | 0x1 | 0x8, 0x01]) + zstandard.ZstdCompressor(
            write_content_size=False).compress(zeros)
    else:
        frame = bytes([HEADER | 0x1 | 0x8, 0x02]) + lz4.frame.compress(zeros)
        unsized = bytes([HEADER | 0x1 | 0x8, 0x02]) + lz4.frame.compress(zeros, store_size=False)
    for data in (frame, unsized):
        elapsed, peak, outcome = cost(lambda data=data: Codec(signing_key=KEY).loads(data))
        assert isinstance(outcome, DecodeError) and "MAX_VALUE_BYTES" in str(outcome)
        assert peak < 8 * MB and elapsed < 1.0


def test_nested_containers_cannot_claim_the_same_bytes_twice():
    # Each array claims "the rest of the input": each alone fits, together they would
    # presize 500 x 1 MiB slots.
    body = b"".join(array_header(MB - 5 * (i + 1)) for i in range(500)) + b"\xc0" * 1000
    data = bytes([HEADER | 0x1]) + zlib.compress(body)
    elapsed, peak, outcome = cost(lambda: Codec(signing_key=KEY).loads(data))
    assert isinstance(outcome, DecodeError) and "claim more items" in str(outcome)
    assert peak < 8 * MB


def test_claims_count_maps_twice_and_honest_bodies_still_read():
    with pytest.raises(DecodeError, match="claim more items"):
        # A map of 2 pairs claims 4 values; 3 bytes follow its header.
        Codec(signing_key=KEY).loads(bytes([HEADER]) + b"\x82\xc0\xc0\xc0")
    value = [[], {}, [[1, 2], {"a": (3,)}], {"k": {"j": []}}]
    c = Codec(signing_key=KEY)
    assert c.loads(c.dumps(value)) == value


def test_an_uncompressed_body_over_the_bound_is_refused():
    c = Codec(signing_key=KEY, max_value_bytes=1024)
    with pytest.raises(DecodeError, match="MAX_VALUE_BYTES"):
        c.loads(bytes([HEADER]) + b"\xc5\x08\x00" + b"x" * 2048)


def test_writing_a_value_over_the_bound_raises_naming_the_option():
    c = Codec(signing_key=KEY, compress_min_bytes=0, max_value_bytes=4096)
    with pytest.raises(ValueTooLargeError, match="MAX_VALUE_BYTES"):
        c.dumps("x" * 5000)  # checked before compression: a reader would refuse it
    assert issubclass(ValueTooLargeError, ValueError)
    assert c.loads(c.dumps("x" * 4000)) == "x" * 4000


def test_max_value_bytes_is_an_option(clean_redis_server):
    cache = FastCache(clean_redis_server.url, {"OPTIONS": {"MAX_VALUE_BYTES": 2048}})
    with pytest.raises(ValueTooLargeError, match="MAX_VALUE_BYTES"):
        cache.set("big", "y" * 4096)
    big = FastCache(clean_redis_server.url, {"OPTIONS": {"MAX_VALUE_BYTES": 8 * MB}})
    big.set("big", "y" * (2 * MB))
    assert big.get("big") == "y" * (2 * MB)
    with pytest.raises(ImproperlyConfigured, match="MAX_VALUE_BYTES"):
        FastCache(clean_redis_server.url, {"OPTIONS": {"MAX_VALUE_BYTES": 10}})


def test_a_hostile_value_in_redis_is_a_miss_and_one_log_line(clean_redis_server, caplog):
    # Policies (and their log rate) are per LOCATION and OPTIONS, shared by the process:
    # an interval of its own gives this test a rate of its own.
    cache = FastCache(clean_redis_server.url, {"KEY_PREFIX": "site", "OPTIONS": {
        "L1": False, "ERROR_LOG_INTERVAL": 3600}})
    raw = clean_redis_server.client()
    bomb = bytes([HEADER | 0x1]) + zlib.compress(array_header(16 << 20) + b"\xc0" * (16 << 20))
    raw.set(cache.make_key("bomb"), bomb)
    with caplog.at_level(logging.WARNING, logger="django_fastcache.redis"):
        t0 = time.perf_counter()
        for _ in range(50):
            assert cache.get("bomb", "miss") == "miss"
        elapsed = time.perf_counter() - t0
    lines = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(lines) == 1  # rate-limited: one line per ERROR_LOG_INTERVAL
    assert elapsed < 50 * 0.1  # a few ms each; 10x+ looser


# ---------------------------------------------------------------------- compressors

@pytest.mark.parametrize("compressor", ["zlib", "zstd", "lz4"])
def test_each_compressor_round_trips_and_names_itself_in_the_header(compressor):
    c = Codec(signing_key=KEY, compress_min_bytes=64, compressor=compressor,
              compress_level={"zlib": 6, "zstd": 3, "lz4": 0}[compressor])
    value = {"rows": [("x" * 50, i) for i in range(200)]}
    data = c.dumps(value)
    assert data[0] & 0x1  # compressed
    assert bool(data[0] & 0x8) == (compressor != "zlib")  # zlib keeps the one-byte header
    assert c.loads(data) == value
    assert c.loads(c.dumps(Point(1, 2))) == Point(1, 2)  # a compressed signed pickle too
    for reader in ("zlib", "zstd", "lz4"):  # any configuration reads any compressor
        assert Codec(signing_key=KEY, compressor=reader).loads(data) == value


def test_compressor_none_stores_bodies_as_they_are():
    c = Codec(signing_key=KEY, compress_min_bytes=0, compressor="none", compress_level=0)
    data = c.dumps("a" * 10_000)
    assert not data[0] & 0x1 and len(data) > 10_000


def test_switching_compressor_keeps_old_values_readable(clean_redis_server):
    url = clean_redis_server.url
    old = FastCache(url, {"KEY_PREFIX": "s", "OPTIONS": {"COMPRESS_MIN_BYTES": 10}})
    old.set("page", "z" * 5000)
    for name in ("zstd", "lz4", "none"):
        new = FastCache(url, {"KEY_PREFIX": "s", "OPTIONS": {
            "COMPRESSOR": name, "COMPRESS_MIN_BYTES": 10, "L1": False}})
        assert new.get("page") == "z" * 5000
        new.set(f"by-{name}", "q" * 5000)
        assert FastCache(url, {"KEY_PREFIX": "s", "OPTIONS": {"L1": False}}).get(
            f"by-{name}") == "q" * 5000


def test_compress_level_is_checked_per_compressor():
    FastCache("", {"OPTIONS": {"COMPRESSOR": "zstd", "COMPRESS_LEVEL": 19}})
    with pytest.raises(ImproperlyConfigured, match="COMPRESS_LEVEL"):
        FastCache("", {"OPTIONS": {"COMPRESSOR": "zlib", "COMPRESS_LEVEL": 19}})


# ---------------------------------------------------------------------- serializers

def test_json_bodies_are_plain_json_other_languages_can_read():
    c = Codec(signing_key=KEY, serializer="json")
    value = {"name": "Zoë", "n": [1, 2.5, None, True]}
    data = c.dumps(value)
    assert data[:2] == bytes([HEADER | 0x8, 0x10])  # header, then "body is JSON"
    assert json.loads(data[2:].decode()) == value
    assert c.loads(data) == value


def test_json_type_fidelity_is_what_json_holds():
    c = Codec(signing_key=KEY, serializer="json")
    when = datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.timezone.utc)
    u = uuid.UUID(int=7)
    assert c.loads(c.dumps((1, 2))) == [1, 2]
    assert c.loads(c.dumps({1: "a"})) == {"1": "a"}
    assert c.loads(c.dumps(when)) == "2024-05-01T12:30:00Z"  # as django-redis's JSON
    assert c.loads(c.dumps(decimal.Decimal("1.10"))) == "1.10"
    assert c.loads(c.dumps(u)) == str(u)
    assert c.loads(c.dumps(7)) == 7 and c.dumps(7) == b"7"  # still INCRBY-able
    # What JSON cannot hold is pickled (signed) as msgpack's leftovers are, or refused.
    assert c.loads(c.dumps(Point(1, 2))) == Point(1, 2)
    assert c.dumps(float("nan"))[0] & 0x2
    with pytest.raises(SerializationError):
        Codec(serializer="json", pickle="forbid").dumps(Point(1, 2))


def test_json_on_the_l1_gives_what_redis_gives(clean_redis_server):
    cache = FastCache(clean_redis_server.url,
                      {"KEY_PREFIX": "j", "OPTIONS": {"SERIALIZER": "json"}})
    embedded = FastCache("json-l1", {"OPTIONS": {"SERIALIZER": "json"}})
    for c in (cache, embedded):
        c.set("t", (1, datetime.date(2024, 1, 2)))
        assert c.get("t") == [1, "2024-01-02"]
    raw_reader = FastCache(clean_redis_server.url, {"KEY_PREFIX": "j", "OPTIONS": {"L1": False}})
    assert raw_reader.get("t") == [1, "2024-01-02"]  # read back from Redis by any serializer


def test_msgpack_and_pickle_serializers_are_exact():
    value = {"t": (1, 2), "s": {3}, "d": decimal.Decimal("1.10"), "u": uuid.UUID(int=1)}
    for serializer in ("msgpack", "pickle"):
        c = Codec(signing_key=KEY, serializer=serializer)
        assert c.loads(c.dumps(value)) == value


def test_a_long_decimal_round_trips():
    # Decimal texts over 4096 characters are refused by the reader: they are pickled.
    c = Codec(signing_key=KEY)
    d = decimal.Decimal("7" * 100_000)
    assert c.loads(c.dumps(d)) == d


# ---------------------------------------------------------------------- key rotation

def test_signed_values_survive_a_secret_key_rotation(clean_redis_server, caplog):
    url = clean_redis_server.url
    with override_settings(SECRET_KEY="old-secret"):
        FastCache(url, {"KEY_PREFIX": "r"}).set("obj", Point(1, 2))
    with override_settings(SECRET_KEY="new-secret", SECRET_KEY_FALLBACKS=["old-secret"]):
        rotated = FastCache(url, {"KEY_PREFIX": "r", "OPTIONS": {"L1": False}})
        assert rotated.get("obj") == Point(1, 2)
        rotated.set("fresh", Point(3, 4))
    with override_settings(SECRET_KEY="new-secret"):
        assert FastCache(url, {"KEY_PREFIX": "r", "OPTIONS": {"L1": False}}).get(
            "fresh") == Point(3, 4)  # signed with the current key
    with override_settings(SECRET_KEY="old-secret"), \
            caplog.at_level(logging.WARNING, logger="django_fastcache.redis"):
        old_only = FastCache(url, {"KEY_PREFIX": "r", "OPTIONS": {
            "L1": False, "ERROR_LOG_INTERVAL": 3601}})
        for _ in range(20):
            assert old_only.get("fresh") is None
    bad = [r for r in caplog.records if "SignatureError" in r.getMessage()]
    assert len(bad) == 1  # one line, not one per read


def test_signing_key_fallbacks_option():
    old = Codec(signing_key=b"o" * 32)
    new = Codec(signing_key=b"n" * 32, fallback_keys=[b"x" * 32, b"o" * 32])
    assert new.loads(old.dumps(Point(5, 6))) == Point(5, 6)
    with pytest.raises(SignatureError):
        Codec(signing_key=b"n" * 32).loads(old.dumps(Point(5, 6)))
    FastCache("", {"OPTIONS": {"SIGNING_KEY": "new", "SIGNING_KEY_FALLBACKS": ["old"]}})


def test_a_script_without_secret_key_can_use_the_embedded_default():
    script = (
        "import django\n"
        "from django.conf import settings\n"
        "settings.configure(CACHES={'default': {'BACKEND': 'django_fastcache.cache.FastCache'}})\n"
        "django.setup()\n"
        "from django.core.cache import cache\n"
        "import fractions\n"
        "cache.set('x', fractions.Fraction(1, 3))\n"
        "print(cache.get('x'))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1/3"


def test_a_redis_cache_still_needs_a_key_to_sign(clean_redis_server):
    with override_settings(SECRET_KEY=""):
        with pytest.raises(ImproperlyConfigured, match="SECRET_KEY"):
            FastCache(clean_redis_server.url, {})
        FastCache(clean_redis_server.url, {"OPTIONS": {"PICKLE": "forbid"}})


def test_check_warns_about_unsigned_pickles_in_redis(clean_redis_server):
    conf = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": clean_redis_server.url,
            "KEY_PREFIX": "c", "OPTIONS": {"PICKLE": "unsigned"}}
    with override_settings(CACHES={"default": conf}):
        assert [m.id for m in fc_checks.check_unsigned_pickle()] == ["fastcache.W210"]
    with override_settings(CACHES={"default": {**conf, "OPTIONS": {}}}):
        assert fc_checks.check_unsigned_pickle() == []
    embedded = {"BACKEND": "django_fastcache.cache.FastCache", "OPTIONS": {"PICKLE": "unsigned"}}
    with override_settings(CACHES={"default": embedded}):
        assert fc_checks.check_unsigned_pickle() == []  # its values never leave the process


# ---------------------------------------------------------------------- memory accounting

def test_the_l1_charges_decimals_and_containers_their_real_size():
    cache = FastCache("charges", {})
    cache.clear()
    before = cache._store.stats()["bytes"]
    values = [decimal.Decimal("7" * 100_000) for _ in range(50)]
    cache.set("decimals", values)
    charged = cache._store.stats()["bytes"] - before
    real = sum(sys.getsizeof(d) for d in values) + sys.getsizeof(values)
    assert real <= charged < 2 * real  # was 50 x 104 bytes
    before = cache._store.stats()["bytes"]
    table = {i: i for i in range(10_000)}
    cache.set("table", table)
    assert cache._store.stats()["bytes"] - before >= sys.getsizeof(table)
