"""Views of the example site: a cache-aside view, a cache_page view, an edit that
invalidates, and the cache's counters."""

import json
import time

from django.core.cache import caches
from django.http import HttpResponse, JsonResponse
from django.views.decorators.cache import cache_page
from django.views.decorators.csrf import csrf_exempt

POSTS = {1: {"title": "Hello", "body": "First post."}, 2: {"title": "Again", "body": "More."}}


def slow_render(author_id: int) -> list[dict]:
    """Stands in for database queries and template work: 50 ms."""
    time.sleep(0.05)
    return [{"id": pid, **post, "author_id": author_id} for pid, post in sorted(POSTS.items())]


def posts(request):
    """Cache-aside: the list is computed on a miss and served from the L1 on hits."""
    cache = caches["default"]  # the backend instance: hot paths skip the proxy
    author_id = int(request.GET.get("author_id", 1))
    key = f"posts:author:{author_id}"
    data = cache.get(key)
    state = "HIT"
    if data is None:
        state = "MISS"
        data = slow_render(author_id)
        cache.set(key, data, timeout=60)
    response = JsonResponse({"posts": data})
    response["X-Cache"] = state
    return response


@cache_page(60)
def about(request):
    time.sleep(0.05)
    return HttpResponse("About this blog, rendered at %f" % time.time())


@csrf_exempt
def edit(request, post_id: int):
    """Edits a post and drops the cached lists that show it."""
    POSTS[post_id] = {**POSTS[post_id], **json.loads(request.body or b"{}")}
    deleted = caches["default"].delete_pattern("posts:author:*")
    return JsonResponse({"edited": post_id, "invalidated_keys": deleted})


def stats(request):
    return JsonResponse(caches["default"].stats())
