"""Pages of the example blog: a cached post list invalidated on change, a cached
function, an edit, a session counter and the cache's figures."""

import json
import time

from django.db import transaction
from django.http import JsonResponse
from django.shortcuts import get_object_or_404
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST
from django_fastcache.decorators import cached, cached_view
from django_fastcache.management.commands.fastcache_stats import collect
from django_fastcache.orm import cache_read, cached_as

from .apps import post_tags
from .models import Author, Post

# Stands in for template rendering and slower queries, so hits and misses differ visibly.
RENDER_SECONDS = 0.03


def _list_tags(request):
    return ["posts", f"author:{request.GET.get('author_id', 'all')}"]


@cached_view(60, tags=_list_tags)
def post_list(request):
    """``/blog/posts/?author_id=1``: cache_page semantics; refreshed when a post changes."""
    posts = Post.objects.select_related("author").cache()  # the query too (django_fastcache.orm)
    if "author_id" in request.GET:
        posts = posts.filter(author_id=int(request.GET["author_id"]))
    time.sleep(RENDER_SECONDS)
    return JsonResponse({
        "posts": [{"id": p.id, "title": p.title, "author": p.author.name, "likes": p.likes}
                  for p in posts],
        "rendered_at": time.time(),
    })


@cached(timeout=300, tags=["author:{author_id}"])
def author_summary(author_id: int) -> dict:
    """A cached function: one get on a hit; refreshed when the author's posts change."""
    author = Author.objects.get(pk=author_id)
    posts = list(author.posts.all())
    time.sleep(RENDER_SECONDS)
    return {"author": author.name, "posts": len(posts),
            "likes": sum(p.likes for p in posts), "computed_at": time.time()}


def author_page(request, author_id: int):
    get_object_or_404(Author, pk=author_id)
    return JsonResponse(author_summary(author_id))


@csrf_exempt
@require_POST
def edit_post(request, post_id: int):
    """Edits a post; the cached pages showing it are invalidated after the commit."""
    changes = json.loads(request.body or b"{}")
    with transaction.atomic():
        post = get_object_or_404(Post.objects.select_for_update(), pk=post_id)
        post.title = changes.get("title", post.title)
        post.body = changes.get("body", post.body)
        post.save()
    return JsonResponse({"edited": post.id, "tags": post_tags(post)})


def post_detail(request, post_id: int):
    """``/blog/posts/<id>/``: the post from the query cache (``.cache().get()``) and the
    author's other titles from a ``cached_as`` function; both are invalidated by an
    edit of that post (or of another post by the same author, for the titles), and by
    nothing else. The response says whether each read was a query-cache hit."""
    reads: list[str] = []

    def on_read(sender, func, hit, **kwargs):
        reads.append("hit" if hit else "miss")

    cache_read.connect(on_read, weak=False, dispatch_uid=f"blog.detail.{id(reads)}")
    try:
        post = get_object_or_404(Post.objects.cache(), pk=post_id)
        by_author = Post.objects.filter(author_id=post.author_id)

        @cached_as(by_author, extra="titles")
        def titles():
            return list(by_author.nocache().order_by("id").values_list("title", flat=True))

        others = titles()
    finally:
        cache_read.disconnect(dispatch_uid=f"blog.detail.{id(reads)}")
    return JsonResponse({"id": post.id, "title": post.title, "author_titles": others,
                         "query_cache": reads})


def visits(request):
    """A counter in the session (SESSION_ENGINE cached_db on FastCache)."""
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})


def stats(request):
    """The figures ``manage.py fastcache_stats`` prints, as seen by this worker."""
    return JsonResponse({"caches": collect()}, json_dumps_params={"default": str})
