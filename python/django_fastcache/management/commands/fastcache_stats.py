"""``manage.py fastcache_stats``: per FastCache alias, hit ratios by tier, entries, bytes,
evictions, Redis errors and the circuit breaker's state (``--json`` for machines).

Counters of the in-process tier (the embedded default, or the L1 in front of Redis) are
those of the process that reads them: run from ``manage.py`` they describe that process,
not the web workers. For Redis-backed aliases the command also reads the server's own
figures (``DBSIZE``, ``INFO``), which every process shares. :func:`collect` and
:func:`render` are public so a site can serve the same table from a worker.
"""

from __future__ import annotations

import json
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandError

__all__ = ["Command", "collect", "render"]

# (label, stats key, format) in the order the table shows them.
_ROWS = [
    ("tier", "tier", "s"),
    ("L1 hits", "l1_hits", "d"),
    ("L1 misses", "l1_misses", "d"),
    ("L1 hit ratio", "l1_hit_ratio", "%"),
    ("Redis hits", "redis_hits", "d"),
    ("Redis misses", "redis_misses", "d"),
    ("Redis hit ratio", "redis_hit_ratio", "%"),
    ("L1 entries", "entries", "d"),
    ("L1 bytes", "bytes", "d"),
    ("L1 evictions", "evictions", "d"),
    ("L1 listener", "l1_listener", "s"),
    ("L1 invalidated keys", "l1_invalidated_keys", "d"),
    ("L1 resets", "l1_resets", "d"),
    ("Redis keys (DBSIZE)", "redis_keys", "d"),
    ("Redis used memory", "redis_used_memory", "d"),
    ("Redis evicted keys", "redis_evicted_keys", "d"),
    ("Redis errors", "errors", "d"),
    ("dropped writes", "dropped_writes", "d"),
    ("breaker state", "breaker_state", "s"),
]


def _server_figures(cache) -> dict[str, Any]:
    try:
        client = cache.get_client(write=False)
        info = client.info()
        return {"redis_keys": client.dbsize(), "redis_used_memory": info.get("used_memory"),
                "redis_evicted_keys": info.get("evicted_keys")}
    except Exception as exc:  # noqa: BLE001 - an operations command reports, never crashes
        return {"redis_server_error": f"{type(exc).__name__}: {exc}"}


def collect(aliases: list[str] | None = None, server: bool = True) -> list[dict[str, Any]]:
    """One dict per FastCache alias (every one in CACHES by default): ``alias``, the
    counters of ``cache.stats()`` under uniform names and, for Redis, the server's figures."""
    from ...cache import FastCache

    names = list(settings.CACHES) if aliases is None else aliases
    rows = []
    for alias in names:
        if alias not in settings.CACHES:
            raise CommandError(f"no cache alias {alias!r} in CACHES (aliases: "
                               f"{', '.join(settings.CACHES)})")
        cache = caches[alias]
        if not isinstance(cache, FastCache):
            if aliases is not None:
                raise CommandError(f"cache {alias!r} is not a FastCache")
            continue
        s = cache.stats()
        row: dict[str, Any] = {"alias": alias, **s}
        if s["tier"] == "l1":  # the embedded default: its store is the L1
            for name in ("hits", "misses", "hit_ratio"):
                row[f"l1_{name}"] = s[name]
        elif s["tier"] == "l1+redis":
            for name in ("entries", "bytes", "evictions"):
                row[name] = s.get(f"l1_{name}")
        if s["tier"] != "l1" and server:
            row.update(_server_figures(cache))
        rows.append(row)
    return rows


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    if fmt == "%":
        return f"{value * 100:.1f}%"
    if fmt == "d" and isinstance(value, int):
        return f"{value:,}"
    return str(value)


def render(rows: list[dict[str, Any]]) -> str:
    """The table: one column per alias, one line per figure."""
    if not rows:
        return "no FastCache aliases in CACHES"
    header = ["", *(r["alias"] for r in rows)]
    lines = [[label, *(_cell(r.get(key), fmt) for r in rows)] for label, key, fmt in _ROWS]
    lines = [line for line in lines if any(c != "-" for c in line[1:])]  # figures no tier has
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    out = ["  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i])
                     for i, c in enumerate(line)) for line in [header, *lines]]
    for r in rows:
        if "redis_server_error" in r:
            out.append(f"{r['alias']}: Redis figures unavailable ({r['redis_server_error']})")
    return "\n".join(out)


class Command(BaseCommand):
    help = ("Hit ratios by tier, entries, bytes, evictions, Redis errors and breaker state "
            "of each FastCache alias (in-process counters are this process's).")

    def add_arguments(self, parser) -> None:
        parser.add_argument("aliases", nargs="*", help="cache aliases (default: every FastCache)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args, aliases: list[str], json: bool = False, **options) -> None:
        rows = collect(aliases or None)
        if json:
            self.stdout.write(_json_dumps(rows))
            return
        self.stdout.write(render(rows))
        if any(r["tier"] != "redis" for r in rows):
            self.stdout.write("(L1 counters are those of this process, not of the web workers)")


def _json_dumps(rows) -> str:
    return json.dumps(rows, indent=2, sort_keys=True, default=str)
