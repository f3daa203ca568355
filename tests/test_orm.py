"""django_fastcache.orm scenarios: every op, the API, DNF dependencies, m2m, transactions.

Runs on the conftest database (SQLite in memory) and, from test_orm_pg.py, on a real
PostgreSQL server (ORM_TEST_PG_PORT). Hits and misses are observed through the
cache_read signal, as a cacheops user would."""

from __future__ import annotations

import threading
import time

import pytest
from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.template import Context, Template
from django.test import RequestFactory
from django_fastcache import decorators
from django_fastcache.orm import (
    cache_invalidated,
    cache_read,
    cached,
    cached_as,
    cached_view,
    cached_view_as,
    conf,
    invalidate_all,
    invalidate_dict,
    invalidate_model,
    invalidate_obj,
    no_invalidation,
)
from ormapp.models import Author, Note, Post, Tag

PROFILES = {"ormapp.post": {"ops": "all", "timeout": 600},
            "ormapp.author": {"ops": ("get", "fetch"), "timeout": 300},
            "ormapp.tag": {"ops": "all", "timeout": 300},
            "ormapp.*": {"ops": (), "timeout": 60}}


class Reads:
    """Records cache_read events: ``take()`` returns and forgets them."""

    def __init__(self) -> None:
        self.events: list = []
        cache_read.connect(self._on, weak=False, dispatch_uid="test_orm.reads")

    def _on(self, sender, func, hit, **kwargs):
        self.events.append(("hit" if hit else "miss", sender or func))

    def take(self) -> list:
        out = [e[0] for e in self.events]
        self.events.clear()
        return out

    def close(self):
        cache_read.disconnect(dispatch_uid="test_orm.reads")


@pytest.fixture
def reads(settings):
    settings.CACHEOPS = PROFILES
    caches["default"].clear()
    r = Reads()
    yield r
    r.close()


@pytest.fixture
def blog(reads, django_db_blocker):
    a = Author.objects.create(name="ann")
    b = Author.objects.create(name="bob")
    p1 = Post.objects.create(author=a, title="a1", category="news")
    p2 = Post.objects.create(author=a, title="a2", category="tech")
    p3 = Post.objects.create(author=b, title="b1", category="news")
    reads.take()
    return {"a": a, "b": b, "p1": p1, "p2": p2, "p3": p3}


def titles(qs) -> list:
    return [p.title for p in qs.all()]  # a fresh clone: evaluated again


pytestmark = pytest.mark.django_db(transaction=True)


# ---------------------------------------------------------------------- settings

@pytest.mark.parametrize("bad, words", [
    ({"ormapp.post": {"ops": "all"}}, '"timeout"'),
    ({"ormapp.post": {"ops": "fetchh", "timeout": 5}}, "unknown ops 'fetchh'"),
    ({"ormapp.post": {"ops": "all", "timeout": "5"}}, '"timeout" must be'),
    ({"ormapp.post": {"ops": "all", "timeout": 5, "colour": 1}}, "unknown options 'colour'"),
    ({"post": {"ops": "all", "timeout": 5}}, "CACHEOPS key 'post'"),
    ({"ormapp.post": {"ops": "all", "timeout": 5, "local_get": "yes"}}, '"local_get"'),
])
def test_bad_cacheops_settings_name_the_option(settings, bad, words):
    settings.CACHEOPS = bad
    with pytest.raises(ImproperlyConfigured, match=words.replace("(", r"\(")):
        conf.validate()


def test_other_settings_are_checked(settings):
    settings.CACHEOPS = PROFILES
    settings.FASTCACHE_ORM_CACHE = "nope"
    with pytest.raises(ImproperlyConfigured, match="FASTCACHE_ORM_CACHE"):
        conf.validate()
    del settings.FASTCACHE_ORM_CACHE
    settings.CACHEOPS_REDIS = 5
    with pytest.raises(ImproperlyConfigured, match="CACHEOPS_REDIS"):
        conf.validate()
    settings.CACHEOPS_REDIS = {"host": "localhost", "port": 6379}
    settings.CACHEOPS_DEGRADE_ON_FAILURE = "no"
    with pytest.raises(ImproperlyConfigured, match="CACHEOPS_DEGRADE_ON_FAILURE"):
        conf.validate()
    settings.CACHEOPS_DEGRADE_ON_FAILURE = True
    conf.validate()


def test_profile_lookup_model_then_app_then_everything(settings):
    settings.CACHEOPS = {"ormapp.post": {"ops": "get", "timeout": 1},
                         "ormapp.*": {"ops": "count", "timeout": 2},
                         "*.*": {"ops": "fetch", "timeout": 3}, "auth.user": None}
    settings.CACHEOPS_DEFAULTS = {"timeout": 9}
    assert conf.model_profile(Post)["ops"] == {"get"}
    assert conf.model_profile(Tag)["timeout"] == 2
    from django.contrib.auth.models import Group, User

    assert conf.model_profile(Group)["ops"] == {"fetch"}
    assert conf.model_profile(User) is None
    settings.CACHEOPS = {"ormapp.post": {"ops": "all"}}
    assert conf.model_profile(Post)["timeout"] == 9  # from CACHEOPS_DEFAULTS
    assert conf.model_profile(Post)["ops"] == conf.ALL_OPS


# ---------------------------------------------------------------------- ops

def test_fetch_hit_and_granular_invalidation(blog, reads):
    a, b = blog["a"], blog["b"]
    assert titles(Post.objects.filter(author=a)) == ["a1", "a2"]
    assert titles(Post.objects.filter(author=a)) == ["a1", "a2"]
    assert reads.take() == ["miss", "hit"]
    Post.objects.create(author=b, title="b2")  # another author's post: still a hit
    assert titles(Post.objects.filter(author=a)) == ["a1", "a2"]
    assert reads.take() == ["hit"]
    Post.objects.create(author=a, title="a3")
    assert titles(Post.objects.filter(author=a)) == ["a1", "a2", "a3"]
    assert reads.take() == ["miss"]


def test_moving_a_row_invalidates_old_and_new_conditions(blog, reads):
    a, b, p1 = blog["a"], blog["b"], blog["p1"]
    titles(Post.objects.filter(author=a)), titles(Post.objects.filter(author=b))
    reads.take()
    p1.author = b
    p1.save()
    assert titles(Post.objects.filter(author=a)) == ["a2"]
    assert titles(Post.objects.filter(author=b)) == ["a1", "b1"]
    assert reads.take() == ["miss", "miss"]


def test_delete_and_queryset_delete_invalidate(blog, reads):
    a = blog["a"]
    assert Post.objects.filter(author=a).count() == 2
    blog["p1"].delete()
    assert Post.objects.filter(author=a).count() == 1
    Post.objects.filter(author=a).delete()
    assert Post.objects.filter(author=a).count() == 0
    assert reads.take() == ["miss", "miss", "miss"]


def test_get_count_exists_aggregate(blog, reads):
    p1 = blog["p1"]
    assert Post.objects.get(pk=p1.pk).title == "a1"
    assert Post.objects.get(pk=p1.pk).title == "a1"
    assert Post.objects.filter(category="news").count() == 2
    assert Post.objects.filter(category="news").count() == 2
    assert Post.objects.filter(title="zz").exists() is False
    assert Post.objects.filter(title="zz").exists() is False
    assert Post.objects.aggregate(n=Count("id"), v=Sum("views")) == {"n": 3, "v": 0}
    assert Post.objects.aggregate(n=Count("id"), v=Sum("views")) == {"n": 3, "v": 0}
    assert Post.objects.aggregate(n=Count("id")) == {"n": 3}  # other arguments: own key
    assert reads.take() == ["miss", "hit"] * 4 + ["miss"]
    Post.objects.create(author=blog["b"], title="zz", category="news", views=5)
    assert Post.objects.get(pk=p1.pk).title == "a1"  # pk=p1 is not the new row
    assert Post.objects.filter(category="news").count() == 3
    assert Post.objects.filter(title="zz").exists() is True
    assert Post.objects.aggregate(n=Count("id"), v=Sum("views")) == {"n": 4, "v": 5}
    assert reads.take() == ["hit", "miss", "miss", "miss"]


def test_values_and_values_list_are_cached_apart(blog, reads):
    qs = Post.objects.filter(author=blog["a"])
    assert list(qs.values_list("title", flat=True)) == ["a1", "a2"]
    assert list(qs.values("title")) == [{"title": "a1"}, {"title": "a2"}]
    assert list(qs.values_list("title", "category")) == [("a1", "news"), ("a2", "tech")]
    assert list(qs.values_list("title", flat=True)) == ["a1", "a2"]
    assert reads.take() == ["miss", "miss", "miss", "hit"]


def test_ops_limit_what_is_cached(blog, reads):
    a = blog["a"]
    assert Author.objects.filter(name="ann").count() == 1  # count is not in its ops
    assert Author.objects.get(pk=a.pk).name == "ann"
    assert Author.objects.get(pk=a.pk).name == "ann"
    assert reads.take() == ["miss", "hit"]
    list(Note.objects.all())  # no profile
    assert reads.take() == []


def test_cache_and_nocache(blog, reads, settings):
    list(Post.objects.nocache().filter(author=blog["a"]))
    assert reads.take() == []
    list(Tag.objects.cache(ops=["count"]).all())  # fetch not enabled by this call
    assert reads.take() == []
    Tag.objects.cache(ops="count").count()
    assert reads.take() == ["miss"]
    settings.CACHEOPS = {"ormapp.post": {"ops": (), "timeout": 5}}
    list(Post.objects.all())
    assert reads.take() == []
    list(Post.objects.cache().all())
    list(Post.objects.all().cache())
    assert reads.take() == ["miss", "hit"]
    with pytest.raises(ImproperlyConfigured, match="ormapp.Note"):
        Note.objects.cache()
    assert Note.objects.nocache().count() == 0
    with pytest.raises(ValueError, match="unknown ops"):
        Post.objects.cache(ops=["fetch", "nope"])


def test_cache_timeout_is_the_entry_ttl(blog, reads):
    list(Post.objects.cache(timeout=1234).filter(category="news"))
    c = caches["default"]
    from django_fastcache.orm.query import query_key

    key = query_key(Post.objects.filter(category="news"), "fetch")
    # The embedded store keeps the TTL: it is the one cache() asked for.
    assert 1230 <= c.ttl(key) <= 1234


# ---------------------------------------------------------------------- DNF

def test_disjunctions_depend_on_each_branch(blog, reads):
    a = blog["a"]
    q = Post.objects.filter(Q(author=a) | Q(category="tech"))
    assert sorted(titles(q)) == ["a1", "a2"]
    Post.objects.create(author=blog["b"], title="b-news", category="news")  # neither branch
    assert sorted(titles(q)) == ["a1", "a2"]
    assert reads.take() == ["miss", "hit"]
    Post.objects.create(author=blog["b"], title="b-tech", category="tech")  # second branch
    assert sorted(titles(q)) == ["a1", "a2", "b-tech"]
    assert reads.take() == ["miss"]


def test_in_and_conjunctions(blog, reads):
    p1, p3 = blog["p1"], blog["p3"]
    q_in = Post.objects.filter(pk__in=[p1.pk, p3.pk])
    q_and = Post.objects.filter(author=blog["a"], category="news")
    assert titles(q_in) == ["a1", "b1"] and titles(q_and) == ["a1"]
    reads.take()
    blog["p2"].title = "a2!"
    blog["p2"].save()  # pk not in the list; author=a but category tech
    assert titles(q_in) == ["a1", "b1"] and titles(q_and) == ["a1"]
    assert reads.take() == ["hit", "hit"]
    p3.title = "b1!"
    p3.save()
    assert titles(q_in) == ["a1", "b1!"] and titles(q_and) == ["a1"]
    assert reads.take() == ["miss", "hit"]


@pytest.mark.parametrize("make", [
    lambda a: Post.objects.exclude(author=a),
    lambda a: Post.objects.filter(Q(views__gte=0) | Q(author=a)),
    lambda a: Post.objects.filter(title__startswith="a"),
])
def test_non_equalities_depend_on_the_whole_model(blog, reads, make):
    q = make(blog["a"])
    before = titles(q)
    Note.objects.create(text="unrelated")
    assert titles(q) == before
    assert reads.take() == ["miss", "hit"]
    Post.objects.create(author=blog["b"], title="zzz")  # matches no equality of the query
    titles(q)
    assert reads.take() == ["miss"]


def test_joined_tables_are_dependencies(blog, reads):
    q = Post.objects.filter(author__name="ann")
    assert titles(q) == ["a1", "a2"]
    Author.objects.create(name="carl")
    assert titles(q) == ["a1", "a2"]
    assert reads.take() == ["miss", "hit"]
    blog["b"].name = "ann"
    blog["b"].save()
    assert titles(q) == ["a1", "a2", "b1"]
    assert reads.take() == ["miss"]


def test_select_related_and_subqueries_are_dependencies(blog, reads):
    q = Post.objects.select_related("author").filter(category="news")
    assert [p.author.name for p in q.all()] == ["ann", "bob"]
    blog["a"].name = "anne"
    blog["a"].save()
    assert [p.author.name for p in q.all()] == ["anne", "bob"]
    assert reads.take() == ["miss", "miss"]
    sub = Post.objects.filter(author__in=Author.objects.filter(name="bob"))
    assert titles(sub) == ["b1"]
    Author.objects.filter(pk=blog["a"].pk).invalidated_update(name="bob")
    assert titles(sub) == ["a1", "a2", "b1"]
    assert reads.take() == ["miss", "miss"]


# ---------------------------------------------------------------------- m2m

def test_m2m_changes_invalidate_both_sides(blog, reads):
    p1, p3 = blog["p1"], blog["p3"]
    t = Tag.objects.create(name="django")
    u = Tag.objects.create(name="redis")
    q = Post.objects.filter(tags=t)
    q_other = Post.objects.filter(tags=u)
    assert titles(q) == [] and titles(q_other) == []
    p1.tags.add(t)
    assert titles(q) == ["a1"] and titles(q_other) == []
    assert reads.take() == ["miss", "miss", "miss", "hit"]
    t.posts.add(p3)  # the reverse side
    assert titles(q) == ["a1", "b1"]
    p1.tags.remove(t)
    assert titles(q) == ["b1"]
    p3.tags.clear()
    assert titles(q) == [] and titles(q_other) == []
    assert reads.take() == ["miss", "miss", "miss", "hit"]
    assert list(p1.tags.all()) == []


# ---------------------------------------------------------------------- updates

def test_invalidated_update_and_plain_update(blog, reads):
    a = blog["a"]
    q = Post.objects.filter(category="news")
    assert titles(q) == ["a1", "b1"]
    assert Post.objects.filter(author=a).update(category="news") == 2  # no signal: stale
    assert titles(q) == ["a1", "b1"]
    assert Post.objects.filter(author=a).invalidated_update(category="tech") == 2
    assert titles(q) == ["b1"]
    assert reads.take() == ["miss", "hit", "miss"]


# ---------------------------------------------------------------------- transactions

def test_a_transaction_that_wrote_reads_its_own_writes_uncached(blog, reads):
    a = blog["a"]
    q = Post.objects.filter(author=a)
    assert titles(q) == ["a1", "a2"]
    with transaction.atomic():
        Post.objects.create(author=a, title="a3")
        assert titles(q) == ["a1", "a2", "a3"]
        assert titles(Tag.objects.all()) == []  # a table it did not write: cached as usual
        assert reads.take() == ["miss", "miss"]  # the first miss is outside
    assert titles(q) == ["a1", "a2", "a3"]
    assert titles(q) == ["a1", "a2", "a3"]
    assert reads.take() == ["miss", "hit"]


def test_rolled_back_reads_never_land_in_the_cache(blog, reads):
    a = blog["a"]
    q = Post.objects.filter(author=a)
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            assert titles(q) == ["a1", "a2"]  # read before any write: stored on commit only
            Post.objects.filter(pk=blog["p1"].pk).update(title="never")  # no signal
            assert titles(Post.objects.filter(author=a, category="news")) == ["never"]
            raise RuntimeError("roll back")
    assert titles(Post.objects.filter(author=a, category="news")) == ["a1"]
    assert titles(q) == ["a1", "a2"]
    assert reads.take() == ["miss", "miss", "miss", "miss"]


def test_savepoint_rollback_undoes_dirtiness(blog, reads):
    a = blog["a"]
    with transaction.atomic():
        try:
            with transaction.atomic():
                Post.objects.create(author=a, title="gone")
                raise RuntimeError
        except RuntimeError:
            pass
        titles(Post.objects.filter(author=a))  # clean again: read through the cache
        assert reads.take() == ["miss"]
    assert titles(Post.objects.filter(author=a)) == ["a1", "a2"]
    assert reads.take() == ["hit"]  # stored at commit


def test_decorators_cached_in_a_rolled_back_transaction(blog):
    calls = []

    @decorators.cached(60)
    def news_titles():
        calls.append(1)
        return sorted(Post.objects.nocache().filter(category="news")
                      .values_list("title", flat=True))

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Post.objects.nocache().filter(pk=blog["p1"].pk).update(title="rolled back")
            assert news_titles() == ["b1", "rolled back"]
            raise RuntimeError
    assert news_titles() == ["a1", "b1"]
    assert news_titles() == ["a1", "b1"]
    assert len(calls) == 2
    with transaction.atomic():
        blog["p3"].title = "b1!"
        blog["p3"].save()  # the transaction has written: the function reads it, uncached
        assert news_titles() == ["a1", "b1!"]
    assert len(calls) == 3


# ---------------------------------------------------------------------- functions

def test_cached_as_models_instances_querysets(blog, reads):
    a, p1 = blog["a"], blog["p1"]
    calls = []

    @cached_as(Post.objects.filter(author=a), extra="x")
    def a_titles(prefix):
        calls.append(prefix)
        return [prefix + t for t in Post.objects.nocache().filter(author=a)
                .values_list("title", flat=True)]

    @cached_as(p1)
    def p1_title():
        calls.append("p1")
        return Post.objects.nocache().get(pk=p1.pk).title

    @cached_as(Tag)
    def n_tags():
        calls.append("tags")
        return Tag.objects.nocache().count()

    assert a_titles(">") == [">a1", ">a2"] and a_titles(">") == [">a1", ">a2"]
    assert p1_title() == "a1" and p1_title() == "a1"
    assert n_tags() == 0 and n_tags() == 0
    assert calls == [">", "p1", "tags"]
    Post.objects.create(author=blog["b"], title="b2")  # none of them
    assert (a_titles(">"), p1_title(), n_tags()) == ([">a1", ">a2"], "a1", 0)
    assert len(calls) == 3
    p1.title = "a1!"
    p1.save()
    assert (a_titles(">"), p1_title(), n_tags()) == ([">a1!", ">a2"], "a1!", 0)
    Tag.objects.create(name="t")
    assert n_tags() == 1
    assert calls[3:] == [">", "p1", "tags"]
    assert a_titles.key(">") != a_titles.key("<")


def test_cached_as_timeout_defaults_to_the_smallest_profile(blog):
    @cached_as(Post, Author)
    def f():
        return 1

    assert f.timeout == 300
    with pytest.raises(TypeError, match="sample"):
        cached_as(object())


def test_simple_cached_invalidate_and_key(reads):
    calls = []

    @cached(timeout=60, extra=lambda n: n % 2)
    def square(n):
        calls.append(n)
        return n * n

    assert square(3) == 9 and square(3) == 9 and calls == [3]
    square.invalidate(3)
    assert square(3) == 9 and calls == [3, 3]
    assert caches["default"].get(square.key(3)) == 9
    invalidate_all()
    assert square(3) == 9 and calls == [3, 3, 3]


def test_cached_views(blog, reads):
    rf = RequestFactory()
    calls = []

    @cached_view_as(Post)
    def post_list(request):
        from django.http import HttpResponse

        calls.append(request.get_full_path())
        return HttpResponse(",".join(Post.objects.nocache().values_list("title", flat=True)))

    @cached_view(timeout=60)
    def hello(request, name):
        from django.http import HttpResponse

        calls.append(name)
        return HttpResponse("hi " + name)

    assert post_list(rf.get("/p/")).content == b"a1,a2,b1"
    assert post_list(rf.get("/p/")).content == b"a1,a2,b1"
    assert post_list(rf.get("/p/?page=2")).content == b"a1,a2,b1"
    post_list(rf.post("/p/"))
    assert calls == ["/p/", "/p/?page=2", "/p/"]
    blog["p1"].delete()
    assert post_list(rf.get("/p/")).content == b"a2,b1"
    assert hello(rf.get("/h"), "x").content == hello(rf.get("/h"), "x").content == b"hi x"
    assert calls[4:] == ["x"]


# ---------------------------------------------------------------------- invalidation API

def test_invalidate_obj_dict_model_all(blog, reads):
    a, p1 = blog["a"], blog["p1"]
    q_a = Post.objects.filter(author=a)
    q_b = Post.objects.filter(author=blog["b"])
    sent = []
    cache_invalidated.connect(lambda sender, obj_dict, **kw: sent.append((sender, obj_dict)),
                              weak=False, dispatch_uid="t")
    try:
        def fill():
            titles(q_a), titles(q_b)
            reads.take()

        fill()
        invalidate_obj(p1)
        titles(q_a), titles(q_b)
        assert reads.take() == ["miss", "hit"]
        invalidate_dict(Post, {"author_id": blog["b"].pk})
        titles(q_a), titles(q_b)
        assert reads.take() == ["hit", "miss"]
        invalidate_model(Post)
        titles(q_a), titles(q_b)
        assert reads.take() == ["miss", "miss"]
        invalidate_all()
        titles(q_a), titles(q_b)
        assert reads.take() == ["miss", "miss"]
        assert [s[0] for s in sent] == [Post, Post, Post, None]
        assert sent[0][1]["author_id"] == a.pk and sent[2][1] is None
    finally:
        cache_invalidated.disconnect(dispatch_uid="t")


def test_no_invalidation(blog, reads):
    q = Post.objects.filter(author=blog["a"])
    titles(q)
    with no_invalidation:
        Post.objects.create(author=blog["a"], title="quiet")
    assert titles(q) == ["a1", "a2"]  # stale, as asked

    @no_invalidation
    def quiet():
        Post.objects.create(author=blog["a"], title="quieter")

    quiet()
    assert titles(q) == ["a1", "a2"]
    Post.objects.create(author=blog["a"], title="loud")
    assert len(titles(q)) == 5


def test_invalidate_command(blog, reads):
    q = Post.objects.filter(author=blog["a"])

    def state():
        titles(q)
        return reads.take()

    state()
    call_command("invalidate", "ormapp.post")
    assert state() == ["miss"]
    call_command("invalidate", "ormapp")
    assert state() == ["miss"]
    call_command("invalidate", f"ormapp.post.{blog['p1'].pk}")
    assert state() == ["miss"]
    call_command("invalidate", "all")
    assert state() == ["miss"]
    assert state() == ["hit"]
    from django.core.management import CommandError

    with pytest.raises(CommandError):
        call_command("invalidate", "ormapp.nomodel")


def test_template_tags(blog, reads):
    t = Template("{% load cacheops %}{% cached_as qs 60 'list' x %}"
                 "{% for p in qs %}{{ p.title }};{% endfor %}{{ n }}{% endcached_as %}"
                 "|{% cached 60 'frag' %}{{ n }}{% endcached %}")
    def qs():
        return Post.objects.nocache().filter(author=blog["a"])

    assert t.render(Context({"qs": qs(), "x": 1, "n": 1})) == "a1;a2;1|1"
    assert t.render(Context({"qs": qs(), "x": 1, "n": 2})) == "a1;a2;1|1"
    Post.objects.create(author=blog["a"], title="a3")
    assert t.render(Context({"qs": qs(), "x": 1, "n": 3})) == "a1;a2;a3;3|1"
    from django_fastcache.orm.templatetags.cacheops import invalidate_fragment

    invalidate_fragment("frag")
    assert t.render(Context({"qs": qs(), "x": 1, "n": 4})) == "a1;a2;a3;3|4"


# ---------------------------------------------------------------------- profiles' extras

def test_local_get_and_cache_on_save(blog, reads, settings):
    settings.CACHEOPS = {**PROFILES, "ormapp.tag": {"ops": "get", "timeout": 60,
                                                   "local_get": True},
                         "ormapp.post": {"ops": "all", "timeout": 60, "cache_on_save": True}}
    t = Tag.objects.create(name="x")
    assert Tag.objects.get(pk=t.pk) is Tag.objects.get(pk=t.pk)  # process-local, no reads
    p = Post.objects.create(author=blog["a"], title="saved")
    reads.take()
    assert Post.objects.get(pk=p.pk).title == "saved"
    assert reads.take() == ["hit"]  # stored by the save


def _closing(fn):
    def run():
        from django.db import connection

        try:
            fn()
        finally:
            connection.close()  # a thread's own connection (PostgreSQL: drop it)

    return run


def test_lock_makes_one_caller_compute(blog, reads):
    calls = []
    gate = threading.Event()

    @cached_as(Post, lock=True)
    def slow():
        calls.append(1)
        gate.wait(5)
        return "done"

    results = []
    threads = [threading.Thread(target=_closing(lambda: results.append(slow())))
               for _ in range(4)]
    for th in threads:
        th.start()
    threading.Timer(0.3, gate.set).start()
    for th in threads:
        th.join(10)
    assert results == ["done"] * 4
    assert len(calls) == 1

    # A queryset with lock=True: one thread runs the query, the others wait for it.
    from django.db.models.query import ModelIterable

    runs = []
    real_iter = ModelIterable.__iter__

    def slow_iter(self):
        runs.append(1)
        time.sleep(0.3)
        return real_iter(self)

    out = []
    qs = Post.objects.filter(author=blog["a"]).cache(lock=True)
    ModelIterable.__iter__ = slow_iter
    try:
        ths = [threading.Thread(target=_closing(lambda: out.append(titles(qs))))
               for _ in range(3)]
        for th in ths:
            th.start()
        for th in ths:
            th.join(10)
    finally:
        ModelIterable.__iter__ = real_iter
    assert out == [["a1", "a2"]] * 3
    assert len(runs) == 1


def test_disabled(blog, reads, settings):
    settings.CACHEOPS_ENABLED = False
    titles(Post.objects.filter(author=blog["a"]))
    Post.objects.filter(author=blog["a"]).count()
    assert reads.take() == []


# ---------------------------------------------------------------------- keys and stored form

def _querysets(a, b):
    P = Post.objects
    return [
        P.filter(author=a), P.filter(author=b), P.filter(author_id=a.pk), P.filter(author=a)[:20],
        P.filter(author=a)[:21], P.filter(author=a)[5:20], P.filter(author=a).order_by("-id"),
        P.filter(author=a).reverse(), P.filter(pk__in=[1, 2]), P.filter(pk__in=[2, 1]),
        P.filter(title="1"), P.filter(title=1), P.filter(views=1), P.filter(views=1.0),
        P.filter(author__name="ann"), P.filter(author__name="bob"),
        P.select_related("author").filter(author=a), P.only("title").filter(author=a),
        P.defer("title").filter(author=a), P.filter(author=a).values("title"),
        P.filter(author=a).values_list("title"), P.filter(author=a).values_list("title", flat=True),
        P.filter(Q(author=a) | Q(category="news")), P.filter(Q(author=a) & Q(category="news")),
        P.exclude(author=a), P.filter(author=a).distinct(), P.filter(title__startswith="a"),
        P.filter(title__istartswith="a"), P.filter(tags__name="x"), P.filter(tags=None),
        P.filter(author=a).order_by("title", "id"), P.filter(author=a).order_by("id", "title"),
        P.filter(published=True), P.filter(published=False), P.all(), P.none(),
        Author.objects.filter(posts__title="a1"), Author.objects.filter(name="a1"),
    ]


def test_structural_keys_match_the_sql(blog):
    """Two querysets get the same structure key exactly when they compile to the same
    SQL and parameters (the key stands in for compiling on every hit)."""
    from django.core.exceptions import EmptyResultSet
    from django_fastcache.orm.fingerprint import fingerprint

    seen: dict = {}
    covered = 0
    for qs in _querysets(blog["a"], blog["b"]):
        fp = fingerprint(qs)
        try:
            sql = qs.query.get_compiler(qs.db).as_sql()
            sql = (sql[0], tuple(map(repr, sql[1])), qs._iterable_class, qs._fields)
        except EmptyResultSet:
            sql = None
        if fp is None:
            continue
        covered += 1
        if fp in seen:
            assert seen[fp] == sql, qs.query
        seen[fp] = sql
    # (The converse need not hold: order_by("-id") and reverse() share SQL, not a key.)
    assert covered >= 30 and len(seen) >= 28


def test_hits_rebuild_working_instances(blog, reads):
    a = blog["a"]
    list(Post.objects.filter(author=a))
    got = list(Post.objects.filter(author=a))
    assert reads.take() == ["miss", "hit"]
    p = got[0]
    assert p == blog["p1"] and p._state.adding is False and p._state.db == "default"
    assert p.author == a  # a related object loads
    p.title = "edited"
    p.save()  # an UPDATE, not an INSERT
    assert Post.objects.nocache().count() == 3
    assert Post.objects.get(pk=p.pk).title == "edited"
    got[1].title = "mutated"  # a caller's change never reaches the cache
    assert titles(Post.objects.filter(author=a)) == ["edited", "a2"]


def test_decorators_cached_view_in_a_rolled_back_transaction(blog):
    from django.http import HttpResponse

    rf = RequestFactory()
    calls = []

    @decorators.cached_view(60, tags=["news"])
    def news(request):
        calls.append(1)
        return HttpResponse(",".join(sorted(Post.objects.nocache().filter(category="news")
                                            .values_list("title", flat=True))))

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Post.objects.nocache().filter(pk=blog["p1"].pk).update(title="rolled back")
            assert news(rf.get("/news")).content == b"b1,rolled back"
            raise RuntimeError
    assert news(rf.get("/news")).content == b"a1,b1"
    assert news(rf.get("/news")).content == b"a1,b1"
    assert len(calls) == 2
    with transaction.atomic():
        assert news(rf.get("/n2")).content == b"a1,b1"
    assert news(rf.get("/n2")).content == b"a1,b1" and len(calls) == 3  # stored at commit


def test_get_hits_without_building_the_query(blog, reads, monkeypatch):
    """A get() with plain keyword arguments is keyed on the queryset and the arguments:
    a hit never reaches Django's filter(); misses, DoesNotExist and
    MultipleObjectsReturned behave as in Django."""
    from django.db.models import QuerySet

    a, p1 = blog["a"], blog["p1"]
    assert Post.objects.get(pk=p1.pk) == p1
    assert Post.objects.get(author=blog["b"]).title == "b1"  # a model instance argument
    assert Post.objects.values("title").get(pk=p1.pk) == {"title": "a1"}
    assert reads.take() == ["miss"] * 3

    def no_filter(*args, **kwargs):
        raise AssertionError("a hit built the query")

    monkeypatch.setattr(QuerySet, "_filter_or_exclude", no_filter)
    got = Post.objects.get(pk=p1.pk)
    assert got == p1 and got.title == "a1" and got._state.db == "default"
    assert got._state.adding is False
    assert Post.objects.get(author=blog["b"]).title == "b1"
    assert Post.objects.values("title").get(pk=p1.pk) == {"title": "a1"}
    assert reads.take() == ["hit"] * 3
    monkeypatch.undo()
    assert got.author == a
    reads.take()

    with pytest.raises(Post.DoesNotExist):
        Post.objects.get(pk=10**6)
    with pytest.raises(Post.DoesNotExist):
        Post.objects.get(pk=10**6)
    with pytest.raises(Post.MultipleObjectsReturned):
        Post.objects.get(author=a)
    with pytest.raises(Post.MultipleObjectsReturned):
        Post.objects.get(author=a)
    assert reads.take() == ["miss", "hit", "miss", "hit"]
    p1.title = "edited"
    p1.save()
    assert Post.objects.get(pk=p1.pk).title == "edited"
    assert Post.objects.get(pk=p1.pk).title == "edited"
    assert reads.take() == ["miss", "hit"]
    with transaction.atomic():  # a transaction that wrote reads its own writes
        p1.title = "in txn"
        p1.save()
        assert Post.objects.get(pk=p1.pk).title == "in txn"
        assert reads.take() == []


def test_hits_keep_deferred_fields_and_annotations(blog, reads):
    from django.db.models import F

    a = blog["a"]
    for _ in range(2):
        only = list(Post.objects.filter(author=a).only("title"))
        annotated = list(Post.objects.filter(author=a).annotate(double=F("views") * 2 + 1))
    assert reads.take() == ["miss", "miss", "hit", "hit"]
    assert [p.get_deferred_fields() for p in only] == [{"author_id", "category", "published",
                                                        "views"}] * 2
    assert [p.title for p in only] == ["a1", "a2"] and only[0].category == "news"
    assert [p.double for p in annotated] == [1, 1]


def test_models_with_init_receivers_are_built_by_from_db(blog, reads):
    from django.db.models.signals import post_init

    seen = []

    def receiver(sender, instance, **kwargs):
        seen.append(instance.title)

    post_init.connect(receiver, sender=Post, weak=False, dispatch_uid="test_orm.init")
    try:
        list(Post.objects.filter(author=blog["a"]))
        got = list(Post.objects.filter(author=blog["a"]))
    finally:
        post_init.disconnect(dispatch_uid="test_orm.init", sender=Post)
    assert reads.take() == ["miss", "hit"]
    assert seen == ["a1", "a2", "a1", "a2"] and got[0]._state.adding is False


def test_rolled_back_writes_stop_costing_the_transaction_check(blog, reads):
    from django_fastcache.orm import transaction as txn

    with pytest.raises(RuntimeError):
        with transaction.atomic():
            Post.objects.create(author=blog["a"], title="gone")
            assert txn.maybe_dirty()
            raise RuntimeError
    assert not txn.maybe_dirty()
    with transaction.atomic():
        Post.objects.create(author=blog["a"], title="kept")
        assert txn.maybe_dirty()
    assert not txn.maybe_dirty()


def test_get_variants_through_the_argument_key(blog, reads, django_assert_num_queries):
    a, p1 = blog["a"], blog["p1"]
    for _ in range(2):
        assert a.posts.get(title="a1") == p1  # a related manager's pending filter
        assert Post.objects.using("default").get(pk=p1.pk) == p1
        assert Post.objects.values_list("title", flat=True).get(pk=p1.pk) == "a1"
        assert Post.objects.get(pk__in=Post.objects.filter(title="a1").values("pk")) == p1
        assert Post.objects.filter(category="news").get(author=a) == p1
    assert reads.take() == ["miss"] * 5 + ["hit"] * 5
    Post.objects.select_related("author").get(pk=p1.pk)
    with django_assert_num_queries(0):
        got = Post.objects.select_related("author").get(pk=p1.pk)
        assert got.author.name == "ann"  # the related object came with the hit
    obj, created = Post.objects.get_or_create(title="a1", defaults={"author": a})
    assert obj == p1 and not created
    invalidate_model(Post)
    assert reads.take() == ["miss", "hit"]
    assert Post.objects.filter(category="news").get(author=a) == p1
    assert reads.take() == ["miss"]


@pytest.fixture
def lazy(settings):
    settings.FASTCACHE_ORM_LAZY_FILTER = True


def test_the_lazy_filter_is_on_unless_a_site_turns_it_off(settings):
    from django_fastcache.orm import conf

    del settings.FASTCACHE_ORM_LAZY_FILTER  # this suite sets it; a site usually does not
    conf._state.clear()  # (a deletion sends no setting_changed)
    assert conf.lazy_filter() is True
    settings.FASTCACHE_ORM_LAZY_FILTER = False
    assert conf.lazy_filter() is False


def test_lazy_filter_hit_builds_no_filter(blog, reads, lazy, monkeypatch):
    """FASTCACHE_ORM_LAZY_FILTER: a hit on filter(**plain)[a:b] never builds the
    filtered Query; a miss builds it exactly as Django would."""
    from django.db.models.sql.query import Query

    a = blog["a"]
    assert titles(Post.objects.filter(author=a)[:1]) == ["a1"]
    assert Post.objects.filter(author=a).count() == 2
    assert reads.take() == ["miss", "miss"]
    built = []
    real = Query.add_q
    monkeypatch.setattr(Query, "add_q", lambda self, q: built.append(q) or real(self, q))
    assert titles(Post.objects.filter(author=a)[:1]) == ["a1"]
    assert Post.objects.filter(author=a).count() == 2
    assert reads.take() == ["hit", "hit"] and built == []
    assert Post.objects.filter(author=a).cache(ops=["fetch"])[0:5].exists()  # not cached
    assert reads.take() == [] and len(built) == 1  # so the filter was applied
    qs = Post.objects.filter(author=a)[:5]
    assert len(qs.query.where.children) == 1 and len(built) == 2  # .query applies it
    assert [p.title for p in Post.objects.filter(author=a).order_by("-id")] == ["a2", "a1"]
    assert [p.title for p in Post.objects.filter(author=a)[1:]] == ["a2"]
    assert list(Post.objects.filter(author=a).values_list("title", flat=True)) == ["a1", "a2"]
    with pytest.raises(TypeError):
        Post.objects.filter(author=a)[:1].filter(title="a1")
    import pickle

    again = pickle.loads(pickle.dumps(Post.objects.filter(author=a)))
    assert titles(again) == ["a1", "a2"] and titles(again.filter(title="a2")) == ["a2"]


def test_lazy_filter_raises_where_django_does(blog, reads, lazy):
    from django.core.exceptions import FieldError

    for _ in range(2):
        with pytest.raises(FieldError):
            Post.objects.filter(nope=1)
        with pytest.raises(ValueError):
            Post.objects.filter(pk="not a number")
    Post.objects.filter(pk=blog["p1"].pk)  # built once: known to build
    assert titles(Post.objects.filter(pk=blog["p1"].pk)) == ["a1"]


def test_lazy_filter_shared_queryset_across_threads(blog, reads, lazy):
    qs = Post.objects.filter(category="news")
    qs = Post.objects.filter(category="news")  # deferred: the first one built it
    assert "_fc_lazy" in qs.__dict__
    out, errors = [], []

    def work():
        try:
            out.append((sorted(titles(qs.filter(author=blog["a"]))), qs.count(),
                        sorted(titles(qs.exclude(author=blog["a"])))))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=_closing(work)) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert not errors and out == [(["a1"], 2, ["b1"])] * 8


def test_lazy_filter_reads_its_arguments_when_filter_is_called(blog, reads, lazy):
    a, b = blog["a"], blog["b"]
    ids = [blog["p1"].pk]
    Post.objects.filter(author=a), Post.objects.filter(pk__in=ids)  # built once each
    by_author = Post.objects.filter(author=a)
    by_ids = Post.objects.filter(pk__in=ids)
    a_pk = a.pk
    a.pk = b.pk  # Django read a.pk when filter() was called
    ids.append(blog["p3"].pk)  # and the list
    try:
        assert titles(by_author) == ["a1", "a2"]
        assert titles(by_ids) == ["a1"]
    finally:
        a.pk = a_pk


def test_lazy_filter_forgets_what_it_knew_when_lookups_change(blog, reads, lazy):
    """A filter built once is deferred when seen again, unless a lookup was registered or
    unregistered meanwhile: it may not build any more, and Django raises in filter()."""
    from django.core.exceptions import FieldError
    from django.db.models import CharField
    from django.db.models.functions import Upper
    from django.test.utils import register_lookup

    with register_lookup(CharField, Upper):
        Post.objects.filter(title__upper="A1")  # built: known from now on
        assert "_fc_lazy" in Post.objects.filter(title__upper="A1").__dict__
        assert titles(Post.objects.filter(title__upper="A1")) == ["a1"]
    with pytest.raises(FieldError):
        Post.objects.filter(title__upper="A1")


def test_lazy_filter_keeps_an_instance_of_another_model_eager(blog, reads, lazy):
    # Django rejects it in filter(); it is never replayed as its primary key.
    tag = Tag.objects.create(name="t")
    for _ in range(2):
        with pytest.raises(ValueError):
            Post.objects.filter(author=tag)
