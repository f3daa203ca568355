"""Site-level benchmark: the example blog (examples/blog) under gunicorn, two sync workers,
on one local redis-server this script starts on a free port, loaded over HTTP with wrk
(Debian's ``wrk``; installed with apt-get if missing), against the same site on the stack
it replaces, in the same run:

- **fastcache**: the site as shipped: FastCache (L1 + Redis), django_fastcache's DRF
  throttles, its JSON formatter and request-context middleware (one access line per
  request).
- **baseline**: django-redis as the cache; django-cacheops as the query cache (the same
  ``CACHEOPS`` settings, the same Redis); DRF's own throttle classes; python-json-logger's
  formatter, with a small middleware writing the same access line per request. The tagged
  post list (``cached_view(tags=...)``, a FastCache feature) becomes Django's
  ``cache_page`` keyed by the same two tag generations, read with one ``get_many`` from
  django-redis, and bumped by ``incr`` when a post changes: the same work a tagged page
  needs on that stack.

Endpoints: the cached list page (``GET /blog/posts/?author_id=1``), a throttled DRF
endpoint (``GET /api/posts/``, ``AnonRateThrottle`` at the site's "anon" rate: after the
first requests of each period every answer is a 429, so this measures the throttle's
check and rejection), and a write (``POST /blog/posts/1/edit/``: a transaction, a save
and the cache invalidation it triggers).

Noise: the two sites run side by side; each round loads every (endpoint, stack) cell for
a fixed time, the stack order alternating between rounds, and the table gives the median
over rounds. The L1 hit ratio is read from the fastcache site's ``/stats/`` (both
workers) at the end.

Run: .venv/bin/python benchmarks/bench_site.py [--seconds 5] [--rounds 3] [--connections 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "examples" / "blog"
sys.path.insert(0, str(ROOT / "tests"))  # redis_servers

from redis_servers import RedisServer, free_port  # noqa: E402

ENDPOINTS = [
    ("cached list page", "GET", "/blog/posts/?author_id=1"),
    ("throttled API", "GET", "/api/posts/"),
    ("write (edit post)", "POST", "/blog/posts/1/edit/"),
]

SETTINGS = '''
"""Benchmark settings: the example site as shipped, or on the baseline stack."""
import os

from blogsite.settings import *  # noqa: F403

STACK = os.environ["BENCH_STACK"]
# Concurrent writes from two workers wait for SQLite's lock instead of failing.
DATABASES["default"]["OPTIONS"] = {"timeout": 30}  # noqa: F405
if STACK == "baseline":
    CACHES = {"default": {"BACKEND": "django_redis.cache.RedisCache",
                          "LOCATION": REDIS_URL, "KEY_PREFIX": "blog", "TIMEOUT": 300}}
    # The query cache it replaces: django-cacheops, same CACHEOPS settings, same Redis.
    INSTALLED_APPS = [a if a != "django_fastcache.orm" else "cacheops"
                      for a in INSTALLED_APPS]  # noqa: F405
    CACHEOPS_REDIS = REDIS_URL
    LOGGING["formatters"]["json"] = {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
        "rename_fields": {"levelname": "level"},
        "static_fields": {"service": "blog"},
    }
    MIDDLEWARE = [m if m != "django_fastcache.log.RequestContextMiddleware"
                  else "bench_access.AccessLogMiddleware" for m in MIDDLEWARE]
'''

WSGI = '''
"""Benchmark WSGI entry: on the baseline stack, DRF's throttles and a cache_page list."""
import os

from django.core.wsgi import get_wsgi_application

application = get_wsgi_application()


def _bench_stats(request):
    """This worker's pid and cache counters (the L1 ratio is per process)."""
    from django.core.cache import cache
    from django.http import JsonResponse

    stats = cache.stats() if hasattr(cache, "stats") else {}
    return JsonResponse({"pid": os.getpid(), **{k: v for k, v in stats.items()
                                                 if isinstance(v, (int, float, str))}})


def _add_stats_url():
    from django.urls import path

    from blogsite import urls

    urls.urlpatterns.append(path("bench-stats/", _bench_stats))


_add_stats_url()

if os.environ["BENCH_STACK"] == "baseline":
    from django.core.cache import cache
    from django.views.decorators.cache import cache_page
    from django_redis.cache import RedisCache
    from rest_framework import throttling as drf

    from blog import api, views
    from blogsite import urls

    import cacheops
    from cacheops.signals import cache_read

    views.cached_as, views.cache_read = cacheops.cached_as, cache_read  # post_detail's
    api.PostsAPI.throttle_classes = [drf.AnonRateThrottle]
    api.MeAPI.throttle_classes = [drf.UserRateThrottle]
    api.SearchAPI.throttle_classes = [drf.ScopedRateThrottle]

    def invalidate_tags(self, *tags):
        for tag in tags:
            try:
                self.incr(f"tag:{tag}")
            except ValueError:
                self.add(f"tag:{tag}", 1, None)

    RedisCache.invalidate_tags = invalidate_tags  # what invalidate_on_change calls
    raw_list = views.post_list.__wrapped__

    def post_list(request):
        keys = ["tag:posts", f"tag:author:{request.GET.get('author_id', 'all')}"]
        gens = cache.get_many(keys)
        for k in keys:
            if k not in gens:
                cache.add(k, 1, None)
                gens[k] = cache.get(k)
        prefix = "posts." + ".".join(str(gens[k]) for k in keys)
        return cache_page(60, key_prefix=prefix)(raw_list)(request)

    for pattern in urls.urlpatterns:
        if str(pattern.pattern) == "blog/posts/":
            pattern.callback = post_list

'''

ACCESS = '''
"""The baseline's access-log middleware."""
import logging
import time
import uuid


class AccessLogMiddleware:
    """The baseline's access line: what django_fastcache's middleware writes."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.log = logging.getLogger("django_fastcache.access")

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        self.log.info("request", extra={
            "request_id": uuid.uuid4().hex, "method": request.method, "path": request.path,
            "status": response.status_code,
            "duration_ms": round((time.perf_counter() - started) * 1000, 3)})
        return response
'''

POST_LUA = '''
wrk.method = "POST"
wrk.body = '{"title": "Hello, benchmark"}'
wrk.headers["Content-Type"] = "application/json"
'''


def ensure_wrk() -> str:
    path = shutil.which("wrk")
    if path:
        return path
    print("wrk not found: installing it with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    path = shutil.which("wrk")
    if not path:
        raise SystemExit("wrk is needed (apt-get install wrk)")
    return path


class Site:
    """One configuration of the example site under gunicorn (2 sync workers)."""

    def __init__(self, stack: str, workdir: Path, redis_url: str) -> None:
        self.stack = stack
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.dir = workdir / stack
        self.dir.mkdir()
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "BENCH_STACK": stack,
                    "DJANGO_SETTINGS_MODULE": "bench_settings", "REDIS_URL": redis_url,
                    "BLOG_DB": str(self.dir / "db.sqlite3"),
                    "BLOG_LOG_FILE": str(self.dir / "site.log"),
                    "PYTHONPATH": os.pathsep.join([str(workdir), str(SITE)])}
        self.server: subprocess.Popen | None = None
        self.log = None

    def manage(self, *args: str) -> None:
        # The database is the same for both stacks; the commands run on the shipped stack
        # with the embedded cache, so they leave nothing in Redis.
        env = {**self.env, "BENCH_STACK": "fastcache"}
        env.pop("REDIS_URL")
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=SITE, env=env,
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{self.stack}: manage.py {args} failed:\n{out.stdout}{out.stderr}")

    def start(self) -> None:
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("seed_blog", "--token", "0" * 40)
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self.log = open(self.dir / "gunicorn.log", "wb")
        self.server = subprocess.Popen(
            [str(gunicorn), "bench_wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "2", "--worker-class", "sync", "--graceful-timeout", "2",
             "--backlog", "256"],
            cwd=SITE, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.server.poll() is not None:
                break
            try:
                self.get("/blog/posts/?author_id=1")
                return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{self.stack} site did not start:\n"
                           + (self.dir / "gunicorn.log").read_text())

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base + path, timeout=10) as resp:
            return resp.read()

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            try:
                self.server.wait(10)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait(5)
        if self.log is not None:
            self.log.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if m is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(wrk: str, url: str, method: str, seconds: float, connections: int,
            script: Path) -> dict:
    args = [wrk, "-t", "1", "-c", str(connections), "-d", f"{max(1, round(seconds))}s", "--latency",
            "--timeout", "10s"]
    if method == "POST":
        args += ["-s", str(script)]
    out = subprocess.run(args + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {"rps": rps, "p50": p50, "p99": p99, "requests": total,
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(1) if errors else ""}


def l1_figures(site: Site) -> dict:
    """The L1 counters of both workers (each request reaches one of them)."""
    by_pid: dict[int, dict] = {}
    for _ in range(100):
        row = json.loads(site.get("/bench-stats/"))
        by_pid[row["pid"]] = row
        if len(by_pid) >= 2:
            break
    rows = by_pid.values()
    hits = sum(r.get("l1_hits", 0) for r in rows)
    misses = sum(r.get("l1_misses", 0) for r in rows)
    return {"workers": len(by_pid), "l1_hits": hits, "l1_misses": misses,
            "l1_hit_ratio": hits / (hits + misses) if hits + misses else 0.0,
            "redis_hits": sum(r.get("redis_hits", 0) for r in rows),
            "redis_misses": sum(r.get("redis_misses", 0) for r in rows)}


def versions() -> str:
    from importlib.metadata import version

    names = ["django", "djangorestframework", "django-redis", "redis", "hiredis",
             "python-json-logger", "gunicorn", "django-fastcache"]
    return ", ".join(f"{n} {version(n)}" for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="per cell per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--endpoints", default="page,api,write",
                        help="comma-separated subset of page, api, write")
    opts = parser.parse_args()
    wanted = opts.endpoints.split(",")
    endpoints = [e for e, short in zip(ENDPOINTS, ("page", "api", "write"), strict=True)
                 if short in wanted]
    wrk = ensure_wrk()
    work = Path(tempfile.mkdtemp(prefix="bench-site-"))
    (work / "bench_settings.py").write_text(SETTINGS)
    (work / "bench_wsgi.py").write_text(WSGI)
    (work / "bench_access.py").write_text(ACCESS)
    script = work / "post.lua"
    script.write_text(POST_LUA)
    results: dict[tuple[str, str], list[dict]] = {}
    with RedisServer() as redis:
        sites = {"fastcache": Site("fastcache", work, redis.url + "/0"),
                 "baseline": Site("baseline", work, redis.url + "/1")}
        try:
            for site in sites.values():
                site.start()
            for site in sites.values():  # warm both workers' caches and connections
                run_wrk(wrk, site.base + ENDPOINTS[0][2], "GET", 1.0, opts.connections, script)
            for r in range(opts.rounds):
                order = ["fastcache", "baseline"] if r % 2 == 0 else ["baseline", "fastcache"]
                for name, method, path in endpoints:
                    for stack in order:
                        got = run_wrk(wrk, sites[stack].base + path, method, opts.seconds,
                                      opts.connections, script)
                        results.setdefault((name, stack), []).append(got)
            l1 = l1_figures(sites["fastcache"])
        finally:
            for site in sites.values():
                site.stop()
    shutil.rmtree(work, ignore_errors=True)

    def med(name: str, stack: str, field: str) -> float:
        return statistics.median(x[field] for x in results[(name, stack)])

    print(f"\nexample blog under gunicorn (2 sync workers), one local redis-server; wrk "
          f"-c {opts.connections}, {opts.seconds:g} s per cell, median of {opts.rounds} "
          f"interleaved rounds")
    print(versions())
    header = (f"{'endpoint':<20} {'stack':<10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'non-2xx':>8} {'ratio':>7}")
    print(header)
    print("-" * len(header))
    for name, _, _ in endpoints:
        base_rps = med(name, "baseline", "rps")
        for stack in ("fastcache", "baseline"):
            rps = med(name, stack, "rps")
            non2xx = sum(x["non2xx"] for x in results[(name, stack)])
            total = sum(x["requests"] for x in results[(name, stack)])
            ratio = f"{rps / base_rps:.2f}x" if stack == "fastcache" else ""
            print(f"{name:<20} {stack:<10} {rps:>9.0f} {med(name, stack, 'p50'):>8.2f} "
                  f"{med(name, stack, 'p99'):>8.2f} {non2xx / max(total, 1):>7.0%} {ratio:>7}")
    errors = {k: [x["socket_errors"] for x in v if x["socket_errors"]]
              for k, v in results.items()}
    errors = {k: v for k, v in errors.items() if v}
    if errors:
        print(f"socket errors: {errors}")
    rounds = {f"{name} / {stack}": [round(x["rps"]) for x in v]
              for (name, stack), v in results.items()}
    print(f"req/s per round: {rounds}")
    if (ENDPOINTS[0][0], "fastcache") in results:
        page = (med(ENDPOINTS[0][0], "fastcache", "rps")
                / med(ENDPOINTS[0][0], "baseline", "rps"))
        print(f"cached list page: {page:.2f}x the baseline's requests/s (target >= 1.5x: "
              f"{'met' if page >= 1.5 else 'NOT met'})")
    print(f"fastcache L1 ({l1['workers']} workers): {l1['l1_hits']} hits, {l1['l1_misses']} "
          f"misses, hit ratio {l1['l1_hit_ratio']:.1%}; Redis reads {l1['redis_hits']} hits, "
          f"{l1['redis_misses']} misses")


if __name__ == "__main__":
    main()
