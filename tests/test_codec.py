"""The wire codec: exact round trips (property-based), the framing of plain integers,
signed pickles, compression, and refusal of every malformed input."""

from __future__ import annotations

import datetime
import decimal
import hashlib
import hmac
import pickle
import random
import uuid
import zlib
import zoneinfo

import pytest
from contract import Point, same
from django_fastcache._core import Codec
from django_fastcache.errors import (
    DecodeError,
    SerializationError,
    SignatureError,
    UnknownFormatError,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

KEY = b"k" * 32
codec = Codec(signing_key=KEY, compress_min_bytes=64)

timezones = st.one_of(
    st.none(),
    st.just(datetime.timezone.utc),
    st.builds(
        datetime.timezone,
        st.timedeltas(min_value=datetime.timedelta(hours=-23),
                      max_value=datetime.timedelta(hours=23)),
    ),
    st.sampled_from(["Europe/Paris", "America/New_York", "Asia/Kolkata"]).map(zoneinfo.ZoneInfo),
)
hashable_leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False),
    st.text(),
    st.binary(),
    st.dates(),
    st.datetimes(timezones=timezones),
    st.times(timezones=timezones),
    st.timedeltas(),
    st.decimals(allow_nan=False),
    st.uuids(),
)
hashables = st.recursive(
    hashable_leaves,
    lambda inner: st.one_of(st.tuples(inner, inner), st.frozensets(inner, max_size=4)),
    max_leaves=8,
)
values = st.recursive(
    st.one_of(hashable_leaves, st.binary().map(bytearray)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=5).map(tuple),
        st.dictionaries(hashables, inner, max_size=5),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
    ),
    max_leaves=30,
)


# No per-example deadline: on a loaded shared machine (or under the sanitizers) one large
# generated value can take longer than hypothesis's default 200 ms.
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values)
def test_every_value_round_trips_with_its_exact_types(value):
    assert same(codec.loads(codec.dumps(value)), value)


@settings(max_examples=200, deadline=None)
@given(values)
def test_the_pickle_serializer_round_trips_too(value):
    c = Codec(serializer="pickle", signing_key=KEY)
    assert same(c.loads(c.dumps(value)), value)


@settings(max_examples=200)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_floats_keep_their_bits(value):
    out = codec.loads(codec.dumps(value))
    assert repr(out) == repr(value)


@given(st.integers())
def test_plain_ints_are_bare_decimal_digits_so_redis_can_incr_them(value):
    assert codec.dumps(value) == str(value).encode()
    assert codec.loads(str(value).encode()) == value


def test_bools_are_not_ints():
    assert codec.loads(codec.dumps(True)) is True
    assert codec.dumps(True) != b"1"


def test_str_subclasses_keep_their_type_through_pickle():
    from django.utils.safestring import SafeString, mark_safe

    out = codec.loads(codec.dumps(mark_safe("<b>hi</b>")))
    assert type(out) is SafeString


def test_values_outside_the_format_are_signed_pickles():
    data = codec.dumps(Point(1, 2))
    assert data[0] & 0x0F == 0x2 | 0x4  # pickled + signed
    assert codec.loads(data) == Point(1, 2)


def test_a_pickle_without_a_valid_signature_is_never_unpickled():
    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("an unsigned pickle was loaded",))

    body = pickle.dumps(Boom())
    header = bytes([0x80 | 0x10 | 0x2 | 0x4])
    forged = header + hmac.digest(b"wrong key" * 4, header + body, "sha256") + body
    with pytest.raises(SignatureError):
        codec.loads(forged)
    unsigned = bytes([0x80 | 0x10 | 0x2]) + body
    with pytest.raises(SignatureError):
        codec.loads(unsigned)
    # Flipping any bit of a genuine signed value breaks its signature.
    genuine = bytearray(codec.dumps(Point(1, 2)))
    genuine[-1] ^= 1
    with pytest.raises(SignatureError):
        codec.loads(bytes(genuine))


def test_unsigned_mode_reads_unsigned_pickles_and_forbid_reads_none():
    unsigned = Codec(pickle="unsigned")
    data = unsigned.dumps(Point(3, 4))
    assert unsigned.loads(data) == Point(3, 4)
    forbid = Codec(pickle="forbid")
    with pytest.raises(SignatureError):
        forbid.loads(data)
    with pytest.raises(SerializationError, match="Point"):
        forbid.dumps(Point(3, 4))


def test_signing_keys_differ_between_sites():
    other = Codec(signing_key=hashlib.sha256(b"other").digest())
    with pytest.raises(SignatureError):
        other.loads(codec.dumps(Point(1, 2)))


def test_large_bodies_are_compressed_only_when_it_helps():
    data = codec.dumps("a" * 10_000)
    assert data[0] & 0x1 and len(data) < 200
    assert codec.loads(data) == "a" * 10_000
    incompressible = random.Random(1).randbytes(500)
    assert not codec.dumps(incompressible)[0] & 0x1


def test_a_decompression_bomb_is_refused():
    bomb = bytes([0x80 | 0x10 | 0x1]) + zlib.compress(b"\x00" * (2 << 20))
    small = Codec(signing_key=KEY, max_value_bytes=1 << 20)
    with pytest.raises(DecodeError, match="size bound|truncated"):
        small.loads(bomb)


def test_unknown_format_versions_and_flags_are_refused():
    with pytest.raises(UnknownFormatError, match="version 2"):
        codec.loads(bytes([0x80 | 0x20]) + b"\xc0")
    with pytest.raises(UnknownFormatError, match="body format 12"):
        codec.loads(bytes([0x80 | 0x10 | 0x8]) + b"\xc0")
    with pytest.raises(UnknownFormatError, match="compressor 7"):
        codec.loads(bytes([0x80 | 0x10 | 0x8 | 0x1]) + b"\x07\xc0")
    with pytest.raises(DecodeError, match="second byte"):
        codec.loads(bytes([0x80 | 0x10 | 0x8]))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"-",
        b"12x",
        b"\x01abc",
        b"\x90",  # header only
        b"\x90\x92\x01",  # array of 2 with 1 item
        b"\x90\xdd\xff\xff\xff\xff",  # array claiming 4 billion items
        b"\x90\xc0\xc0",  # trailing bytes
        b"\x90\xa2\xff\xfe",  # invalid UTF-8
        b"\x90\x81\x90\x01",  # a list as a dict key
        b"\x90\xd4\x63\x00",  # unknown extension type
        b"\x90\xc7\x00\x01",  # a tag outside an array
        b"\x90\x92\xc7\x00\x04\x01",  # bytearray tag without bin
        b"\x90\xd6\x0e\x07\xe8\x0d\x01",  # date with month 13
        b"\x90\xd5\x0c\x00",  # UUID of the wrong size
        b"\x90" + b"\x91" * 600 + b"\xc0",  # nesting deeper than 512
        b"\x90\xc7\x05\x0b" + b"1.2.3",  # Decimal that does not parse
        b"\x90\xc7\x06\x0f\x01\x02\x03\x00\x00\x00",  # time without tzinfo kind
    ],
)
def test_malformed_input_raises_decode_error(data):
    with pytest.raises(DecodeError):
        codec.loads(data)


def test_decode_error_is_a_value_error():
    assert issubclass(DecodeError, ValueError)


def test_ambiguous_time_keeps_its_fold():
    tz = zoneinfo.ZoneInfo("America/New_York")
    first = datetime.datetime(2024, 11, 3, 1, 30, tzinfo=tz)
    second = first.replace(fold=1)
    assert codec.loads(codec.dumps(second)).fold == 1
    assert codec.loads(codec.dumps(second)).utcoffset() != first.utcoffset()


def test_named_fixed_offsets_keep_their_names():
    tz = datetime.timezone(datetime.timedelta(hours=5, minutes=30), "IST")
    value = datetime.datetime(2024, 1, 1, tzinfo=tz)
    assert codec.loads(codec.dumps(value)).tzname() == "IST"


class CustomTz(datetime.tzinfo):
    """A tzinfo of the user's own: only pickle rebuilds it exactly."""

    def utcoffset(self, dt):
        return datetime.timedelta(hours=1)

    def __eq__(self, other):
        return isinstance(other, CustomTz)

    __hash__ = object.__hash__


def test_foreign_tzinfo_falls_back_to_pickle():
    value = datetime.datetime(2024, 1, 1, tzinfo=CustomTz())
    data = codec.dumps(value)
    assert data[0] & 0x2
    assert codec.loads(data) == value


def test_exact_decimal_and_uuid_forms():
    for d in ["0", "-0", "1E+3", "1.000", "NaN", "-Infinity", "12345678901234567890.123"]:
        out = codec.loads(codec.dumps(decimal.Decimal(d)))
        assert str(out) == d
    u = uuid.uuid4()
    assert codec.loads(codec.dumps(u)) == u
