"""`make demo`: migrates and seeds the example blog in a temporary SQLite database, starts
it under gunicorn, drives it with a short scripted client and prints what happened: cache
hit or miss and time per request, the invalidation after an edit, 429s with Retry-After
once a throttle trips, sample JSON log lines, then the cache's figures.

With REDIS_URL set, the site's cache (and so its throttles and sessions) is that Redis,
and gunicorn runs two worker processes sharing it; without, one process with the embedded
in-process store. ``run_demo`` is also what the end-to-end test calls.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

SITE = Path(__file__).resolve().parent / "blog"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Site:
    """The example site in a temporary directory, under gunicorn, until ``stop()``."""

    def __init__(self, workdir: str, redis_url: str | None, workers: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_file = os.path.join(workdir, "site.log")
        self.token = secrets.token_hex(20)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "BLOG_DB": os.path.join(workdir, "db.sqlite3"), "BLOG_LOG_FILE": self.log_file}
        self.env.pop("REDIS_URL", None)
        if redis_url:
            self.env["REDIS_URL"] = redis_url
        self.workers = workers
        self.server: subprocess.Popen | None = None
        self.server_log = os.path.join(workdir, "gunicorn.log")

    def manage(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=SITE, env=self.env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
        return out.stdout

    def start(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("seed_blog", "--token", self.token)
        gunicorn = Path(sys.executable).with_name("gunicorn")
        with open(self.server_log, "wb") as log:
            self.server = subprocess.Popen(
                [str(gunicorn), "blogsite.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
                 "--workers", str(self.workers), "--threads", "4", "--graceful-timeout", "2"],
                cwd=SITE, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.base + "/stats/", timeout=2):
                    pass
            except urllib.error.HTTPError:
                return  # answering (even 429) is up
            except OSError:
                time.sleep(0.1)
                continue
            return
        raise RuntimeError("the example site did not start:\n" + Path(self.server_log).read_text())

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)


class Client:
    """A scripted client with a cookie jar; each call returns (status, headers, body, ms)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def __call__(self, path: str, data: dict | None = None, headers: dict | None = None):
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(self.base + path, data=body, headers=headers or {},
                                     method="GET" if data is None else "POST")
        start = time.perf_counter()
        try:
            with self.opener.open(req, timeout=10) as resp:
                status, hdrs, content = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, hdrs, content = exc.code, dict(exc.headers), exc.read()
        return status, hdrs, content, (time.perf_counter() - start) * 1000


def run_demo(site: Site, out=print) -> dict:
    """Drives the site; prints the story with ``out``; returns what a test checks."""
    client = Client(site.base)
    seen: dict[str, bytes] = {}
    facts: dict = {"cache": {}, "throttles": {}}

    def page(path: str) -> dict:
        status, _, body, ms = client(path)
        data = json.loads(body)
        # A hit is the very response cached earlier: same body, same render time.
        state = "HIT" if seen.get(path) == body else "MISS"
        seen[path] = body
        facts["cache"].setdefault(path, []).append(state)
        out(f"GET {path:38} {status:>6} {state:>6} {ms:7.1f} ms")
        return data

    out(f"{'request':42} {'status':>6} {'cache':>6} {'time':>9}")
    for _ in range(3):
        page("/blog/posts/?author_id=1")
    page("/blog/posts/?author_id=2")
    page("/blog/posts/?author_id=2")
    page("/blog/authors/1/")
    page("/blog/authors/1/")
    status, _, body, ms = client("/blog/posts/1/edit/", {"title": "Hello, edited"})
    edited = json.loads(body)
    out(f"POST {'/blog/posts/1/edit/':37} {status:>6} {'-':>6} {ms:7.1f} ms")
    out(f"    edit invalidated tags {edited['tags']} after the commit")
    posts = page("/blog/posts/?author_id=1")["posts"]
    out(f"    after the edit the list shows: {posts[0]['title']!r}")
    facts["edited_title"] = posts[0]["title"]
    page("/blog/posts/?author_id=1")
    page("/blog/authors/1/")
    page("/blog/posts/?author_id=2")
    auth = {"Authorization": f"Token {site.token}"}

    status, _, body, _ = client("/api/posts/2/like/", {}, headers=auth)
    out(f"POST /api/posts/2/like/ -> {status} {body.decode()} (logs a structured event)")
    visits = [json.loads(client("/blog/visits/")[2])["visits"] for _ in range(2)]
    facts["visits"] = visits
    out(f"GET /blog/visits/ twice -> visits {visits} (session in the cache, cached_db)")

    out("\nQuery cache (django_fastcache.orm: .cache() and cached_as, cacheops' API):")
    orm = facts["orm"] = []
    for step in ("read", "read", "edit", "read", "read"):
        if step == "edit":
            status, _, _, ms = client("/blog/posts/2/edit/", {"title": "Second, edited"})
            out(f"    POST /blog/posts/2/edit/ -> {status} ({ms:.1f} ms): invalidates the "
                "queries that read post 2")
            orm.append("edit")
            continue
        status, _, body, ms = client("/blog/posts/2/")
        data = json.loads(body)
        orm.append((data["query_cache"], data["title"]))
        out(f"    GET /blog/posts/2/ -> {status} {ms:6.1f} ms  reads "
            f"{'+'.join(data['query_cache'])}  title {data['title']!r}")

    out("\nThrottles (django_fastcache.throttling; rates anon 5/min, user 10/min, search 3/min):")
    for label, path, n, headers in (("anonymous", "/api/posts/", 7, None),
                                    ("user", "/api/me/", 12, auth),
                                    ("scoped", "/api/search/?q=c", 5, None)):
        statuses, retry = [], None
        for _ in range(n):
            status, hdrs, _, _ = client(path, headers=headers)
            statuses.append(status)
            if status == 429 and retry is None:
                retry = hdrs.get("Retry-After")
        facts["throttles"][label] = {"statuses": statuses, "retry_after": retry}
        out(f"    {label:9} GET {path:18} {' '.join(map(str, statuses))}   Retry-After: {retry}")

    time.sleep(0.2)  # let the workers' log handlers flush
    lines = [json.loads(line) for line in Path(site.log_file).read_text().splitlines() if line]
    facts["log"] = lines
    samples = [
        next((x for x in lines if x.get("event") == "post.liked"), None),
        next((x for x in lines if x.get("status") == 429), None),
        next((x for x in lines if x.get("path") == "/api/me/" and x.get("status") == 200), None),
    ]
    out("\nSample JSON log lines:")
    for line in samples:
        if line is not None:
            out("    " + json.dumps(line))

    from django_fastcache.management.commands.fastcache_stats import render

    _, _, body, _ = client("/stats/")
    rows = json.loads(body)["caches"]
    facts["stats"] = rows
    out("\nCache figures (manage.py fastcache_stats; in-process counters of the worker that "
        "answered):")
    out("\n".join("    " + line for line in render(rows).splitlines()))
    return facts


def main() -> int:
    redis_url = os.environ.get("REDIS_URL")
    workers = 2 if redis_url else 1
    with tempfile.TemporaryDirectory(prefix="fastcache-demo-") as workdir:
        site = Site(workdir, redis_url, workers)
        try:
            site.start()
            where = (f"Redis at {redis_url}, {workers} gunicorn workers" if redis_url else
                     "the embedded default: no Redis, one gunicorn worker")
            print(f"Example site on {site.base} (FastCache on {where})\n")
            run_demo(site)
        finally:
            site.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
