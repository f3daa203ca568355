"""Fuzzing of the wire decoder and key building, bounded in time: a coverage-guided atheris run
in a subprocess (tests/fuzz_decoder.py), an in-process mutation fuzz with a fixed seed, and
hostile inputs that must fail fast. Every input must give a value or DecodeError.

Under ``make test SANITIZE=1`` (FASTCACHE_SANITIZED=1) the extension is built with ASan+UBSan
and the Makefile preloads gcc's runtimes; the atheris subprocess inherits that environment.
"""

from __future__ import annotations

import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import fuzz_decoder
import pytest
from django_fastcache._core import Codec
from django_fastcache.errors import DecodeError

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(fuzz_decoder.__file__)
CORPUS = ROOT / "build" / "fuzz-corpus"
ARTIFACTS = ROOT / "build" / "fuzz-artifacts"
SANITIZED = os.environ.get("FASTCACHE_SANITIZED") == "1"
# The sanitizer build runs several times slower; the bounds below are for both.
SLOWDOWN = 5 if SANITIZED else 1

ATHERIS_SECONDS = 20
MUTATION_SECONDS = 5
# New inputs libFuzzer keeps accumulate between runs; past this many, start again from the
# seeds so that loading the corpus stays a small part of the run.
MAX_FOUND = 5000

MSGPACK_ONLY = Codec(pickle="forbid")  # no compression: mutations hit the msgpack structure
HEADER = bytes([0x80 | 0x10])  # format version 1, no flags


def _atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        if os.environ.get("CI") == "true":
            pytest.fail("atheris is not installed (it is in the test extras)")
        pytest.skip("atheris is not installed (it is in the test extras)")
    return True


def _fuzzer_env() -> dict[str, str]:
    """The environment for the atheris subprocess.

    Plain build: this process's. Sanitizer build: gcc's libasan (preloaded by the Makefile)
    defines libFuzzer's coverage callbacks as weak no-ops and, coming first, captures
    atheris's registration of its counters, so libFuzzer would see no coverage at all
    ("no interesting inputs were found"). A small shim, preloaded ahead of libasan,
    forwards those callbacks to atheris's bundled libFuzzer (see fuzz_sancov_shim.c).
    """
    env = dict(os.environ)
    if not SANITIZED:
        return env
    import atheris

    libfuzzer = next((Path(atheris.__file__).parent).glob("core_with_libfuzzer*.so"), None)
    assert libfuzzer is not None, "atheris ships no core_with_libfuzzer library"
    compiler = shutil.which("gcc") or shutil.which("cc")
    assert compiler, "a C compiler is needed to build the coverage shim"
    shim = ROOT / "build" / "fuzz-shim" / "libfuzz_sancov_shim.so"
    shim.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(shim),
         str(HARNESS.parent / "fuzz_sancov_shim.c"), "-ldl"],
        check=True, capture_output=True, timeout=120,
    )
    env["LD_PRELOAD"] = f"{shim} {env.get('LD_PRELOAD', '')}".strip()
    env["FASTCACHE_LIBFUZZER_SO"] = str(libfuzzer)
    # The shim, not libasan, is now the first preloaded library; it intercepts nothing.
    env["ASAN_OPTIONS"] = ":".join(
        filter(None, [env.get("ASAN_OPTIONS", ""), "verify_asan_link_order=0"])
    )
    return env


def _stat(output: str, name: str) -> float:
    match = re.search(rf"^stat::{name}:\s+(\d+)", output, re.MULTILINE)
    assert match, f"libFuzzer printed no {name} statistic:\n{output[-5000:]}"
    return float(match[1])


@pytest.mark.slow
def test_atheris_finds_nothing_in_the_decoder_and_key_building():
    _atheris_available()
    seeds, found = CORPUS / "seeds", CORPUS / "found"
    if found.is_dir() and sum(1 for _ in found.iterdir()) > MAX_FOUND:
        shutil.rmtree(found)
    found.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, HARNESS, "--write-seeds", seeds], check=True, capture_output=True,
        timeout=120,
    )
    cmd = [
        sys.executable, HARNESS, found, seeds,
        f"-max_total_time={ATHERIS_SECONDS}",
        "-rss_limit_mb=2048",
        "-timeout=10",  # per input, seconds: a hang in the decoder is a finding too
        "-print_final_stats=1",
        f"-artifact_prefix={ARTIFACTS}/",
    ]
    try:
        proc = subprocess.run(
            [str(c) for c in cmd], cwd=ROOT, env=_fuzzer_env(), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, errors="replace", timeout=ATHERIS_SECONDS + 90,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"the atheris run did not stop after {ATHERIS_SECONDS} s: {exc}")
    out = proc.stdout
    assert proc.returncode == 0, f"atheris exited with {proc.returncode}:\n{out[-20000:]}"
    executed = _stat(out, "number_of_executed_units")
    per_second = _stat(out, "average_exec_per_sec")
    added = _stat(out, "new_units_added")
    print(f"atheris: {executed:.0f} inputs, {per_second:.0f}/s, {added:.0f} new corpus units, "
          f"{sum(1 for _ in found.iterdir())} inputs in the found corpus")
    # libFuzzer saw coverage: the seeds gave features and mutations found new ones.
    assert "no interesting inputs were found" not in out, out[-5000:]
    assert added > 0, out[-5000:]
    # About 25,000/s on the plain build, several times fewer under the sanitizers: a tenth
    # of that still shows the run fuzzed rather than stalled on a slow input.
    assert executed >= 25_000 * ATHERIS_SECONDS / 10 / SLOWDOWN, out[-5000:]


def test_the_fuzzer_setup_reports_a_native_crash():
    # The check above means something only if a crash in native code would end the run
    # with a failure; a deliberate null read (in ctypes, not in our code) shows it does,
    # under the same environment (sanitizers and shim included).
    _atheris_available()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    script = (
        "import ctypes, sys, atheris\n"
        "def one(data):\n"
        "    if data[:1] == b'!':\n"
        "        ctypes.string_at(0)\n"
        "atheris.Setup(sys.argv, one)\n"
        "atheris.Fuzz()\n"
    )
    crash_input = ARTIFACTS / "selftest-input"
    crash_input.write_bytes(b"!")
    proc = subprocess.run(
        [sys.executable, "-c", script, f"-artifact_prefix={ARTIFACTS}/selftest-", str(crash_input)],
        env=_fuzzer_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        errors="replace", timeout=120,
    )
    assert proc.returncode != 0, proc.stdout[-5000:]
    assert re.search(r"AddressSanitizer: SEGV|deadly signal", proc.stdout), proc.stdout[-5000:]


# ----------------------------------------------------------------------------- mutation

# msgpack type bytes followed by a big-endian length field of this many bytes.
_LENGTH_FIELDS = {
    0xC4: 1, 0xC5: 2, 0xC6: 4,  # bin
    0xC7: 1, 0xC8: 2, 0xC9: 4,  # ext
    0xD9: 1, 0xDA: 2, 0xDB: 4,  # str
    0xDC: 2, 0xDD: 4,  # array
    0xDE: 2, 0xDF: 4,  # map
}


def _corrupt_length(rng: random.Random, data: bytearray) -> None:
    """Rewrites one length: a fix-type's low bits or a length field's bytes."""
    spots = [i for i, b in enumerate(data) if b in _LENGTH_FIELDS or 0x80 <= b <= 0xBF]
    if not spots:
        return
    i = rng.choice(spots)
    b = data[i]
    if b in _LENGTH_FIELDS:
        width = _LENGTH_FIELDS[b]
        top = 2 ** (8 * width)
        n = rng.choice([0, 1, top - 1, top // 2, rng.randrange(top)])
        data[i + 1:i + 1 + width] = n.to_bytes(width, "big")
    else:
        top = 0xA0 if b >= 0xA0 else b & 0xF0  # fixstr has 5 length bits, fixarray/map 4
        bits = 0x1F if top == 0xA0 else 0x0F
        data[i] = top | rng.randrange(bits + 1)


def _mutate(rng: random.Random, base: bytes, other: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(rng.choice([1, 1, 1, 2, 3, 8])):
        op = rng.randrange(8)
        if op == 0 and data:  # bit flip
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:  # byte insertion
            data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
        elif op == 2 and data:  # byte deletion
            del data[rng.randrange(len(data))]
        elif op == 3:  # truncation
            del data[rng.randrange(len(data) + 1):]
        elif op == 4:
            _corrupt_length(rng, data)
        elif op == 5 and data:  # an interesting byte
            data[rng.randrange(len(data))] = rng.choice([0x00, 0x7F, 0x80, 0xC1, 0xC7, 0xD4, 0xFF])
        elif op == 6:  # splice another encoding in
            i, j = rng.randrange(len(data) + 1), rng.randrange(len(other) + 1)
            data[i:] = other[j:]
        elif op == 7 and data:  # duplicate a slice
            i = rng.randrange(len(data))
            j = rng.randrange(i, min(len(data), i + 64) + 1)
            data[j:j] = data[i:j]
    return bytes(data)


def test_mutated_and_random_inputs_give_a_value_or_decode_error():
    rng = random.Random(20240611)
    values = fuzz_decoder.seed_values()
    bases = [MSGPACK_ONLY.dumps(v) for v in values]
    bases += [fuzz_decoder.CODECS[m].dumps(v) for v in values for m in (0, 1, 2)]
    bases += [fuzz_decoder.CODECS[0].dumps(fuzz_decoder.Sample(i)) for i in range(3)]
    bases += [w.dumps(v) for v in values for w in fuzz_decoder.WRITERS]
    bases = [b for b in bases if len(b) < 4096]  # keep each input quick to mutate
    deadline = time.monotonic() + MUTATION_SECONDS
    counts = {"value": 0, "error": 0, "skipped": 0}
    while time.monotonic() < deadline:
        for _ in range(200):
            if rng.random() < 0.1:
                data = rng.randbytes(rng.randrange(64))
                if rng.random() < 0.5:
                    data = HEADER + data
            else:
                data = _mutate(rng, rng.choice(bases), rng.choice(bases))
            # The harness's own check: a value of the codec's types that re-encodes, or
            # DecodeError; anything else raises out of here. Pickles only behind a
            # verified signature.
            counts[fuzz_decoder.decode_one(rng.randrange(3), data)] += 1
    print(f"mutation fuzz: {sum(counts.values())} inputs, {counts}")
    assert sum(counts.values()) >= 5_000 // SLOWDOWN
    assert counts["value"] > 100 and counts["error"] > 1000, counts


def test_mutated_inputs_reach_both_outcomes():
    # A mutation fuzz that only ever produced errors would test the framing check alone.
    rng = random.Random(7)
    base = MSGPACK_ONLY.dumps({"a": [1, 2, (3, 4)], "b": "x" * 20, "c": {1.5, None}})
    ok = failed = 0
    for _ in range(3000):
        try:
            MSGPACK_ONLY.loads(_mutate(rng, base, base))
            ok += 1
        except DecodeError:
            failed += 1
    assert ok > 100 and failed > 100, (ok, failed)


# ----------------------------------------------------------------------------- worst cases

MB = 1 << 20
HALF = MB // 2

# Refused before any Python object is built, or after one linear pass over the bytes.
REFUSED_EARLY = {
    "1 MB of nested arrays": HEADER + b"\x91" * MB,
    "1 MB of nested maps": HEADER + b"\x81" * MB,
    "nested tuples": HEADER + b"\x92\xc7\x00\x01" * (MB // 4),
    "512 levels then 1 MB of width": HEADER + b"\x91" * 511 + b"\xdd" + MB.to_bytes(4, "big")
    + b"\x90" * (MB - 1),
    "array claiming 4G items": HEADER + b"\xdd\xff\xff\xff\xff" + b"\xc0" * MB,
    "map claiming 4G pairs": HEADER + b"\xdf\xff\xff\xff\xff" + b"\xc0" * MB,
    "bin claiming 4 GB": HEADER + b"\xc6\xff\xff\xff\xff" + b"\x00" * MB,
    "str claiming 4 GB": HEADER + b"\xdb\xff\xff\xff\xff" + b"a" * MB,
    "ext claiming 4 GB": HEADER + b"\xc9\xff\xff\xff\xff\x0a" + b"1" * MB,
    "1M-digit big int": HEADER + b"\xc9" + MB.to_bytes(4, "big") + b"\x0a" + b"9" * MB,
    "1 MB integer": b"1" * MB,
    "1 MB invalid UTF-8": HEADER + b"\xdb" + MB.to_bytes(4, "big") + b"\xc3" * MB,
    "zlib bomb": bytes([0x80 | 0x10 | 0x1]) + zlib.compress(b"\x91" * (64 * MB), 9),
    "signed, 1 MB, bad signature": bytes([0x80 | 0x10 | 0x2 | 0x4]) + b"\x00" * MB,
}

# Well-formed up to the last item: the objects before it are built, then dropped.
REFUSED_LATE = {
    "array of 1M nils, one short": HEADER + b"\xdd" + MB.to_bytes(4, "big") + b"\xc0" * (MB - 1),
    "map of 512K pairs, last one bad": HEADER + b"\xdf" + HALF.to_bytes(4, "big")
    + b"\xc0\xc0" * (HALF - 1) + b"\x90\xc0",
    "set of 512K unhashables": HEADER + b"\xdd" + (HALF + 1).to_bytes(4, "big") + b"\xc7\x00\x02"
    + b"\x90" * HALF,
}

CODEC = Codec(signing_key=b"k" * 32, max_value_bytes=16 * MB)
# The object budget (MAX_VALUE_OBJECTS) refuses REFUSED_LATE at their first header; without
# it they are built up to their last item and dropped, the path measured here.
UNBUDGETED = Codec(signing_key=b"k" * 32, max_value_bytes=16 * MB, max_value_objects=0)


def _refusal_time(data: bytes, codec: Codec = CODEC) -> float:
    start = time.perf_counter()
    with pytest.raises(DecodeError):
        codec.loads(data)
    return time.perf_counter() - start


@pytest.mark.parametrize("name", list(REFUSED_EARLY))
def test_hostile_input_is_refused_fast(name):
    elapsed = _refusal_time(REFUSED_EARLY[name])
    print(f"{name}: {elapsed * 1000:.1f} ms")
    # A few ms each on this machine; generous so that a loaded machine does not fail it.
    assert elapsed < 0.5 * SLOWDOWN, f"{name} took {elapsed:.2f} s"


@pytest.mark.parametrize("name", list(REFUSED_LATE))
def test_input_refused_at_its_end_costs_no_more_than_building_its_objects(name):
    # Half a million containers cost CPython several hundred ms to create whoever creates
    # them (its cyclic GC runs as they accumulate): pickle.loads of as many empty lists is
    # the yardstick, measured now, on this machine.
    yardstick = pickle.dumps([[] for _ in range(HALF)])
    start = time.perf_counter()
    pickle.loads(yardstick)
    baseline = time.perf_counter() - start
    assert _refusal_time(REFUSED_LATE[name]) < 0.05 * SLOWDOWN  # over the budget at once
    elapsed = _refusal_time(REFUSED_LATE[name], UNBUDGETED)
    print(f"{name}: {elapsed * 1000:.1f} ms "
          f"(pickle.loads of {HALF} lists: {baseline * 1000:.1f} ms)")
    assert elapsed < 3 * baseline + 0.25 * SLOWDOWN, f"{name} took {elapsed:.2f} s"
