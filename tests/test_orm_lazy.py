"""The ORM cache's scenarios (test_orm.py) once more with FASTCACHE_ORM_LAZY_FILTER on:
every filter() the scenarios make on a cached model is then deferred (lazy.py), and
every hit, miss and invalidation must stay the same."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
def test_orm_scenarios_with_deferred_filters():
    env = {**os.environ, "ORM_TEST_LAZY": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(HERE / "test_orm.py"), "-q", "-x",
         "-p", "no:cacheprovider"], cwd=HERE.parent, env=env, capture_output=True,
        text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert " passed" in done.stdout and "skipped" not in done.stdout
