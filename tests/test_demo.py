"""`make demo` tells the story it promises: misses, then hits, an edit that invalidates."""

import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_shows_hits_misses_and_invalidation():
    out = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = out.stdout.splitlines()
    posts = [line.split() for line in lines if line.startswith("GET /blog/posts/?author_id=1")]
    assert [row[3] for row in posts] == ["MISS", "HIT", "HIT", "MISS", "HIT"]
    about = [line.split()[3] for line in lines if line.startswith("GET /about/")]
    assert about == ["MISS", "HIT"]
    assert "edit invalidated 2 cached list(s)" in out.stdout
    assert "after the edit the list shows: 'Hello, edited'" in out.stdout
    assert "hit_ratio" in out.stdout
