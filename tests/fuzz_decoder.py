"""Atheris (libFuzzer) harness for the wire decoder and key building; tests/test_fuzz.py runs it
in a subprocess, bounded in time.

    python tests/fuzz_decoder.py --write-seeds DIR        # valid encodings to start from
    python tests/fuzz_decoder.py FOUND_DIR SEED_DIR -max_total_time=20 -rss_limit_mb=2048

The first input byte picks the target: a signing codec with a fixed key, a codec whose
PICKLE is "unsigned", one whose PICKLE is "forbid" (each with zlib on and a 1 MB
decompression bound), or ``FastCache.make_key``/``validate_key`` on the rest as a str key.
A decoder input may only produce a value or ``DecodeError`` (``SignatureError`` and
``UnknownFormatError`` are subclasses); any other exception is a finding and stops the run.

Pickle is reached only where the codec allows it: on the signing codec only a body whose
HMAC verifies is unpickled (a mutated one never is: the run checks exactly that refusal
path), and on "forbid" never. On "unsigned", inputs whose header byte has the pickled flag
are skipped: unpickling arbitrary bytes may raise any exception, or call any importable
callable, by design of pickle; that mode is documented as trusting the cache's contents.

The extension is built by gcc, which has no libFuzzer coverage instrumentation, so the C++
gives libFuzzer no edges. As a stand-in, each outcome (the DecodeError's message with its
numbers removed, or the set of types in a decoded value) is mapped onto one of a pool of
atheris counters reserved up front: an input that reaches a new check in the decoder, or
decodes to a new mix of types, is then new coverage and is kept in the corpus.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import os
import re
import sys
import uuid
import warnings
import zoneinfo

import django
from django.conf import settings

if not settings.configured:
    settings.configure(SECRET_KEY="fuzz", USE_TZ=True)
    django.setup()

from django.core.cache.backends.base import (  # noqa: E402
    CacheKeyWarning,
    default_key_func,
    memcache_key_warnings,
)
from django_fastcache._core import Codec  # noqa: E402
from django_fastcache.cache import FastCache  # noqa: E402
from django_fastcache.errors import DecodeError  # noqa: E402

KEY = hashlib.sha256(b"django-fastcache fuzz key").digest()
LIMIT = 1 << 20
CODECS = [
    Codec(pickle="signed", signing_key=KEY, compress_min_bytes=64, max_value_bytes=LIMIT),
    Codec(pickle="unsigned", compress_min_bytes=64, max_value_bytes=LIMIT),
    Codec(pickle="forbid", compress_min_bytes=0, max_value_bytes=LIMIT),
]
SIGNED, UNSIGNED, FORBID, KEYS = range(4)
# Writers of the other body formats and compressors, for seeds: every reader above reads
# them all (the header says which), so mutations reach the JSON, zstd and lz4 readers.
WRITERS = [
    Codec(serializer="json", signing_key=KEY, compress_min_bytes=64, max_value_bytes=LIMIT),
    Codec(compressor="zstd", compress_level=3, signing_key=KEY, compress_min_bytes=64,
          max_value_bytes=LIMIT),
    Codec(compressor="lz4", compress_level=0, signing_key=KEY, compress_min_bytes=64,
          max_value_bytes=LIMIT),
]
PICKLED_FLAG = 0x02
PREFIX = "fz"
CACHE = FastCache("fuzz-keys", {"KEY_PREFIX": PREFIX, "OPTIONS": {"PICKLE": "forbid"}})

# What a msgpack body may decode to. Anything else from a non-pickled input is a finding.
DECODED_TYPES = {
    type(None), bool, int, float, str, bytes, bytearray, list, tuple, dict, set, frozenset,
    datetime.datetime, datetime.date, datetime.time, datetime.timedelta, decimal.Decimal,
    uuid.UUID,
}


class Finding(AssertionError):
    """A decoder or key-building result that breaks the contract."""


class Sample:
    """A plain object: only a (signed) pickle can carry it."""

    def __init__(self, n):
        self.n = n

    def __eq__(self, other):
        return isinstance(other, Sample) and other.n == self.n


class _Version(int):
    """An int subclass with its own str(): Django formats versions with "%s"."""

    def __str__(self):
        return f"v{int(self)}"


# ----------------------------------------------------------------------------- feedback

_POOL_SIZE = 2048
_pool: list[int] = []


def _reserve_pool() -> None:
    import atheris

    # Private in name only: atheris's own bytecode instrumentation is built on these two.
    _pool.extend(atheris._reserve_counter() for _ in range(_POOL_SIZE))


def _signal(outcome: str) -> None:
    if _pool:
        import atheris

        digest = int.from_bytes(hashlib.blake2b(outcome.encode(), digest_size=4).digest(), "big")
        atheris._trace_branch(_pool[digest % _POOL_SIZE])


def _types_in(value, budget: int = 256) -> str:
    """The sorted names of the types found in `value` (a bounded walk, no recursion)."""
    seen, stack = set(), [value]
    while stack and budget:
        budget -= 1
        v = stack.pop()
        seen.add(type(v).__name__)
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
    return ",".join(sorted(seen))


# ----------------------------------------------------------------------------- targets

def _check_decoded(value, codec: Codec) -> None:
    stack, budget = [value], 100_000
    while stack and budget:
        budget -= 1
        v = stack.pop()
        if type(v) not in DECODED_TYPES:
            raise Finding(f"msgpack body decoded to a {type(v).__name__}")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple, set, frozenset)):
            stack.extend(v)
    # Whatever the decoder builds, the encoder must take back without needing pickle.
    try:
        again = codec.dumps(value)
        codec.loads(again)
    except Exception as exc:
        raise Finding(f"a decoded value does not re-encode: {exc!r}") from exc


def decode_one(mode: int, body: bytes) -> str:
    """Decodes `body` with codec `mode`; returns "value", "error" or "skipped"."""
    codec = CODECS[mode]
    headed_pickle = bool(body) and body[0] & 0x80 and body[0] & PICKLED_FLAG
    if mode == UNSIGNED and headed_pickle:
        return "skipped"  # see the module docstring: arbitrary pickles are out of scope
    try:
        value = codec.loads(body)
    except DecodeError as exc:
        _signal(f"{mode}:{type(exc).__name__}:{re.sub(r'[0-9]+', '#', str(exc))}")
        return "error"
    _signal(f"{mode}:ok:{_types_in(value)}")
    if not headed_pickle:
        _check_decoded(value, codec)
    return "value"


def key_one(selector: int, text: str) -> None:
    versions = [1, 0, -7, 2**63, -(2**70), "v2", None, 3.5, True, _Version(4)]
    version = versions[selector % len(versions)]
    made = CACHE.make_key(text, version=version)
    expected = default_key_func(text, PREFIX, 1 if version is None else version)
    if made != expected:
        raise Finding(f"make_key({text!r}, version={version!r}) = {made!r}, Django: {expected!r}")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        CACHE.validate_key(made)
    got = [str(w.message) for w in caught if issubclass(w.category, CacheKeyWarning)]
    want = list(memcache_key_warnings(made))
    if got != want or len(caught) != len(got):
        raise Finding(f"validate_key({made!r}) warned {got!r}, Django: {want!r}")
    _signal(f"key:{len(want)}:{len(made) > 250}")


def test_one_input(data: bytes) -> None:
    if not data:
        return
    mode = data[0] % 4
    if mode == KEYS:
        selector = data[1] if len(data) > 1 else 0
        key_one(selector, data[2:].decode("utf-8", "surrogateescape"))
    else:
        decode_one(mode, data[1:])


# ----------------------------------------------------------------------------- seeds

def seed_values() -> list:
    tz = zoneinfo.ZoneInfo("Europe/Paris")
    leaves = [
        None, True, False, 0, 1, -1, 127, 128, -33, 2**31, 2**63 - 1, 2**64 - 1, 2**64, -(2**63),
        -(2**100), 10**300, 0.0, -0.0, 1.5, float("inf"), float("nan"), "", "a", "ünï ✓",
        "x" * 40, "y" * 300, "z" * 70_000, b"", b"\x00\xff", b"b" * 300, bytearray(b"ba"),
        bytearray(), datetime.date(2024, 2, 29), datetime.date(1, 1, 1),
        datetime.datetime(2024, 1, 2, 3, 4, 5, 678901),
        datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc),
        datetime.datetime(2024, 11, 3, 1, 30, fold=1, tzinfo=zoneinfo.ZoneInfo("America/New_York")),
        datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5), "IST")),
        datetime.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=tz),
        datetime.time(23, 59, 59, 999999),
        datetime.time(1, 2, tzinfo=datetime.timezone(-datetime.timedelta(hours=3))),
        datetime.time(12, tzinfo=tz), datetime.timedelta(days=-2, seconds=7, microseconds=9),
        datetime.timedelta.max, datetime.timedelta.min, decimal.Decimal("3.1400"),
        decimal.Decimal("-Infinity"), decimal.Decimal("NaN"), decimal.Decimal("1E+999"),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
    ]
    containers = [
        [], (), {}, set(), frozenset(), [1, [2, [3, [4]]]], (1, "a", (2.5, (None,))),
        {"a": 1, "b": [1, 2], (1, 2): {"n": None}, 3: frozenset({1})},
        {1, "two", (3, 4)}, frozenset({"a", (1, 2)}), [bytearray(b"x"), (bytearray(b"y"),)],
        {"id": 1, "name": "x" * 200, "tags": ["a", "b", "c"], "score": 1.5, "ok": True},
        list(range(100)), {str(i): i for i in range(50)}, [[[]]] * 3, [leaves[:10]] * 20,
    ]
    deep: list = []
    for _ in range(40):
        deep = [deep]
    return leaves + containers + [leaves, tuple(leaves[:20]), deep, {"deep": deep}]


def seed_inputs() -> list[bytes]:
    out = []
    for value in seed_values():
        for mode in (SIGNED, UNSIGNED, FORBID):
            out.append(bytes([mode]) + CODECS[mode].dumps(value))
    for obj in [Sample(1), {"s": Sample("x" * 500)}, [Sample(i) for i in range(30)]]:
        out.append(bytes([SIGNED]) + CODECS[SIGNED].dumps(obj))  # signed pickles
    for value in seed_values():
        for writer in WRITERS:
            out.append(bytes([SIGNED]) + writer.dumps(value))
    signed_pickle_only = Codec(serializer="pickle", signing_key=KEY, compress_min_bytes=64)
    out.append(bytes([SIGNED]) + signed_pickle_only.dumps({"a": [1, 2, 3] * 50}))
    for key in ["k", "user:42", "with space", "tab\there", "\x7f", "é" * 260, "x" * 251, ""]:
        for selector in range(10):
            out.append(bytes([KEYS, selector]) + key.encode("utf-8", "surrogatepass"))
    return out


def write_seeds(directory: str) -> int:
    os.makedirs(directory, exist_ok=True)
    inputs = seed_inputs()
    for data in inputs:
        name = hashlib.sha1(data).hexdigest()
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    return len(inputs)


def main(argv: list[str]) -> None:
    if len(argv) == 3 and argv[1] == "--write-seeds":
        print(f"wrote {write_seeds(argv[2])} seeds to {argv[2]}")
        return
    import atheris

    _reserve_pool()
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
