"""Instructions per in-process throttle check, under valgrind's callgrind: a count that the
load of other processes on the machine does not change, for before/after comparisons.

Run ``python benchmarks/callgrind_throttle.py [case ...]``: it runs itself under callgrind
twice per case, with a short and a long loop after the same warm-up, and prints the
difference divided by the extra checks, so start-up and warm-up cancel out.
Cases (default all): ours in-process and DRF's AnonRateThrottle on LocMemCache, history of
100 entries; "ours"/"drf" allowed (each check adds one entry to a 100-entry window),
"ours-denied"/"drf-denied" with the history full at the limit (every check denied).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

WARMUP = 300
SHORT, LONG = 200, 2200


def run_checks(case: str, n: int) -> None:
    import django
    from django.conf import settings

    settings.configure(
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        REST_FRAMEWORK={"NUM_PROXIES": None},
    )
    django.setup()
    from django.contrib.auth.models import AnonymousUser
    from django.core.cache.backends.locmem import LocMemCache
    from django.test import RequestFactory
    from django_fastcache import throttling
    from rest_framework import throttling as drf
    from rest_framework.request import Request

    base = throttling.AnonRateThrottle if case.startswith("ours") else drf.AnonRateThrottle
    clock = [1_699_920_000.0]

    def timer(self):
        clock[0] += 36.0  # 100 entries in the 1-hour window, every check allowed
        return clock[0]

    if case.endswith("-denied"):  # as the benchmark: the default timer, 100/hour, full
        attrs = {"rate": "100/hour"}
    else:
        attrs = {"rate": "200/hour", "timer": timer}
    cls = type("B", (base,), {"cache": LocMemCache("cg", {}), **attrs})
    request = Request(RequestFactory().get("/", REMOTE_ADDR="10.1.2.3"))
    request.user = AnonymousUser()
    for _ in range(WARMUP + n):
        cls().allow_request(request, None)


def instructions(case: str, n: int) -> int:
    env = dict(os.environ, PYTHONHASHSEED="0")
    out = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
         sys.executable, __file__, case, str(n)],
        capture_output=True, text=True, env=env, check=True).stderr
    return int(re.search(r"Collected : (\d+)", out).group(1))


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[2].isdigit():
        run_checks(sys.argv[1], int(sys.argv[2]))
        return
    for case in sys.argv[1:] or ("ours", "drf", "ours-denied", "drf-denied"):
        per_check = (instructions(case, LONG) - instructions(case, SHORT)) / (LONG - SHORT)
        print(f"{case:11} instructions per check: {per_check:,.0f}")


if __name__ == "__main__":
    main()
