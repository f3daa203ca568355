"""The object budget (MAX_VALUE_OBJECTS) against the worst values that fit MAX_VALUE_BYTES:
one small object per input byte, containers nested to the depth limit, extension types,
keys that share a hash, each also compressed. Each costs a bounded time and allocation and
is a miss plus one rate-limited log line; honest values of every realistic size still
round-trip, identically to an unbounded codec, and what `set` accepts `get` reads back."""

from __future__ import annotations

import datetime
import decimal
import logging
import os
import struct
import time
import tracemalloc
import uuid
import zlib
import zoneinfo

import lz4.frame
import pytest
import zstandard
from contract import Point
from django.core.exceptions import ImproperlyConfigured
from django_fastcache._core import Codec
from django_fastcache.cache import _DEFAULTS, FastCache
from django_fastcache.errors import DecodeError, SerializationError, ValueTooLargeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_codec import values

KEY = b"k" * 32
MB = 1 << 20
OBJECTS = _DEFAULTS["MAX_VALUE_OBJECTS"]
HEADER = 0x80 | 0x10
Z, EXT = 0x1, 0x8
P61 = (1 << 61) - 1  # CPython hashes numbers modulo this prime
SLOWDOWN = 5 if os.environ.get("FASTCACHE_SANITIZED") == "1" else 1
# What docs/security.md promises a value costs at most: ~110 bytes per object at worst
# (an empty set and its tag, a Decimal), plus the compressed input, the decompressed body
# and the contents of its strings. Measured peaks stay under 7.5 MiB at the defaults.
PEAK_BOUND = 128 * OBJECTS + 3 * MB
# Measured: at most 5.6 ms on the 2-core machine, 12 ms under heavy load (bench_bombs.py);
# before the budget the same values cost 45-115 ms and 57-73 MiB, the hash-flooding one
# 6.5 s.
TIME_BOUND = 0.15 * SLOWDOWN


def array(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def ext(type_: int, payload: bytes) -> bytes:
    if len(payload) < 256:
        return b"\xc7" + bytes([len(payload), type_]) + payload
    return b"\xc8" + struct.pack(">HB", len(payload), type_) + payload


def plain(body: bytes) -> bytes:
    return bytes([HEADER]) + body


def zlibbed(body: bytes) -> bytes:
    return bytes([HEADER | Z]) + zlib.compress(body, 9)


def zstded(body: bytes) -> bytes:
    return bytes([HEADER | Z | EXT, 0x01]) + zstandard.ZstdCompressor().compress(body)


def lz4ed(body: bytes) -> bytes:
    return bytes([HEADER | Z | EXT, 0x02]) + lz4.frame.compress(body)


def json_value(text: bytes) -> bytes:
    return bytes([HEADER | Z | EXT, 0x10]) + zlib.compress(text, 9)


def fill(item: bytes) -> bytes:
    """As many ``item`` as fit in MAX_VALUE_BYTES, in one array."""
    n = (MB - 5) // len(item)
    return array(n) + item * n


def pairs_over(item: bytes, objects_each: int) -> bytes:
    """2-item arrays of ``item``, going over the budget only at the last pair: every
    object before it is built, then dropped (the costliest refusal)."""
    n = OBJECTS // (1 + 2 * objects_each) + 1
    return array(n) + (b"\x92" + item * 2) * n


EMPTY_SET = b"\x91\xc7\x00\x02"
DECIMAL = b"\xd4\x0b0"
UUID = b"\xd8\x0c" + bytes(16)
# Two named offsets, alternating: each datetime gets a timezone (and timedelta) of its own.
NAMED_OFFSET_DT = b"".join(
    ext(13, b"\x07\xe8\x01\x01" + bytes(8) + b"\x01" + struct.pack(">q", off) + b"abc")
    for off in (0, 60_000_000))


def distinct_ints() -> bytes:
    n = (MB - 5) // 3
    return array(n) + b"".join(b"\xcd" + struct.pack(">H", 257 + i % 60000) for i in range(n))


def many_keys() -> bytes:
    n = (MB - 5) // 6
    return b"\xdf" + struct.pack(">I", n) + b"".join(
        b"\xce" + struct.pack(">I", 1000 + i) + b"\xc0" for i in range(n))


def chains() -> bytes:
    deep = b"\x91" * 510 + b"\x90"  # the outer array makes it 512 levels
    n = OBJECTS // 511 + 1
    return array(n) + deep * n


def colliding(n: int = 20_000) -> list[bytes]:
    """Integers (as BigInt extensions) that all hash to 0."""
    return [ext(10, str(k * P61).encode()) for k in range(1, n + 1)]


def zones() -> bytes:
    keys = sorted(zoneinfo.available_timezones())
    items = [ext(13, b"\x07\xe8\x01\x01" + bytes(8) + b"\x02" + k.encode()) for k in keys]
    return array(len(items)) + b"".join(items)


REFUSED = {
    "1 MiB of nils": lambda: zlibbed(fill(b"\xc0")),
    "1 MiB of empty arrays": lambda: zlibbed(fill(b"\x90")),
    "1 MiB of empty maps": lambda: zlibbed(fill(b"\x80")),
    "1 MiB of empty sets": lambda: zlibbed(fill(EMPTY_SET)),
    "1 MiB of 1-byte strings": lambda: zlibbed(fill(b"\xa1x")),
    "1 MiB of 2-byte strings": lambda: zlibbed(fill(b"\xa2\xc4\x80")),
    "1 MiB of distinct ints > 256": lambda: zlibbed(distinct_ints()),
    "1 MiB of floats": lambda: zlibbed(fill(b"\xcb" + struct.pack(">d", 0.5))),
    "1 MiB of Decimals": lambda: zlibbed(fill(DECIMAL)),
    "1 MiB of UUIDs": lambda: zlibbed(fill(UUID)),
    "1 MiB of named-offset datetimes": lambda: zlibbed(
        array(2 * ((MB - 5) // len(NAMED_OFFSET_DT)))
        + NAMED_OFFSET_DT * ((MB - 5) // len(NAMED_OFFSET_DT))),
    "1 MiB of 4300-digit ints": lambda: zlibbed(fill(ext(10, b"9" * 4300))),
    "map of 174K distinct keys": lambda: zlibbed(many_keys()),
    "uncompressed 1 MiB of empty arrays": lambda: plain(array(MB - 16) + b"\x90" * (MB - 16)),
    "zstd: 1 MiB of empty maps": lambda: zstded(fill(b"\x80")),
    "lz4: 1 MiB of empty sets": lambda: lz4ed(fill(EMPTY_SET)),
    "chains to the depth limit": lambda: zlibbed(chains()),
    "pairs of Decimals, over at the last": lambda: zlibbed(pairs_over(DECIMAL, 1)),
    "pairs of empty sets, over at the last": lambda: zlibbed(pairs_over(EMPTY_SET, 2)),
    "zstd: pairs of UUIDs, over at the last": lambda: zstded(pairs_over(UUID, 2)),
    "lz4: pairs of empty maps, over at the last": lambda: lz4ed(pairs_over(b"\x80", 1)),
    "datetimes in every zone": lambda: zlibbed(zones()),
    "set of ints sharing one hash": lambda: zlibbed(
        array(20_001) + b"\xc7\x00\x02" + b"".join(colliding())),
    "dict keys sharing one hash": lambda: zlibbed(
        b"\xdf" + struct.pack(">I", 20_000) + b"".join(k + b"\xc0" for k in colliding())),
    "set of tuples sharing one hash": lambda: zlibbed(
        array(20_001) + b"\xc7\x00\x02"
        + b"".join(b"\x92\xc7\x00\x01" + k for k in colliding())),
    "json: 1 MiB of []": lambda: json_value(b"[" + b"[]," * ((MB - 3) // 3) + b"[]]"),
    "json: [] one over the budget": lambda: json_value(b"[" + b"[]," * (OBJECTS - 1) + b"[]]"),
    "json: 1 MiB of 1-char strings": lambda: json_value(
        b"[" + b'"x",' * ((MB - 6) // 4) + b'"x"]'),
}

# The worst values the budget lets through: as many of the costliest objects as it admits.
ACCEPTED = {
    "Decimals at the budget": lambda: zlibbed(array(OBJECTS - 1) + DECIMAL * (OBJECTS - 1)),
    "empty sets at the budget": lambda: zlibbed(
        array((OBJECTS - 1) // 2) + EMPTY_SET * ((OBJECTS - 1) // 2)),
    "UUIDs at the budget": lambda: zlibbed(
        array((OBJECTS - 1) // 2) + UUID * ((OBJECTS - 1) // 2)),
    "named-offset datetimes at the budget": lambda: zlibbed(
        array((OBJECTS - 1) // 8 * 2) + NAMED_OFFSET_DT * ((OBJECTS - 1) // 8)),
    "json: [] at the budget": lambda: json_value(b"[" + b"[]," * (OBJECTS - 2) + b"[]]"),
}


def cost(data: bytes, codec: Codec) -> tuple[float, int, object]:
    """(best of two untraced times, peak traced bytes, outcome) of one loads()."""
    elapsed = float("inf")
    for _ in range(2):
        t0 = time.perf_counter()
        try:
            outcome = codec.loads(data)
        except DecodeError as exc:
            outcome = exc
        elapsed = min(elapsed, time.perf_counter() - t0)
        del outcome
    tracemalloc.start()
    try:
        outcome = codec.loads(data)
    except DecodeError as exc:
        outcome = exc
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return elapsed, peak, outcome


@pytest.mark.parametrize("name", list(REFUSED))
def test_a_hostile_value_is_refused_at_a_bounded_cost(name):
    data = REFUSED[name]()
    assert len(data) < 2 * MB
    elapsed, peak, outcome = cost(data, Codec(signing_key=KEY))
    assert isinstance(outcome, DecodeError), type(outcome)
    assert "MAX_VALUE_OBJECTS" in str(outcome) or "share a hash" in str(outcome), outcome
    assert peak < PEAK_BOUND, f"{peak / MB:.1f} MiB"
    assert elapsed < TIME_BOUND, f"{elapsed * 1e3:.1f} ms"


@pytest.mark.parametrize("name", list(ACCEPTED))
def test_the_worst_accepted_value_costs_as_little(name):
    elapsed, peak, outcome = cost(ACCEPTED[name](), Codec(signing_key=KEY))
    assert isinstance(outcome, list), outcome
    assert peak < PEAK_BOUND, f"{peak / MB:.1f} MiB"
    assert elapsed < TIME_BOUND, f"{elapsed * 1e3:.1f} ms"


def test_a_hostile_value_in_redis_is_a_miss_and_one_log_line(clean_redis_server, caplog):
    cache = FastCache(clean_redis_server.url, {"KEY_PREFIX": "budget", "OPTIONS": {
        "ERROR_LOG_INTERVAL": 1800}})
    raw = clean_redis_server.client()
    raw.set(cache.make_key("sets"), REFUSED["pairs of empty sets, over at the last"]())
    with caplog.at_level(logging.WARNING, logger="django_fastcache.redis"):
        t0 = time.perf_counter()
        for _ in range(20):
            assert cache.get("sets", "miss") == "miss"
        elapsed = time.perf_counter() - t0
    lines = [r for r in caplog.records if "cannot be read" in r.getMessage()]
    assert len(lines) == 1 and "MAX_VALUE_OBJECTS" in lines[0].getMessage()
    assert elapsed < 20 * TIME_BOUND


# ---------------------------------------------------------------------- writing

def test_a_value_over_the_budget_is_stored_as_a_signed_pickle(clean_redis_server):
    # The budget bounds what a foreign writer can make a reader build from msgpack; this
    # process's own large values still round-trip, signed, so only a key holder can write
    # one. Only with pickles forbidden does set refuse them, naming the option.
    cache = FastCache(clean_redis_server.url, {"OPTIONS": {"MAX_VALUE_OBJECTS": 100}})
    raw = clean_redis_server.client()
    cache.set("fits", list(range(99)))  # the list and its 99 items
    assert cache.get("fits") == list(range(99))
    assert not raw.get(cache.make_key("fits"))[0] & 0x2  # msgpack, not pickled
    cache.set("over", list(range(100)))
    assert cache.get("over") == list(range(100))
    stored = raw.get(cache.make_key("over"))
    assert stored[0] & 0x2 and stored[0] & 0x4, bin(stored[0])  # pickled, signed
    forbid = FastCache(clean_redis_server.url,
                       {"KEY_PREFIX": "f", "OPTIONS": {"MAX_VALUE_OBJECTS": 100,
                                                       "PICKLE": "forbid"}})
    with pytest.raises(ValueTooLargeError, match=r"101 objects .* OPTIONS\['MAX_VALUE_OBJECTS'\]"):
        forbid.set("over", list(range(100)))
    assert forbid.get("over") is None
    raw.close()


def test_max_value_objects_is_validated_at_start_up():
    for bad in (0, -1, "65536", 1.5, True):
        with pytest.raises(ImproperlyConfigured, match="MAX_VALUE_OBJECTS"):
            FastCache("budget-options", {"OPTIONS": {"MAX_VALUE_OBJECTS": bad}})


def test_none_lifts_the_budget(clean_redis_server):
    cache = FastCache(clean_redis_server.url, {"OPTIONS": {"MAX_VALUE_OBJECTS": None}})
    big = list(range(200_000))
    cache.set("big", big)
    assert cache.get("big") == big
    unbounded = Codec(signing_key=KEY, max_value_objects=0)
    assert len(unbounded.loads(zlibbed(array(OBJECTS) + DECIMAL * OBJECTS))) == OBJECTS


def test_pickled_values_are_not_counted():
    # A signed pickle can only come from a holder of the signing key, and its objects
    # cannot be counted without running it: MAX_VALUE_BYTES alone bounds it.
    c = Codec(signing_key=KEY, max_value_objects=10)
    value = [uuid.UUID(int=i) for i in range(100)] + [Point(1, 2)]  # Point needs pickle
    assert len(c.loads(c.dumps(value))) == 101
    p = Codec(serializer="pickle", signing_key=KEY, max_value_objects=10)
    assert p.loads(p.dumps(list(range(1000)))) == list(range(1000))


# ---------------------------------------------------------------------- honest values

def rows(n: int, fields: int = 10) -> list[dict]:
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    return [{f"field_{j}": (i * j if j % 3 else f"text {i}-{j}") for j in range(fields - 2)}
            | {"created": now + datetime.timedelta(seconds=i), "price": decimal.Decimal(i) / 100}
            for i in range(n)]


REALISTIC = {
    "1,000 dicts of 10 fields": lambda: rows(1000),
    "2,000 rows of .values()": lambda: rows(2000, 8),
    "5,000 rows of .values_list()": lambda: [
        (i, f"name {i}", i * 3, None, True, 1.5, "x" * 20, i) for i in range(5000)],
    "a rendered page": lambda: "<html>" + "<p>lorem ipsum dolor</p>" * 40_000 + "</html>",
    "10,000 ids": lambda: list(range(10**6, 10**6 + 10_000)),
    "a 5,000-entry dict keyed by user id": lambda: {10**5 + i: f"user{i}" for i in range(5000)},
    "1 MiB of bytes": lambda: b"\xff" * (MB - 16),
}


@pytest.mark.parametrize("name", list(REALISTIC))
def test_realistic_values_round_trip_under_the_default(name):
    value = REALISTIC[name]()
    c = Codec(signing_key=KEY, compress_min_bytes=4096)
    assert c.loads(c.dumps(value)) == value
    j = Codec(serializer="json", signing_key=KEY, compress_min_bytes=4096)
    j.loads(j.dumps(value))  # JSON bodies are counted too (bytes are pickled there)


def test_keys_that_share_a_hash_are_read_or_pickled():
    c = Codec(signing_key=KEY)
    honest = [{-1, -2}, {-1: "a", -2: "b"}, {k * P61 for k in range(1, 9)},
              {(k * P61, 0): k for k in range(8)}, frozenset({1, 2.5})]
    for value in honest:
        assert c.loads(c.dumps(value)) == value
    # Nine keys with one hash: a reader would refuse the msgpack form, so set pickles it.
    flooding = [{k * P61 for k in range(1, 10)}, {(k * P61,): k for k in range(9)}]
    for value in flooding:
        data = c.dumps(value)
        assert data[0] & 0x2 and c.loads(data) == value  # a signed pickle
    with pytest.raises(SerializationError):
        Codec(pickle="forbid").dumps(flooding[0])
    body = array(10) + b"\xc7\x00\x02" + b"".join(colliding(9))
    with pytest.raises(DecodeError, match="share a hash"):
        c.loads(plain(body))


def test_decoded_uuids_are_the_uuids_written():
    c = Codec(signing_key=KEY)
    ids = [uuid.uuid4(), uuid.uuid1(), uuid.UUID(int=0), uuid.UUID(int=(1 << 128) - 1)]
    back = c.loads(c.dumps(ids))
    for a, b in zip(ids, back, strict=True):
        assert type(b) is uuid.UUID and a == b and hash(a) == hash(b) and str(a) == str(b)
        assert b.is_safe is uuid.SafeUUID.unknown and b.version == a.version
        with pytest.raises(TypeError):
            b.int = 1  # still immutable


# ---------------------------------------------------------------------- differential

BUDGETS = range(1, 121)


def _fits(fn) -> bool:
    try:
        fn()
    except (ValueTooLargeError, DecodeError, SerializationError) as exc:
        assert ("MAX_VALUE_OBJECTS" in str(exc) or "share a hash" in str(exc)
                or "needs pickle" in str(exc)), exc
        return False
    return True


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_what_set_accepts_get_reads_back_identically(value):
    unbounded = Codec(signing_key=KEY, pickle="unsigned", max_value_objects=0)
    data = unbounded.dumps(value)
    expected = unbounded.loads(data)
    default = Codec(signing_key=KEY, pickle="unsigned")
    assert default.dumps(value) == data  # the budget changes no byte
    got = default.loads(data)
    assert type(got) is type(expected) and repr(got) == repr(expected)
    counted = data[:1] == bytes([HEADER])  # a msgpack body (not a pickle, not a bare int)
    for budget in BUDGETS:
        c = Codec(signing_key=KEY, pickle="unsigned", max_value_objects=budget)
        read = _fits(lambda c=c: c.loads(data))
        if counted:
            # The writer counts what a reader will: with pickles forbidden it refuses
            # exactly the values a reader would refuse.
            strict = Codec(signing_key=KEY, pickle="forbid", max_value_objects=budget)
            assert read == _fits(lambda strict=strict: strict.dumps(value)), budget
        else:
            assert read, budget
        # Otherwise a value over the budget is pickled: what set accepts, get reads back.
        back = c.loads(c.dumps(value))
        assert type(back) is type(expected) and repr(back) == repr(expected), budget


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30))
def test_json_bodies_count_as_msgpack_bodies_do(value):
    for budget in (1, 2, 3, 5, 8, 13, 21, 34, 55, 89):
        j = Codec(serializer="json", signing_key=KEY, max_value_objects=budget)
        m = Codec(signing_key=KEY, max_value_objects=budget)
        ok = _fits(lambda j=j: j.dumps(value))
        assert ok == _fits(lambda m=m: m.dumps(value)), budget
        if ok:
            assert j.loads(j.dumps(value)) == value
