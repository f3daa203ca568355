"""What the caching patterns cost on a hit, on the embedded default, in one run: a plain
``get`` (and the same call without the tag check, as before tags existed), ``get`` of a
tagged key, ``@cached`` against hand-written cache-aside with ``get`` and against
``get_or_set``, and ``cached_view`` against Django's ``cache_page``. Prints ns per call
and ratios to the plain ``get``."""

from __future__ import annotations

import sys
import timeit

import django
from django.conf import settings

settings.configure(SECRET_KEY="bench", ALLOWED_HOSTS=["*"],
                   CACHES={"default": {"BACKEND": "django_fastcache.cache.FastCache"}})
django.setup()

from django.core.cache import caches  # noqa: E402
from django.http import HttpResponse  # noqa: E402
from django.test import RequestFactory  # noqa: E402
from django.views.decorators.cache import cache_page  # noqa: E402
from django_fastcache.cache import FastCache  # noqa: E402
from django_fastcache.decorators import cached, cached_view  # noqa: E402

VALUE = {"id": 7, "title": "x" * 60, "tags": ["a", "b", "c"]}


class Untagged(FastCache):
    """``get`` as it was before the tag check."""

    def get(self, key, default=None, version=None):
        return self._get(key, default, version)


def main() -> int:
    cache = caches["default"]
    before = Untagged("", {})
    cache.set("plain", VALUE)
    cache.set("tagged", VALUE, tags=["posts", "author:1"])

    @cached(tags=["author:{author_id}"])
    def summary(author_id):
        return VALUE

    def aside(author_id):
        value = cache.get(f"summary:{author_id}")
        if value is None:
            value = VALUE
            cache.set(f"summary:{author_id}", value)
        return value

    summary(1), aside(1)
    rf = RequestFactory()
    request = rf.get("/posts/?author_id=1")
    ours = cached_view(60, tags=["posts"])(lambda r: HttpResponse("x" * 500))
    theirs = cache_page(60, key_prefix="dj")(lambda r: HttpResponse("x" * 500))
    ours(request), theirs(request)

    cases = [
        ("get, untagged key (no tag check)", lambda: before.get("plain")),
        ("get, untagged key", lambda: cache.get("plain")),
        ("get, tagged key (2 tags)", lambda: cache.get("tagged")),
        ("cache-aside by hand (get + f-string)", lambda: aside(1)),
        ("get_or_set", lambda: cache.get_or_set("gos", VALUE)),
        ("@cached hit (1 tag + the function's)", lambda: summary(1)),
        ("cache_page hit", lambda: theirs(request)),
        ("cached_view hit (1 tag)", lambda: ours(request)),
    ]
    n = 20000
    best = {}
    for _ in range(3):
        for label, fn in cases:
            t = min(timeit.repeat(fn, number=n, repeat=3)) / n * 1e9
            best[label] = min(best.get(label, float("inf")), t)
    base = best["get, untagged key"]
    print(f"Python {sys.version.split()[0]}, Django {django.get_version()}; ns per call, "
          "best of 9 runs; ratio to a plain get")
    for label, _ in cases:
        print(f"{label:40} {best[label]:9.0f} {best[label] / base:7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
