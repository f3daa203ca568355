"""Cache backend benchmark: FastCache against the alternatives, in one run, same values.

    python benchmarks/bench_cache.py [--quick]

Prints ns/op (best of several repeats) per operation and value, and each alternative's
time as a multiple of FastCache's (">1x" means FastCache is faster). Methods are called on
the backend instance, not through ``django.core.cache.cache`` (a proxy whose per-call
lookup costs microseconds), as a hot loop in an application should.
"""

from __future__ import annotations

import argparse
import platform
import sys
import timeit
from collections.abc import Callable
from importlib.metadata import version

import django
from django.conf import settings

VALUES: dict[str, object] = {
    "dict": {"id": 1, "name": "x" * 200, "tags": ["a", "b", "c"], "score": 1.5, "ok": True},
    "list": list(range(20)),
    "str1k": "s" * 1024,
}


def setup_django() -> None:
    settings.configure(
        SECRET_KEY="benchmark",
        CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
    )
    django.setup()


def backends() -> dict[str, Callable[[], object]]:
    from django.core.cache.backends.locmem import LocMemCache

    from django_fastcache.cache import FastCache

    return {
        "FastCache (L1)": lambda: FastCache("bench-fast", {"TIMEOUT": 3600}),
        "LocMemCache": lambda: LocMemCache("bench-locmem", {"TIMEOUT": 3600}),
    }


def operations(cache, value) -> dict[str, Callable[[], object]]:
    keys = [f"many:{i}" for i in range(100)]
    cache.set("hit", value)
    cache.set_many({k: value for k in keys})
    cache.set("counter", 0)
    return {
        "get (hit)": lambda: cache.get("hit"),
        "get (miss)": lambda: cache.get("absent"),
        "set": lambda: cache.set("hit", value),
        "get_many (100)": lambda: cache.get_many(keys),
        "incr": lambda: cache.incr("counter"),
    }


def measure(fn: Callable[[], object], budget: float) -> float:
    """Best-of-5 ns per call, with a loop count sized to `budget` seconds per repeat."""
    timer = timeit.Timer(fn)
    number, elapsed = timer.autorange()
    number = max(1, int(number * budget / max(elapsed, 1e-9)))
    return min(timer.repeat(repeat=5, number=number)) / number * 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    args = parser.parse_args()
    budget = 0.02 if args.quick else 0.2
    setup_django()

    print(f"Python {platform.python_version()}, Django {django.get_version()}, "
          f"django-fastcache {version('django-fastcache')}, {platform.machine()}")
    made = {name: factory() for name, factory in backends().items()}
    baseline = next(iter(made))
    results: dict[tuple[str, str, str], float] = {}
    for value_name, value in VALUES.items():
        for name, cache in made.items():
            for op, fn in operations(cache, value).items():
                if op == "incr" and value_name != "dict":
                    continue  # the counter does not depend on the value
                results[(value_name, op, name)] = measure(fn, budget)

    names = list(made)
    header = f"{'value':6} {'operation':15}" + "".join(f" {n:>15}" for n in names)
    header += "".join(f" {n.split(' ')[0] + ' ratio':>17}" for n in names[1:])
    print(header)
    print("-" * len(header))
    for (value_name, op, name), _ in results.items():
        if name != baseline:
            continue
        row = f"{value_name:6} {op:15}"
        base = results[(value_name, op, baseline)]
        row += "".join(f" {results[(value_name, op, n)]:12.0f} ns" for n in names)
        row += "".join(f" {results[(value_name, op, n)] / base:16.1f}x" for n in names[1:])
        print(row)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
