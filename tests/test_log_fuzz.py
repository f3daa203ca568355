"""Fuzzing of the JSON log writer and the record formatter, as the decoder is fuzzed
(tests/test_fuzz.py): a coverage-guided atheris run in a subprocess (tests/fuzz_log.py)
and an in-process random fuzz with a fixed seed. Under ``make test SANITIZE=1`` both run
against the ASan+UBSan build."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import fuzz_log
import pytest
from test_fuzz import SLOWDOWN, _atheris_available, _fuzzer_env, _stat

ROOT = Path(__file__).resolve().parent.parent
HARNESS = Path(fuzz_log.__file__)
CORPUS = ROOT / "build" / "fuzz-log-corpus"
ARTIFACTS = ROOT / "build" / "fuzz-log-artifacts"
ATHERIS_SECONDS = 15
RANDOM_SECONDS = 3


@pytest.mark.slow
def test_atheris_finds_nothing_in_the_json_writer():
    _atheris_available()
    seeds, found = CORPUS / "seeds", CORPUS / "found"
    if found.is_dir() and sum(1 for _ in found.iterdir()) > 5000:
        shutil.rmtree(found)
    found.mkdir(parents=True, exist_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, HARNESS, "--write-seeds", seeds], check=True,
                   capture_output=True, timeout=120)
    cmd = [sys.executable, HARNESS, found, seeds, f"-max_total_time={ATHERIS_SECONDS}",
           "-rss_limit_mb=2048", "-timeout=10", "-print_final_stats=1",
           f"-artifact_prefix={ARTIFACTS}/"]
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
    added = _stat(out, "new_units_added")
    print(f"atheris (log writer): {executed:.0f} inputs, {added:.0f} new corpus units")
    assert "no interesting inputs were found" not in out, out[-5000:]
    assert added > 0, out[-5000:]
    assert executed >= 5_000 * ATHERIS_SECONDS / 10 / SLOWDOWN, out[-5000:]


def test_random_programs_give_valid_one_line_json():
    rng = random.Random(20261130)
    seeds = fuzz_log.seed_inputs()
    deadline = time.monotonic() + RANDOM_SECONDS
    outcomes: set[str] = set()
    count = 0
    while time.monotonic() < deadline:
        for _ in range(100):
            if rng.random() < 0.5:
                data = bytes([rng.randrange(32)]) + rng.randbytes(rng.randrange(200))
            else:
                data = bytearray(rng.choice(seeds))
                for _ in range(rng.randrange(1, 6)):
                    data.insert(rng.randrange(len(data) + 1), rng.randrange(256))
                data = bytes(data)
            outcomes.add(fuzz_log.one(data))  # raises fuzz_log.Finding on a broken contract
            count += 1
    print(f"random log-writer fuzz: {count} inputs, {len(outcomes)} outcomes")
    assert count >= 2_000 // SLOWDOWN
    # The programs reach every option set, plain and non-plain values, and format errors.
    assert {o.split(":")[0] for o in outcomes} >= {str(i) for i in range(32)}
    assert any(o.endswith(":True") for o in outcomes)
    assert any(":True:" in o for o in outcomes) and any(":False:" in o for o in outcomes)


def test_known_findings_stay_fixed():
    # U+2028 with ensure_ascii=False (not escaped before), a secret bytes key, a pair.
    for data in [b"\x00\x05\x03\x00", b"\x04\x09\x01\x04\x06\x00\x01\x00",
                 b"\x04\x07\x02\x05\x03\x0b\x05\x00"]:
        fuzz_log.one(data)
