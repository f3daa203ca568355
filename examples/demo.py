"""`make demo`: starts the example site under a real HTTP server, drives it with a short
scripted client and prints what the cache did: hit or miss and time per request, the
invalidation after an edit, then the cache's counters."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SITE = Path(__file__).resolve().parent / "blog"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(base: str, path: str, data: bytes | None = None) -> tuple[int, dict, bytes, float]:
    start = time.perf_counter()
    req = urllib.request.Request(base + path, data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = resp.read()
        return resp.status, dict(resp.headers), body, (time.perf_counter() - start) * 1000


def main() -> int:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload", "--skip-checks"],
        cwd=SITE, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(200):
            try:
                request(base, "/stats/")
                break
            except OSError:
                time.sleep(0.05)
        else:
            print("the example site did not start")
            return 1
        print(f"Example site on {base} (FastCache, embedded default: no Redis)\n")
        print(f"{'request':42} {'status':>6} {'cache':>6} {'time':>9}")

        seen_bodies: dict[str, bytes] = {}

        def show(path: str, data: bytes | None = None) -> dict:
            status, headers, body, ms = request(base, path, data)
            state = headers.get("X-Cache")
            if state is None and not data:
                # cache_page sets no header: a hit is the very same rendered page again.
                state = "HIT" if seen_bodies.get(path) == body else "MISS"
                seen_bodies[path] = body
            state = state or "-"
            label = ("POST " if data else "GET ") + path
            print(f"{label:42} {status:>6} {state:>6} {ms:7.1f} ms")
            return json.loads(body) if headers.get("Content-Type") == "application/json" else {}

        for _ in range(3):
            show("/blog/posts/?author_id=1")
        show("/blog/posts/?author_id=2")
        show("/blog/posts/?author_id=2")
        result = show("/blog/posts/1/edit/", json.dumps({"title": "Hello, edited"}).encode())
        print(f"    edit invalidated {result['invalidated_keys']} cached list(s)")
        posts = show("/blog/posts/?author_id=1")["posts"]
        print(f"    after the edit the list shows: {posts[0]['title']!r}")
        show("/blog/posts/?author_id=1")
        show("/about/")
        show("/about/")
        _, _, body, _ = request(base, "/stats/")
        stats = json.loads(body)
        print("\nCache counters (this process's L1 store):")
        for name in ("hits", "misses", "sets", "deletes", "evictions", "entries", "bytes"):
            print(f"    {name:10} {stats[name]}")
        print(f"    {'hit_ratio':10} {stats['hit_ratio']:.2f}")
        return 0
    finally:
        server.terminate()
        server.wait(10)


if __name__ == "__main__":
    sys.exit(main())
