"""Tag-based invalidation, the ``cached`` decorator and ``cached_view``, each run on the
embedded default and on a real Redis."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import uuid

import pytest
from django.core.cache import caches
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.test import RequestFactory, override_settings
from django.views.decorators.cache import cache_page
from django_fastcache import tags as tagmod
from django_fastcache.cache import FastCache
from django_fastcache.decorators import cached, cached_view, stable_key

_location_counter = iter(range(10**6))


@pytest.fixture(params=["embedded", "redis"])
def cache_conf(request):
    """CACHES for one test: a fresh embedded store, or a clean database of a real Redis."""
    if request.param == "embedded":
        conf = {"BACKEND": "django_fastcache.cache.FastCache",
                "LOCATION": f"tags-{next(_location_counter)}"}
    else:
        server = request.getfixturevalue("clean_redis_server")
        conf = {"BACKEND": "django_fastcache.cache.FastCache", "LOCATION": server.url + "/0",
                "KEY_PREFIX": "t"}
    with override_settings(CACHES={"default": conf}):
        yield conf


@pytest.fixture
def cache(cache_conf):
    return caches["default"]


# ---------------------------------------------------------------------- tags on the API

def test_invalidate_tags_makes_tagged_entries_misses_and_leaves_others(cache):
    cache.set("a", {"x": 1}, tags=["posts", "author:1"])
    cache.set("b", [1, 2], tags=["author:2"])
    cache.set("plain", "p")
    assert cache.get("a") == {"x": 1} and cache.get("b") == [1, 2]
    cache.invalidate_tags("author:1")
    assert cache.get("a") is None
    assert cache.get("a", "dflt") == "dflt"
    assert cache.get("b") == [1, 2] and cache.get("plain") == "p"
    cache.invalidate_tags("posts", "author:2")
    assert cache.get("b") is None and cache.get("plain") == "p"


def test_entries_written_after_an_invalidation_are_fresh(cache):
    cache.set("a", 1, tags=["t"])
    cache.invalidate_tags("t")
    assert cache.get("a") is None
    cache.set("a", 2, tags=["t"])
    assert cache.get("a") == 2
    cache.invalidate_tags("t")
    cache.invalidate_tags("t")
    assert cache.get("a") is None


def test_stale_entry_is_dropped_so_add_and_get_or_set_refill_it(cache):
    cache.set("k", "old", tags=["t"])
    cache.invalidate_tags("t")
    assert cache.get("k") is None
    assert not cache.has_key("k")
    assert cache.add("k", "new", tags=["t"]) is True
    assert cache.get("k") == "new"
    cache.invalidate_tags("t")
    assert cache.get_or_set("k", lambda: "computed") == "computed"
    assert cache.get("k") == "computed"


def test_get_many_and_set_many_with_tags(cache):
    assert cache.set_many({"a": 1, "b": (1, 2), "c": None}, tags=["g"]) == []
    cache.set("d", "untagged")
    assert cache.get_many(["a", "b", "c", "d", "zz"]) == {"a": 1, "b": (1, 2), "c": None,
                                                          "d": "untagged"}
    cache.invalidate_tags("g")
    assert cache.get_many(["a", "b", "c", "d"]) == {"d": "untagged"}


def test_none_values_and_user_tuples_round_trip(cache):
    cache.set("n", None, tags=["t"])
    assert cache.get("n", "missing") is None
    cache.set("tup", ("a", "b", "c", "d"))  # a user's 4-tuple is not an envelope
    assert cache.get("tup") == ("a", "b", "c", "d")


def test_counter_lost_means_miss_and_no_aba(cache):
    cache.set("k", "v", tags=["t"])
    cache.delete(tagmod.tag_key("t"))  # evicted or flushed
    assert cache.get("k") is None
    cache.set("k2", "v2", tags=["t"])   # recreated at a random start, not 0
    cache.invalidate_tags("t")
    assert cache.get("k2") is None


def test_invalidate_unknown_tag_is_harmless(cache):
    cache.invalidate_tags("never-used")
    cache.set("k", 1, tags=["never-used"])
    assert cache.get("k") == 1


def test_bad_tags_are_refused(cache):
    with pytest.raises(TypeError, match="must be strings"):
        cache.set("k", 1, tags=[3])
    with pytest.raises(ValueError, match="invalid cache tag"):
        cache.invalidate_tags("has space")
    with pytest.raises(ValueError, match="invalid cache tag"):
        cache.set("k", 1, tags=[""])


def test_tag_counters_are_keys_one_per_tag(cache):
    cache.set("a", 1, tags=["x", "y"])
    cache.set("b", 1, tags=["x"])
    assert sorted(cache.keys("fastcache.tag:*")) == ["fastcache.tag:x", "fastcache.tag:y"]


def test_async_api_with_tags(cache):
    async def run():
        await cache.aset("k", [1], tags=["t"])
        assert await cache.aget("k") == [1]
        assert await cache.aget_many(["k"]) == {"k": [1]}
        await cache.ainvalidate_tags("t")
        assert await cache.aget("k") is None
        assert await cache.aadd("k", 2, tags=["t"]) is True
        assert await cache.aget("k") == 2

    asyncio.run(run())


def test_tagged_hit_reads_one_get_many_on_the_embedded_default(monkeypatch):
    cache = FastCache("tags-count", {})
    cache.set("k", 1, tags=["a", "b"])
    calls = []
    real = cache._cache

    class Spy:
        def __getattr__(self, name):
            attr = getattr(real, name)
            if callable(attr):
                def wrapped(*a, **kw):
                    calls.append(name)
                    return attr(*a, **kw)
                return wrapped
            return attr

    monkeypatch.setattr(cache, "_cache", Spy())
    tags = tagmod.normalize(["a", "b"])
    assert tagmod.get_tagged(cache, "k", tags) == (1, tagmod.generations(cache, tags, create=False))
    assert calls == ["get_many", "get_many"]  # the lookup, then the check in this assert
    calls.clear()
    cache.invalidate_tags("a", "b")
    assert calls == ["incr", "incr"]


# ---------------------------------------------------------------------- @cached

def test_cached_function_hits_invalidates_one_and_all(cache):
    calls = []

    @cached(timeout=60)
    def square(x, scale=1):
        calls.append(x)
        return {"v": x * x * scale}

    assert square(3) == {"v": 9}
    assert square(3) == {"v": 9}
    assert square(x=3) == {"v": 9} and square(3, 1) == {"v": 9} and square(3, scale=1) == {"v": 9}
    assert calls == [3]
    assert square(4) == {"v": 16} and calls == [3, 4]
    assert square.invalidate(3) is True
    assert square(3) == {"v": 9} and calls == [3, 4, 3]
    square(4)
    assert calls == [3, 4, 3]
    square.invalidate_all()
    square(3)
    square(4)
    assert calls == [3, 4, 3, 3, 4]


def test_cached_results_are_copies_and_none_is_cached(cache):
    calls = []

    @cached
    def maybe(x):
        calls.append(x)
        return None if x == 0 else [x]

    assert maybe(0) is None and maybe(0) is None and calls == [0]
    got = maybe(1)
    got.append("mutated")
    assert maybe(1) == [1]


def test_cached_with_tags_templates_and_callables(cache):
    calls = []

    @cached(tags=["posts", "author:{author_id}"])
    def posts_of(author_id):
        calls.append(author_id)
        return [author_id]

    @cached(tags=lambda post_id: [f"post:{post_id}"], key="post:{post_id}")
    def post(post_id):
        calls.append(("post", post_id))
        return post_id

    posts_of(1), posts_of(2), post(5)
    posts_of(1), posts_of(2), post(5)
    assert calls == [1, 2, ("post", 5)]
    cache.invalidate_tags("author:1")
    posts_of(1), posts_of(2)
    assert calls == [1, 2, ("post", 5), 1]
    cache.invalidate_tags("posts")
    posts_of(2)
    assert calls[-1] == 2
    assert cache.get("post:5") == 5  # the template is the whole key
    cache.invalidate_tags("post:5")
    post(5)
    assert calls[-1] == ("post", 5)


def test_cached_methods_key_on_the_instance(cache):
    class Repo:
        def __init__(self, name):
            self.name = name
            self.calls = 0

        def __fastcache_key__(self):
            return self.name

        @cached()
        def find(self, q):
            self.calls += 1
            return f"{self.name}:{q}"

    a, b = Repo("a"), Repo("b")
    assert a.find("x") == "a:x" and a.find("x") == "a:x" and a.calls == 1
    assert b.find("x") == "b:x" and b.calls == 1
    assert a.find.invalidate("x") is True
    a.find("x")
    assert a.calls == 2 and b.find("x") == "b:x" and b.calls == 1


def test_cached_async_function(cache):
    calls = []

    @cached(tags=["t"])
    async def fetch(x):
        calls.append(x)
        return x + 1

    async def run():
        assert await fetch(1) == 2
        assert await fetch(1) == 2
        await cache.ainvalidate_tags("t")
        assert await fetch(1) == 2

    asyncio.run(run())
    assert calls == [1, 1]


def test_cached_key_is_stable_and_bounded():
    values = ("é" * 500, 1, 1.5, None, True, b"\x00", (1, [2, {"b": 1, "a": {3, 2}}]),
              decimal.Decimal("1.10"), uuid.UUID(int=5), datetime.date(2024, 1, 2),
              frozenset({"x"}), int)
    k = stable_key(*values)
    assert len(k) == 32 and k == stable_key(*values)
    assert stable_key({"a": 1, "b": 2}) == stable_key({"b": 2, "a": 1})
    assert stable_key(1) != stable_key("1") != stable_key(1.0) != stable_key(True)
    assert stable_key((1, 2)) != stable_key([1, 2])
    assert stable_key(decimal.Decimal("1.10")) != stable_key(decimal.Decimal("1.1"))


def test_cached_key_is_the_same_in_another_process():
    import subprocess
    import sys

    code = ("from django_fastcache.decorators import stable_key;"
            "print(stable_key('a', 1, {'b': (2.5, None)}, {'x', 'y', 'z'}))")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={"PYTHONHASHSEED": seed}, check=True).stdout.strip()
            for seed in ("1", "2")}
    assert outs == {stable_key("a", 1, {"b": (2.5, None)}, {"x", "y", "z"})}


def test_cached_refuses_arguments_without_a_stable_identity(cache):
    @cached()
    def f(obj):
        return 1

    with pytest.raises(TypeError, match="argument #0 of type .*object.*__fastcache_key__"):
        f(object())

    @cached(key="x:{nope}")
    def g(a):
        return a

    with pytest.raises(ValueError, match="names 'nope'"):
        g(1)


def test_cached_needs_a_fastcache():
    from django.core.exceptions import ImproperlyConfigured

    @cached()
    def f():
        return 1

    with override_settings(CACHES={"default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}):
        with pytest.raises(ImproperlyConfigured, match="needs a FastCache"):
            f()


def test_invalidation_during_computation_is_not_lost(cache):
    """A value computed while its tag was invalidated is stored stale, never served."""

    @cached(tags=["t"])
    def slow():
        cache.invalidate_tags("t")  # an edit commits while we compute
        return "old data"

    assert slow() == "old data"

    @cached(tags=["t"], key="slow-key")
    def fresh():
        return "new data"

    assert cache.get("slow-key") is None
    assert fresh() == "new data"


# ---------------------------------------------------------------------- cached_view

rf = RequestFactory()


def _counter_view(counter):
    def view(request, post_id=None):
        counter.append(request.path)
        return HttpResponse(f"rendered {len(counter)}")
    return view


def test_cached_view_caches_like_cache_page_and_invalidates_by_tag(cache):
    calls: list = []
    view = cached_view(60, tags=["posts"])(_counter_view(calls))
    r1 = view(rf.get("/p/"))
    r2 = view(rf.get("/p/"))
    assert r1.content == r2.content == b"rendered 1" and len(calls) == 1
    assert r1["Cache-Control"] == "max-age=60" and "Expires" in r1
    view(rf.get("/p/?page=2"))
    assert len(calls) == 2  # the query string is part of the key, as in cache_page
    view(rf.post("/p/"))
    assert len(calls) == 3  # POST is never cached
    cache.invalidate_tags("posts")
    assert view(rf.get("/p/")).content == b"rendered 4"
    assert view(rf.get("/p/")).content == b"rendered 4"


def test_cached_view_headers_match_cache_page(cache):
    ours = cached_view(30)(lambda r: HttpResponse("x"))(rf.get("/same/"))
    cache.clear()
    theirs = cache_page(30)(lambda r: HttpResponse("x"))(rf.get("/same/"))
    assert ours["Cache-Control"] == theirs["Cache-Control"]
    assert sorted(ours.headers) == sorted(theirs.headers)


def test_cached_view_respects_cache_page_rules(cache):
    calls: list = []

    def view(request):
        calls.append(1)
        response = HttpResponse("private", status=200)
        response["Cache-Control"] = "private"
        return response

    wrapped = cached_view(60, tags=["t"])(view)
    wrapped(rf.get("/private/"))
    wrapped(rf.get("/private/"))
    assert len(calls) == 2

    def not_found(request):
        calls.append(2)
        return HttpResponse(status=404)

    wrapped = cached_view(60, tags=["t"])(not_found)
    wrapped(rf.get("/nf/"))
    wrapped(rf.get("/nf/"))
    assert calls.count(2) == 2


def test_cached_view_tags_from_url_kwargs_and_callables(cache):
    calls: list = []
    by_kwarg = cached_view(60, tags=["post:{post_id}"])(_counter_view(calls))
    by_request = cached_view(60, tags=lambda request, **kw: [f"author:{request.GET['a']}"])(
        _counter_view(calls))
    by_kwarg(rf.get("/post/1/"), post_id=1)
    by_kwarg(rf.get("/post/2/"), post_id=2)
    by_request(rf.get("/list/?a=7"))
    cache.invalidate_tags("post:1", "author:8")
    by_kwarg(rf.get("/post/1/"), post_id=1)
    by_kwarg(rf.get("/post/2/"), post_id=2)
    by_request(rf.get("/list/?a=7"))
    assert calls == ["/post/1/", "/post/2/", "/list/", "/post/1/"]
    cache.invalidate_tags("author:7")
    by_request(rf.get("/list/?a=7"))
    assert calls[-1] == "/list/"


def test_cached_view_template_response_is_cached_after_render(cache):
    from django.template import engines

    calls: list = []
    template = engines["django"].from_string("hello {{ n }}")

    def view(request):
        calls.append(1)
        return TemplateResponse(request, template, {"n": len(calls)})

    wrapped = cached_view(60, tags=["tpl"])(view)
    first = wrapped(rf.get("/tpl/"))
    first.render()
    again = wrapped(rf.get("/tpl/"))
    assert again.content == b"hello 1" and len(calls) == 1


def test_cached_view_async(cache):
    calls: list = []

    async def view(request):
        calls.append(1)
        return HttpResponse("async")

    wrapped = cached_view(60, tags=["a"])(view)

    async def run():
        await wrapped(rf.get("/async/"))
        await wrapped(rf.get("/async/"))
        await cache.ainvalidate_tags("a")
        await wrapped(rf.get("/async/"))

    asyncio.run(run())
    assert len(calls) == 2
