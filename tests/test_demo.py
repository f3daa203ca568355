"""`make demo` tells the story it promises, on the embedded default: misses then hits,
an edit that invalidates after its commit, 429s with Retry-After, JSON log lines with
request and user ids, the stats table."""

import json
import re
import subprocess
import sys
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def test_demo_tells_the_whole_story():
    env = {k: v for k, v in __import__("os").environ.items() if k != "REDIS_URL"}
    out = subprocess.run([sys.executable, str(DEMO)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    text = out.stdout
    lines = text.splitlines()

    def states(prefix):
        return [line.split()[3] for line in lines if line.startswith(prefix)]

    assert states("GET /blog/posts/?author_id=1") == ["MISS", "HIT", "HIT", "MISS", "HIT"]
    assert states("GET /blog/posts/?author_id=2") == ["MISS", "HIT", "MISS"]
    assert states("GET /blog/authors/1/") == ["MISS", "HIT", "MISS"]
    # Every request line shows a time; hits are faster than the 30 ms render of a miss.
    timed = [line for line in lines
             if re.match(r"GET /blog/\S+ +200 +(HIT|MISS) +[\d.]+ ms$", line)]
    assert len(timed) == 11
    assert "edit invalidated tags ['posts', 'author:1'] after the commit" in text
    assert "after the edit the list shows: 'Hello, edited'" in text
    assert "visits [1, 2]" in text
    orm = [line.split("reads ")[1] for line in lines if line.startswith("    GET /blog/posts/2/")]
    assert orm == ["miss+miss  title 'Caching, the easy part'",
                   "hit+hit  title 'Caching, the easy part'",
                   "miss+miss  title 'Second, edited'", "hit+hit  title 'Second, edited'"]

    def throttle(label):
        line = next(line for line in lines if line.strip().startswith(label + " "))
        statuses, retry = line.split("Retry-After:")
        return statuses.split()[3:], retry.strip()

    assert throttle("anonymous") == (["200"] * 5 + ["429"] * 2, "60")
    assert throttle("user") == (["200"] * 10 + ["429"] * 2, "60")
    assert throttle("scoped") == (["200"] * 3 + ["429"] * 2, "60")

    logs = [json.loads(line.strip()) for line in lines if line.startswith("    {")]
    event = next(x for x in logs if x.get("event") == "post.liked")
    assert event["user_id"] == 1 and event["data"] == {"post_id": 2, "likes": 1}
    assert re.fullmatch(r"[0-9a-f]{32}", event["request_id"])
    assert any(x.get("status") == 429 and x["user_id"] is None for x in logs)
    assert any(x.get("path") == "/api/me/" and x["user_id"] == 1 for x in logs)

    assert "L1 hit ratio" in text and "L1 entries" in text
