"""What the worst hostile values we could build cost one ``get`` under the default options.

Someone who can write to the cache's Redis (a neighbour app, a compromised worker, a raw
client) writes bytes; every reader decodes them. Each row is one such value: its stored
size, what decoding it costs (time, peak traced memory) and how it ends (a value, or the
DecodeError a reader turns into a miss). Run: ``.venv/bin/python benchmarks/bench_bombs.py``.
"""

from __future__ import annotations

import struct
import sys
import time
import tracemalloc
import zlib

import lz4.frame
import zstandard
from django_fastcache._core import Codec
from django_fastcache.errors import DecodeError

MAX = 1 << 20  # the default MAX_VALUE_BYTES
HEADER = 0x80 | 0x10
Z = 0x1  # compressed flag
EXT = 0x8  # second header byte follows


def array_header(n: int) -> bytes:
    return b"\xdd" + struct.pack(">I", n)


def zlib_value(body: bytes) -> bytes:
    return bytes([HEADER | Z]) + zlib.compress(body, 9)


def filled(item: bytes, budget: int = MAX) -> bytes:
    """A msgpack array of as many ``item`` as fit in ``budget`` bytes."""
    n = (budget - 5) // len(item)
    return array_header(n) + item * n


def cases() -> list[tuple[str, bytes]]:
    out = [
        ("issue: zlib of 16M msgpack nils",
         zlib_value(array_header(16 << 20) + b"\xc0" * (16 << 20))),
        ("1 MiB of nils (fits the bound)", zlib_value(filled(b"\xc0"))),
        ("1 MiB of empty lists", zlib_value(filled(b"\x90"))),
        ("1 MiB of empty dicts", zlib_value(filled(b"\x80"))),
        ("1 MiB of empty sets (tagged)", zlib_value(filled(b"\x91\xc7\x00\x02"))),
        ("1 MiB of Decimal('0')", zlib_value(filled(b"\xd4\x0b0"))),
        ("1 MiB of UUIDs", zlib_value(filled(b"\xd8\x0c" + bytes(16)))),
        ("1 MiB of zoned datetimes", zlib_value(filled(
            b"\xc7\x10\x0d" + b"\x07\xe8\x01\x01" + bytes(8) + b"\x02" + b"UTC"))),
        ("1 MiB of 1-char str keys in one dict", zlib_value(
            b"\xdf" + struct.pack(">I", (MAX - 5) // 2) + b"\xa0\xc0" * ((MAX - 5) // 2))),
        ("nested arrays, each claiming the rest", zlib_value(
            b"".join(array_header(MAX - 5 * (i + 1)) for i in range(500)) + b"\xc0" * 1000)),
        ("uncompressed 1 MiB + 1 body", bytes([HEADER]) + b"\xc4\x00" * ((MAX + 2) // 2)),
        ("zstd frame declaring 64 MiB", bytes([HEADER | Z | EXT, 0x01])
         + zstandard.ZstdCompressor().compress(b"\0" * (64 << 20))),
        ("lz4 frame of 64 MiB zeros", bytes([HEADER | Z | EXT, 0x02])
         + lz4.frame.compress(b"\0" * (64 << 20))),
        ("json: 1 MiB of []", bytes([HEADER | Z | EXT, 0x10])
         + zlib.compress(b"[" + b"[]," * ((MAX - 3) // 3) + b"[]]", 9)),
        ("json: 100k-deep nesting", bytes([HEADER | EXT, 0x10]) + b"[" * 100_000),
    ]
    return out


def decode(codec: Codec, data: bytes) -> str:
    try:
        value = codec.loads(data)
    except DecodeError as exc:
        return "miss: " + str(exc)[:48]
    return f"value ({type(value).__name__})"


def measure(codec: Codec, data: bytes) -> tuple[float, int, str]:
    """Best of three untraced timings; the peak from one run under tracemalloc (which
    slows allocation down, so it is not timed)."""
    elapsed = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        outcome = decode(codec, data)
        elapsed = min(elapsed, time.perf_counter() - t0)
    tracemalloc.start()
    decode(codec, data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return elapsed, peak, outcome


def main() -> None:
    codec = Codec(signing_key=b"k" * 32, compress_min_bytes=4096, max_value_bytes=MAX)
    print(f"Python {sys.version.split()[0]}, MAX_VALUE_BYTES={MAX}; "
          f"zstandard {zstandard.__version__}, lz4 {lz4.__version__}")
    print(f"{'hostile value':40} {'stored':>10} {'time ms':>8} {'peak MiB':>9}  outcome")
    for name, data in cases():
        elapsed, peak, outcome = measure(codec, data)
        print(f"{name:40} {len(data):>10} {elapsed * 1e3:>8.1f} {peak / 2**20:>9.1f}  {outcome}")


if __name__ == "__main__":
    main()
