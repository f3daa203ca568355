"""``manage.py fastcache_keys [pattern]``: the keys of a FastCache matching a Redis-style
glob, with their TTLs. On Redis it walks the keyspace with ``SCAN`` (never ``KEYS``); on
the embedded default it lists this process's store."""

from __future__ import annotations

import json

from django.core.cache import caches
from django.core.management.base import BaseCommand, CommandError

__all__ = ["Command"]


class Command(BaseCommand):
    help = "Lists a FastCache's keys matching a glob (*, ?, [a-z]) with their TTLs."

    def add_arguments(self, parser) -> None:
        parser.add_argument("pattern", nargs="?", default="*",
                            help="Redis-style glob over cache keys (as passed to set); default *")
        parser.add_argument("--alias", default="default", help="cache alias (default: default)")
        parser.add_argument("--limit", type=int, default=1000,
                            help="print at most this many keys (default 1000; 0: all)")
        parser.add_argument("--json", action="store_true", help="print JSON")

    def handle(self, *args, pattern: str, alias: str, limit: int, **options) -> None:
        from ...cache import FastCache

        try:
            cache = caches[alias]
        except Exception as exc:
            raise CommandError(f"no cache alias {alias!r}: {exc}") from None
        if not isinstance(cache, FastCache):
            raise CommandError(f"cache {alias!r} is not a FastCache")
        if limit < 0:
            raise CommandError("--limit must be >= 0")
        keys = sorted(cache.iter_keys(pattern))
        total = len(keys)
        if limit:
            keys = keys[:limit]
        rows = [{"key": k, "ttl": cache.ttl(k)} for k in keys]
        if options["json"]:
            self.stdout.write(json.dumps({"alias": alias, "pattern": pattern, "total": total,
                                          "keys": rows}, indent=2))
            return
        for row in rows:
            ttl = "never" if row["ttl"] is None else f"{row['ttl']}s"
            self.stdout.write(f"{row['key']}\t{ttl}")
        where = "Redis (SCAN)" if cache.redis_client() is not None else "this process's L1 store"
        shown = f", {len(rows)} shown" if len(rows) < total else ""
        self.stdout.write(f"{total} key(s) matching {pattern!r} in {alias!r}, {where}{shown}")
