"""django_fastcache.orm across processes on one Redis, and against django-cacheops itself:
worker processes (orm_worker.py) share a SQLite file and a Redis started by the tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
pytestmark = pytest.mark.redis


class Worker:
    def __init__(self, lib: str, db: str, redis: str, prefix: str = "orm",
                 strict: bool = False, lazy: bool = False) -> None:
        cfg = {"lib": lib, "db": db, "redis": redis, "prefix": prefix, "strict": strict,
               "lazy": lazy}
        self.proc = subprocess.Popen([sys.executable, str(HERE / "orm_worker.py"),
                                      json.dumps(cfg)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=HERE)

    def __call__(self, op: str, name: str | None = None, *args, **kwargs) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, "name": name, "args": args,
                                          "kwargs": kwargs}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, "worker died"
        answer = json.loads(line)
        assert "error" not in answer, answer["error"]
        return answer

    def q(self, name, *args):
        return self("q", name, *args)

    def w(self, name, *args, **kwargs):
        return self("w", name, *args, **kwargs)["result"]

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)
        self.proc.stdout.close()


@pytest.fixture
def db(tmp_path):
    return str(tmp_path / "db.sqlite3")


def seed(w: Worker) -> None:
    w("setup")
    w.w("new_author", "ann"), w.w("new_author", "bob")
    w.w("new_tag", "t1"), w.w("new_tag", "t2")
    w.w("create", 1, "a1", "news", 1)
    w.w("create", 1, "a2", "tech", 2)
    w.w("create", 2, "b1", "news", 3)


def test_two_processes_reader_never_stale_after_commit(clean_redis_server, db):
    writer = Worker("fastcache", db, clean_redis_server.url)
    reader = Worker("fastcache", db, clean_redis_server.url)
    try:
        seed(writer)
        assert reader.q("by_author", 1) == {"result": ["a1", "a2"], "hit": False}
        assert reader.q("by_author", 1) == {"result": ["a1", "a2"], "hit": True}
        assert writer.q("by_author", 1) == {"result": ["a1", "a2"], "hit": True}  # shared
        worst = 0.0
        stale = 0
        for i in range(20):
            writer.w("create", 1, f"n{i}")
            start = time.monotonic()
            # The counters moved in Redis before the writer answered; the reader's L1
            # hears of it through the invalidation stream (asynchronous), and a hit asks
            # Redis while an invalidation is unread or unapplied in its process.
            while reader.q("by_author", 1)["result"][-1] != f"n{i}":
                stale += 1
                assert time.monotonic() - start < 2.0, "stale after commit"
            worst = max(worst, time.monotonic() - start)
            other = reader.q("by_author", 2)
            assert other["result"] == ["b1"]
        assert reader.q("get", 1) == {"result": "a1", "hit": False}
        writer.w("save", 1, title="a1!")
        start = time.monotonic()
        while reader.q("get", 1)["result"] != "a1!":
            assert time.monotonic() - start < 2.0
        print(f"worst delay between a commit and the other process seeing it: "
              f"{worst * 1000:.2f} ms; stale reads after a commit: {stale}")
    finally:
        writer.close()
        reader.close()


def test_strict_reader_is_never_stale_after_a_commit_returns(clean_redis_server, db):
    """FASTCACHE_ORM_STRICT: a read that starts after another process's write returned
    sees it at once (its hit checks the counters in Redis), where the default L1 may
    serve the previous result for as long as the invalidation takes to arrive."""
    writer = Worker("fastcache", db, clean_redis_server.url, strict=True)
    reader = Worker("fastcache", db, clean_redis_server.url, strict=True)
    try:
        seed(writer)
        assert reader.q("by_author", 1)["hit"] is False
        assert reader.q("by_author", 1) == {"result": ["a1", "a2"], "hit": True}
        assert reader.q("get", 1) == {"result": "a1", "hit": False}
        assert reader.q("by_author", 2)["hit"] is False
        for i in range(30):
            writer.w("create", 1, f"n{i}")
            assert reader.q("by_author", 1)["result"][-1] == f"n{i}", "stale after commit"
            assert reader.q("by_author", 1)["hit"] is True  # still served from the L1
            assert reader.q("by_author", 2) == {"result": ["b1"], "hit": True}
            writer.w("save", 1, title=f"a1-{i}")
            assert reader.q("get", 1)["result"] == f"a1-{i}", "stale after commit"
    finally:
        writer.close()
        reader.close()


def test_lock_one_process_computes_the_others_wait_for_its_result(clean_redis_server, db):
    """lock=True across processes: of several processes missing at once, exactly one
    computes (a lease in Redis); the others wait and get its result, for a cached
    queryset and for a ``@cached(lock=True)`` function."""
    # Strict: the reads right after the write below must see it (see the next test).
    workers = [Worker("fastcache", db, clean_redis_server.url, strict=True) for _ in range(4)]
    try:
        seed(workers[0])

        def all_at_once(name, *args):
            for w in workers:  # every request is sent before any answer is read
                w.proc.stdin.write(json.dumps({"op": "q", "name": name, "args": args}) + "\n")
                w.proc.stdin.flush()
            answers = [json.loads(w.proc.stdout.readline()) for w in workers]
            assert all("error" not in a for a in answers), answers
            return [a["result"] for a in answers]

        got = all_at_once("locked_posts", 1, 0.5)
        assert [g["titles"] for g in got] == [["a1", "a2"]] * 4
        assert sum(g["computed"] for g in got) == 1, got
        got = all_at_once("locked_function", "x", 0.5)
        assert len({g["value"] for g in got}) == 1, got  # the computing process's value
        assert sum(g["computed"] for g in got) == 1, got
        # A write invalidates it; the next round again computes once.
        workers[1].w("create", 1, "a3")
        got = all_at_once("locked_posts", 1, 0.5)
        assert [g["titles"] for g in got] == [["a1", "a2", "a3"]] * 4
        assert sum(g["computed"] for g in got) == 2, got
    finally:
        for w in workers:
            w.close()


# The same script on both libraries: (name, args) queries and writes.
SCRIPT = [
    ("q", "by_author", 1), ("q", "by_author", 1), ("q", "by_author", 2),
    ("q", "get", 1), ("q", "get", 1), ("q", "count_category", "news"),
    ("q", "count_category", "news"), ("q", "exists_title", "zz"), ("q", "views_of", 1),
    ("q", "author_or_category", 2, "tech"), ("q", "pk_in", 1, 3), ("q", "tagged", 1),
    ("q", "by_author_name", "bob"), ("q", "author_and_category", 1, "news"),
    ("w", "create", 2, "b2", "sport"),
    ("q", "by_author", 1), ("q", "by_author", 2), ("q", "get", 1),
    ("q", "count_category", "news"), ("q", "author_or_category", 2, "tech"),
    ("q", "pk_in", 1, 3), ("q", "author_and_category", 1, "news"),
    ("w", "save", 2, "category", "news"),
    ("q", "by_author", 1), ("q", "by_author", 2), ("q", "count_category", "news"),
    ("q", "author_and_category", 1, "news"), ("q", "pk_in", 1, 3), ("q", "get", 1),
    ("w", "tag", 1, 1),
    ("q", "tagged", 1), ("q", "tagged", 2), ("q", "by_author", 1),
    ("w", "invalidated_update", 2, "tech"),
    ("q", "by_author", 2), ("q", "by_author", 1), ("q", "count_category", "news"),
    ("q", "author_or_category", 2, "tech"),
    ("w", "delete", 3),
    ("q", "pk_in", 1, 3), ("q", "by_author", 2), ("q", "get", 1), ("q", "views_of", 1),
    ("w", "rename_author", 1, "bob"),
    ("q", "by_author_name", "bob"), ("q", "by_author", 1),
]


def run_script(w: Worker) -> list:
    seed(w)
    out = []
    for op, name, *args in SCRIPT:
        if op == "w":
            if name == "save":
                w.w("save", args[0], **{args[1]: args[2]})
            else:
                w.w(name, *args)
            out.append(("w", name))
        else:
            a = w.q(name, *args)
            out.append((name, args, a["result"], a["hit"]))
    return out


@pytest.mark.parametrize("lazy", [False, True], ids=["eager", "lazy_filter"])
def test_differential_against_cacheops(clean_redis_server, tmp_path, lazy):
    pytest.importorskip("cacheops")
    results = {}
    for lib in ("cacheops", "fastcache"):
        clean_redis_server.command("FLUSHALL")
        w = Worker(lib, str(tmp_path / f"{lib}.sqlite3"), clean_redis_server.url, lazy=lazy)
        try:
            results[lib] = run_script(w)
        finally:
            w.close()
    ours, theirs = results["fastcache"], results["cacheops"]
    diffs = [(i, a, b) for i, (a, b) in enumerate(zip(ours, theirs, strict=True)) if a != b]
    assert not diffs, "\n".join(f"step {i}: ours {a} cacheops {b}" for i, a, b in diffs)
    assert sum(1 for r in ours if len(r) == 4 and r[3]) >= 10  # hits were compared


@pytest.mark.django_db(transaction=True)
def test_redis_down_degrades_or_raises(settings):
    """CACHEOPS_DEGRADE_ON_FAILURE: with Redis gone, queries go to the database (True) or
    the cache error propagates (False), as in cacheops."""
    from django.core.cache import caches
    from django_fastcache.orm.signals import cache_read
    from ormapp.models import Author, Post
    from redis_servers import RedisServer

    hits = []
    cache_read.connect(lambda sender, func, hit, **kw: hits.append(hit), weak=False,
                       dispatch_uid="degrade")
    with RedisServer() as server:
        settings.CACHES = {**settings.CACHES, "ormredis": {
            "BACKEND": "django_fastcache.cache.FastCache", "LOCATION": server.url,
            "KEY_PREFIX": "degrade", "OPTIONS": {"IGNORE_EXCEPTIONS": False}}}
        settings.FASTCACHE_ORM_CACHE = "ormredis"
        settings.CACHEOPS = {"ormapp.*": {"ops": "all", "timeout": 60}}
        settings.CACHEOPS_DEGRADE_ON_FAILURE = True
        try:
            a = Author.objects.create(name="x")
            Post.objects.create(author=a, title="p")
            for _ in range(2):
                assert [p.title for p in Post.objects.filter(author=a)] == ["p"]
            assert hits == [False, True]
            server.kill()
            assert [p.title for p in Post.objects.filter(author=a)] == ["p"]
            settings.CACHEOPS_DEGRADE_ON_FAILURE = False
            with pytest.raises(Exception) as info:
                list(Post.objects.filter(author_id=a.pk, title="p"))
            assert "onnect" in str(info.value) or "Redis" in type(info.value).__name__ \
                or "onnection" in type(info.value).__name__
        finally:
            cache_read.disconnect(dispatch_uid="degrade")
            caches["ormredis"].close()
