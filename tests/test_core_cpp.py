"""Builds the C++ core's own tests (tests/cpp/test_*.cpp) with CMake and runs each binary."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pybind11
import pytest

ROOT = Path(__file__).resolve().parent.parent
CPP_TESTS = sorted((ROOT / "tests" / "cpp").glob("test_*.cpp"))
# `make test SANITIZE=1` sets this; the C++ tests then get their own ASan+UBSan build.
SANITIZED = os.environ.get("FASTCACHE_SANITIZED") == "1"
# One build directory per interpreter: CMake caches the Python it found (make test-matrix).
BUILD_DIR = ROOT / "build" / (
    f"cpp-tests-{sys.implementation.cache_tag}" + ("-asan" if SANITIZED else "")
)

CONFIGURE_TIMEOUT = 300
BUILD_TIMEOUT = 900  # a cold build of the whole core on a shared 2-core machine
RUN_TIMEOUT = 300


def _env():
    """The environment for CMake, the compiler and the test binaries.

    The Makefile preloads the ASan runtime for the (uninstrumented) Python interpreter;
    these are not Python processes, and the test binaries link the runtime themselves.
    """
    env = dict(os.environ)
    env.pop("LD_PRELOAD", None)
    env["ASAN_OPTIONS"] = "detect_leaks=1:abort_on_error=1"
    env["UBSAN_OPTIONS"] = "print_stacktrace=1:halt_on_error=1"
    return env


def _run(cmd, timeout, what):
    try:
        proc = subprocess.run(
            [str(c) for c in cmd],
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout or ""
        if isinstance(out, bytes):
            out = out.decode(errors="replace")
        pytest.fail(f"{what} timed out after {timeout} s:\n{out[-20000:]}")
    if proc.returncode != 0:
        pytest.fail(f"{what} failed with exit code {proc.returncode}:\n{proc.stdout[-20000:]}")
    return proc.stdout


@pytest.fixture(scope="module")
def built_tests():
    cmake = shutil.which("cmake")
    if cmake is None:
        pytest.fail("cmake not found on PATH: it is needed to build the C++ core tests")
    configure = [
        cmake,
        "-S",
        ROOT,
        "-B",
        BUILD_DIR,
        "-DFASTCACHE_CORE_TESTS=ON",
        f"-DFASTCACHE_SANITIZE={'ON' if SANITIZED else 'OFF'}",
        "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        # The project's version and pybind11 come from scikit-build-core in a wheel build;
        # the tests need neither, but CMakeLists.txt asks for both.
        "-DSKBUILD_PROJECT_VERSION=0.0.0",
        f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
        f"-DPython_EXECUTABLE={sys.executable}",
    ]
    if not (BUILD_DIR / "CMakeCache.txt").exists() and shutil.which("ninja"):
        configure += ["-G", "Ninja"]
    _run(configure, CONFIGURE_TIMEOUT, "configuring the C++ tests")
    _run(
        [cmake, "--build", BUILD_DIR, "--target", "core_tests", "--parallel", "2"],
        BUILD_TIMEOUT,
        "building the C++ tests",
    )
    return BUILD_DIR


def test_cpp_tests_exist():
    assert CPP_TESTS, "no tests/cpp/test_*.cpp found"


@pytest.mark.parametrize("source", CPP_TESTS, ids=[p.stem for p in CPP_TESTS])
def test_cpp_binary_passes(built_tests, source):
    binary = built_tests / source.stem
    assert binary.is_file(), f"{binary} was not built"
    out = _run([binary], RUN_TIMEOUT, source.stem)
    print(out)
    # The harness's summary line, when a binary prints one, must show checks that ran.
    summary = re.search(r"^(\d+) passed, (\d+) failed$", out, re.MULTILINE)
    if summary:
        passed, failed = int(summary[1]), int(summary[2])
        assert failed == 0 and passed > 0, out[-20000:]
