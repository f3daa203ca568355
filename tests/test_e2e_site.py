"""End to end: the example site under gunicorn with two worker processes, its cache,
throttles and sessions in a real Redis, driven over HTTP by the same script as `make demo`."""

from __future__ import annotations

import importlib.util
import json
import re
import urllib.request
from pathlib import Path

import pytest

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

DEMO = Path(__file__).resolve().parent.parent / "examples" / "demo.py"


def _demo_module():
    spec = importlib.util.spec_from_file_location("fastcache_demo", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_site_under_gunicorn_on_redis(clean_redis_server, tmp_path):
    demo = _demo_module()
    site = demo.Site(str(tmp_path), clean_redis_server.url + "/2", workers=2)
    printed: list[str] = []
    try:
        site.start()
        facts = demo.run_demo(site, out=printed.append)
        # Both workers answer (each request is a new connection; the kernel spreads them).
        pids = set()
        for _ in range(200):
            with urllib.request.urlopen(site.base + "/stats/", timeout=5) as resp:
                resp.read()
            pids = {x["process"] for x in _log(site) if x.get("path") == "/stats/"}
            if len(pids) == 2:
                break
        assert len(pids) == 2, "both gunicorn workers should have served requests"
    finally:
        site.stop()

    cache = facts["cache"]
    # Hits are shared by the workers: whichever process answers, the page comes from its
    # L1 or from Redis, and an edit in one worker invalidates the other's L1 copy.
    assert cache["/blog/posts/?author_id=1"] == ["MISS", "HIT", "HIT", "MISS", "HIT"]
    assert cache["/blog/posts/?author_id=2"] == ["MISS", "HIT", "MISS"]
    assert cache["/blog/authors/1/"] == ["MISS", "HIT", "MISS"]
    assert facts["edited_title"] == "Hello, edited"
    # Sessions live in Redis (and the database): the counter survives changing workers.
    assert facts["visits"] == [1, 2]
    # Throttles are exact across both processes: one Lua script per check in Redis.
    t = facts["throttles"]
    assert t["anonymous"] == {"statuses": [200] * 5 + [429] * 2, "retry_after": "60"}
    assert t["user"] == {"statuses": [200] * 10 + [429] * 2, "retry_after": "60"}
    assert t["scoped"] == {"statuses": [200] * 3 + [429] * 2, "retry_after": "60"}

    logs = facts["log"]
    event = next(x for x in logs if x.get("event") == "post.liked")
    assert event["user_id"] == 1 and re.fullmatch(r"[0-9a-f]{32}", event["request_id"])
    access = [x for x in logs if x.get("name") == "django_fastcache.access"]
    assert {x["status"] for x in access} >= {200, 429}
    assert all(x["request_id"] and "duration_ms" in x for x in access)

    (row,) = facts["stats"]
    # The coherent L1 is on in front of Redis, its listener up in the worker that answered.
    assert row["tier"] == "l1+redis" and row["l1_listener"] == "up"
    assert row["errors"] == 0 and row["breaker_state"] == "closed"
    assert row["redis_keys"] > 0
    # The cache's keys and the throttles' state are in that Redis, under the site's prefix.
    client = clean_redis_server.client(db=2)
    keys = {k.decode() for k in client.scan_iter(count=1000)}
    assert any(k.startswith("blog:1:fastcache.tag:") for k in keys)
    assert any(k.startswith("blog:1:fcrl:{") for k in keys)
    assert any("views.decorators.cache" in k for k in keys)
    assert "Redis hit ratio" in "\n".join(printed)


def _log(site) -> list[dict]:
    return [json.loads(line) for line in Path(site.log_file).read_text().splitlines() if line]
