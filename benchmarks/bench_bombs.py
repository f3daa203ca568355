"""What the worst hostile values we could build cost one ``get`` under the default options.

Someone who can write to the cache's Redis (a neighbour app, a compromised worker, a raw
client) writes bytes; every reader decodes them. Each row is one such value: its stored
size, what decoding it costs (time, peak traced memory, growth of the process's peak RSS)
and how it ends (a value, or the DecodeError a reader turns into a miss). The last line
names the worst row. Run: ``.venv/bin/python benchmarks/bench_bombs.py``.
"""

from __future__ import annotations

import struct
import sys
import time
import tracemalloc
import zlib
import zoneinfo

import lz4.frame
import zstandard
from django_fastcache._core import Codec
from django_fastcache.cache import _DEFAULTS
from django_fastcache.errors import DecodeError

MAX = _DEFAULTS["MAX_VALUE_BYTES"]
OBJECTS = _DEFAULTS["MAX_VALUE_OBJECTS"]
HEADER = 0x80 | 0x10
Z = 0x1  # compressed flag
EXT = 0x8  # second header byte follows
P61 = (1 << 61) - 1  # CPython hashes ints modulo this prime


def array_header(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def zlib_value(body: bytes) -> bytes:
    return bytes([HEADER | Z]) + zlib.compress(body, 9)


def filled(item: bytes, budget: int = MAX) -> bytes:
    """A msgpack array of as many ``item`` as fit in ``budget`` bytes."""
    n = (budget - 5) // len(item)
    return array_header(n) + item * n


def under_budget(item: bytes, objects_each: int, budget: int = OBJECTS) -> bytes:
    """An array of as many ``item`` as the object budget admits: the worst accepted."""
    n = (budget - 1) // objects_each
    return array_header(n) + item * n


def pairs_over_budget(item: bytes, objects_each: int, budget: int = OBJECTS) -> bytes:
    """An array of 2-item arrays of ``item`` that goes over the budget only at its last
    pair: every object before it is built, then dropped (the costliest refusal)."""
    n = budget // (1 + 2 * objects_each) + 1
    return array_header(n) + (b"\x92" + item * 2) * n


def ext(type_: int, payload: bytes) -> bytes:
    if len(payload) < 256:
        return b"\xc7" + bytes([len(payload), type_]) + payload
    return b"\xc8" + struct.pack(">HB", len(payload), type_) + payload


DECIMAL = b"\xd4\x0b0"
UUID = b"\xd8\x0c" + bytes(16)
EMPTY_SET = b"\x91\xc7\x00\x02"
# Two named offsets, alternating: each datetime gets a timezone (and timedelta) of its own.
FIXED_DT = b"".join(
    ext(13, b"\x07\xe8\x01\x01" + bytes(8) + b"\x01" + struct.pack(">q", off) + b"abc")
    for off in (0, 60_000_000))


def cases() -> list[tuple[str, bytes]]:
    deep = b"\x91" * 510 + b"\x90"  # nested to the depth limit (the outer array is one more)
    chains = OBJECTS // 511 + 1
    bigints = [ext(10, b"9" * 4300)] * ((MAX - 5) // 4304)
    colliding = [str(k * P61).encode() for k in range(1, 40_000)]
    colliding_set = b"".join(ext(10, d) for d in colliding)
    zones = [ext(13, b"\x07\xe8\x01\x01" + bytes(8) + b"\x02" + k.encode())
             for k in sorted(zoneinfo.available_timezones())]
    return [
        ("issue: zlib of 16M msgpack nils",
         zlib_value(array_header(16 << 20) + b"\xc0" * (16 << 20))),
        ("1 MiB of nils (fits the bound)", zlib_value(filled(b"\xc0"))),
        ("1 MiB of empty lists", zlib_value(filled(b"\x90"))),
        ("1 MiB of empty dicts", zlib_value(filled(b"\x80"))),
        ("1 MiB of empty sets (tagged)", zlib_value(filled(EMPTY_SET))),
        ("1 MiB of Decimal('0')", zlib_value(filled(DECIMAL))),
        ("1 MiB of UUIDs", zlib_value(filled(UUID))),
        ("1 MiB of zoned datetimes", zlib_value(filled(
            b"\xc7\x10\x0d" + b"\x07\xe8\x01\x01" + bytes(8) + b"\x02" + b"UTC"))),
        ("1 MiB of 1-char str keys in one dict", zlib_value(
            b"\xdf" + struct.pack(">I", (MAX - 5) // 2) + b"\xa0\xc0" * ((MAX - 5) // 2))),
        ("1 MiB of ints > 256", zlib_value(filled(b"\xcd\x03\xe8"))),
        ("1 MiB of floats", zlib_value(filled(b"\xcb" + struct.pack(">d", 0.5)))),
        ("nested arrays, each claiming the rest", zlib_value(
            b"".join(array_header(MAX - 5 * (i + 1)) for i in range(500)) + b"\xc0" * 1000)),
        ("chains 512 deep, over the budget", zlib_value(array_header(chains) + deep * chains)),
        ("pairs of Decimals, over at the last", zlib_value(pairs_over_budget(DECIMAL, 1))),
        ("pairs of empty sets, over at the last", zlib_value(pairs_over_budget(EMPTY_SET, 2))),
        ("Decimals at the budget", zlib_value(under_budget(DECIMAL, 1))),
        ("empty sets at the budget", zlib_value(under_budget(EMPTY_SET, 2))),
        ("UUIDs at the budget", zlib_value(under_budget(UUID, 2))),
        ("named-offset datetimes at the budget", zlib_value(
            array_header((OBJECTS - 1) // 8 * 2) + FIXED_DT * ((OBJECTS - 1) // 8))),
        ("zstd: Decimals at the budget", bytes([HEADER | Z | EXT, 0x01])
         + zstandard.ZstdCompressor().compress(under_budget(DECIMAL, 1))),
        ("lz4: empty sets at the budget", bytes([HEADER | Z | EXT, 0x02])
         + lz4.frame.compress(under_budget(EMPTY_SET, 2))),
        ("1 MiB of 4300-digit ints", zlib_value(array_header(len(bigints)) + b"".join(bigints))),
        (f"datetimes in each of {len(zones)} zones", zlib_value(
            array_header(len(zones)) + b"".join(zones))),
        ("set of ints sharing one hash", zlib_value(
            array_header(len(colliding) + 1) + b"\xc7\x00\x02" + colliding_set)),
        ("uncompressed 1 MiB + 1 body", bytes([HEADER]) + b"\xc4\x00" * ((MAX + 2) // 2)),
        ("zstd frame declaring 64 MiB", bytes([HEADER | Z | EXT, 0x01])
         + zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))),
        ("lz4 frame of 64 MiB zeros", bytes([HEADER | Z | EXT, 0x02])
         + lz4.frame.compress(b"\0" * (64 << 20))),
        ("json: 1 MiB of []", bytes([HEADER | Z | EXT, 0x10])
         + zlib.compress(b"[" + b"[]," * ((MAX - 3) // 3) + b"[]]", 9)),
        ("json: [] at the budget", bytes([HEADER | Z | EXT, 0x10])
         + zlib.compress(b"[" + b"[]," * (OBJECTS - 2) + b"[]]", 9)),
        ("json: 100k-deep nesting", bytes([HEADER | EXT, 0x10]) + b"[" * 100_000),
    ]


def decode(codec: Codec, data: bytes) -> str:
    try:
        value = codec.loads(data)
    except DecodeError as exc:
        return "miss: " + str(exc)[:48]
    return f"value ({type(value).__name__})"


def peak_rss() -> int | None:
    """The process's peak RSS in bytes since the last reset (Linux), or None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss() -> int | None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
    except OSError:
        return None
    return peak_rss()


def measure(codec: Codec, data: bytes) -> tuple[float, int, int | None, str]:
    """Best of three untraced timings; the peak RSS growth over one untraced run; the peak
    traced memory from one run under tracemalloc (which slows allocation down, so it is
    not timed)."""
    elapsed = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        outcome = decode(codec, data)
        elapsed = min(elapsed, time.perf_counter() - t0)
    before = reset_peak_rss()
    decode(codec, data)
    after = peak_rss()
    rss = None if before is None or after is None else after - before
    tracemalloc.start()
    decode(codec, data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak, rss, outcome


def main() -> None:
    codec = Codec(signing_key=b"k" * 32, compress_min_bytes=4096, max_value_bytes=MAX,
                  max_value_objects=OBJECTS)
    print(f"Python {sys.version.split()[0]}, MAX_VALUE_BYTES={MAX}, MAX_VALUE_OBJECTS={OBJECTS}; "
          f"zstandard {zstandard.__version__}, lz4 {lz4.__version__}")
    print(f"{'hostile value':40} {'stored':>8} {'time ms':>8} {'peak MiB':>9} {'RSS MiB':>8}"
          "  outcome")
    worst = None
    for name, data in cases():
        elapsed, peak, rss, outcome = measure(codec, data)
        rss_text = "?" if rss is None else f"{rss / 2**20:.1f}"
        print(f"{name:40} {len(data):>8} {elapsed * 1e3:>8.1f} {peak / 2**20:>9.1f} "
              f"{rss_text:>8}  {outcome}", flush=True)
        if worst is None or elapsed > worst[1]:
            worst = (name, elapsed, peak)
    name, elapsed, peak = worst
    print(f"worst: {name}: {elapsed * 1e3:.1f} ms, {peak / 2**20:.1f} MiB traced")


if __name__ == "__main__":
    main()
