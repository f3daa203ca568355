"""A process running the ORM cache scenarios' models against a shared SQLite file and a
Redis, with either django_fastcache.orm or django-cacheops (differential test), driven by
JSON lines on stdin, one JSON answer per line on stdout:

    {"op": "setup"}
    {"op": "q", "name": ..., "args": [...]}      a query of QUERIES
    {"op": "w", "name": ..., "args": [...]}      a write of WRITES

A query's answer says what it returned and whether the library reported a cache hit
(its ``cache_read`` signal).
"""

from __future__ import annotations

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

cfg = json.loads(sys.argv[1])
PROFILES = {"ormapp.post": {"ops": "all", "timeout": 600},
            "ormapp.author": {"ops": "all", "timeout": 600},
            "ormapp.tag": {"ops": "all", "timeout": 600}}
common = dict(
    SECRET_KEY="django-fastcache-tests-not-secret", USE_TZ=True,
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": cfg["db"],
                           "OPTIONS": {"timeout": 20}}},
    DEFAULT_AUTO_FIELD="django.db.models.AutoField", CACHEOPS=PROFILES,
)
if cfg["lib"] == "cacheops":
    settings.configure(INSTALLED_APPS=["cacheops", "ormapp"], CACHEOPS_REDIS=cfg["redis"],
                       **common)
else:
    settings.configure(
        INSTALLED_APPS=["django_fastcache", "django_fastcache.orm", "ormapp"],
        CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache",
                            "LOCATION": cfg["redis"], "KEY_PREFIX": cfg.get("prefix", "orm"),
                            "OPTIONS": {"IGNORE_EXCEPTIONS": False}}},
        CACHEOPS_REDIS=cfg["redis"], FASTCACHE_ORM_STRICT=cfg.get("strict", False),
        FASTCACHE_ORM_LAZY_FILTER=cfg.get("lazy", False), **common)
django.setup()

from django.db import connection  # noqa: E402
from django.db.models import Q, Sum  # noqa: E402
from django.db.models.query import ModelIterable  # noqa: E402
from ormapp.models import Author, Post, Tag  # noqa: E402

if cfg["lib"] == "cacheops":
    from cacheops.signals import cache_read  # noqa: E402
else:
    from django_fastcache.orm.signals import cache_read  # noqa: E402

reads: list = []
cache_read.connect(lambda sender, func, hit, **kw: reads.append(bool(hit)), weak=False)


def titles(qs):
    return [p.title for p in qs]


QUERIES = {
    "by_author": lambda a: titles(Post.objects.filter(author_id=a)),
    "get": lambda pk: Post.objects.get(pk=pk).title,
    "count_category": lambda c: Post.objects.filter(category=c).count(),
    "exists_title": lambda t: Post.objects.filter(title=t).exists(),
    "views_of": lambda a: Post.objects.filter(author_id=a).aggregate(v=Sum("views"))["v"],
    "author_or_category": lambda a, c: sorted(titles(
        Post.objects.filter(Q(author_id=a) | Q(category=c)))),
    "pk_in": lambda *pks: titles(Post.objects.filter(pk__in=pks)),
    "tagged": lambda t: titles(Post.objects.filter(tags=t)),
    "by_author_name": lambda n: titles(Post.objects.filter(author__name=n)),
    "author_and_category": lambda a, c: titles(Post.objects.filter(author_id=a, category=c)),
}


# Slow computations for the dog-pile test: each reports how many computations this process
# ran, and the cached function's value names the process that computed it.
COMPUTED = {"query": 0, "function": 0}


def locked_posts(a, delay):
    real = ModelIterable.__iter__

    def slow(self):
        COMPUTED["query"] += 1
        time.sleep(delay)
        return real(self)

    ModelIterable.__iter__ = slow
    try:
        return {"titles": titles(Post.objects.filter(author_id=a).cache(lock=True)),
                "computed": COMPUTED["query"]}
    finally:
        ModelIterable.__iter__ = real


if cfg["lib"] != "cacheops":
    from django_fastcache.orm import cached  # noqa: E402

    @cached(timeout=60, lock=True)
    def expensive(x, delay):
        COMPUTED["function"] += 1
        time.sleep(delay)
        return f"{x} by {os.getpid()}"


def locked_function(x, delay):
    return {"value": expensive(x, delay), "computed": COMPUTED["function"]}


QUERIES["locked_posts"] = locked_posts
QUERIES["locked_function"] = locked_function


def save(pk, **fields):
    p = Post.objects.get(pk=pk) if cfg["lib"] == "cacheops" else \
        Post.objects.nocache().get(pk=pk)
    for k, v in fields.items():
        setattr(p, k, v)
    p.save()


WRITES = {
    "create": lambda a, title, cat="news", views=0: Post.objects.create(
        author_id=a, title=title, category=cat, views=views).pk,
    "save": save,
    "delete": lambda pk: Post.objects.filter(pk=pk).delete()[0],
    "tag": lambda pk, t: Post.objects.get(pk=pk).tags.add(t),
    "untag": lambda pk, t: Post.objects.get(pk=pk).tags.remove(t),
    "invalidated_update": lambda a, cat: Post.objects.filter(author_id=a)
    .invalidated_update(category=cat),
    "rename_author": lambda a, name: Author.objects.filter(pk=a).invalidated_update(name=name),
    "new_tag": lambda name: Tag.objects.create(name=name).pk,
    "new_author": lambda name: Author.objects.create(name=name).pk,
}


def setup():
    with connection.schema_editor() as editor:
        for model in (Author, Tag, Post):
            editor.create_model(model)
    return True


for line in sys.stdin:
    cmd = json.loads(line)
    reads.clear()
    try:
        if cmd["op"] == "setup":
            result = setup()
        elif cmd["op"] == "q":
            result = QUERIES[cmd["name"]](*cmd.get("args", ()))
        else:
            result = WRITES[cmd["name"]](*cmd.get("args", ()), **cmd.get("kwargs", {}))
        answer = {"result": result, "hit": reads[-1] if reads else None}
    except Exception as exc:  # noqa: BLE001 - reported to the driving test
        answer = {"error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()
