"""django-redis's hash, set and sorted-set commands on ``FastCache`` (a mixin of the backend).

Keys are made by the engine (``KEY_PREFIX``, ``VERSION``, ``KEY_FUNCTION``, as for
``get``), members and hash values are encoded with the cache's codec (``engine.dumps``;
plain ints are stored as their decimal text, as django-redis stores them), and each
command is one call of the redis-py client through the tier's failure policy, so Redis
being down is handled as for ``get``/``set``: with ``IGNORE_EXCEPTIONS`` (the default) a
read answers "empty" (0, False, None, an empty set or list) and a write is dropped, else
:class:`~django_fastcache.errors.ConnectionInterrupted` is raised. Return values and types
are django-redis's (its ``DefaultClient`` and ``SortedSetMixin``).

The coherent L1 never holds a copy of a key used as a hash, set or sorted set: every write
(including the destination of ``*store`` and ``smove``) drops the key's L1 entry once
Redis has answered, and a read of such a key with ``get`` is a ``WRONGTYPE`` error in
Redis, so nothing is ever filled.

Multi-key commands (``sdiff``, ``sinter``, ``sunion``, the ``*store`` variants, ``smove``)
need every key in one hash slot on Redis Cluster: give the keys one hash tag
(``"{cart42}:a"``, ``"{cart42}:b"``), else :class:`~django_fastcache.errors.CrossSlotError`.
These commands need a Redis ``LOCATION``: on the embedded default they raise
``ImproperlyConfigured`` saying so.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from .errors import CrossSlotError, DecodeError

__all__ = ["StructureCommands"]

logger = logging.getLogger("django_fastcache.redis")
_UNREADABLE = object()


def _glob(pattern: str | bytes) -> re.Pattern:
    """A Redis glob (``*``, ``?``, ``[a-z]``, ``[^x]``, ``\\`` escapes) as a regex."""
    if isinstance(pattern, bytes):
        pattern = pattern.decode("utf-8", "surrogateescape")
    out, i, n = [], 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        if c == "*":
            out.append(".*")
        elif c == "?":
            out.append(".")
        elif c == "[":
            end = pattern.find("]", i + 1)
            if end == -1:
                out.append(re.escape(c))
            else:
                body = pattern[i + 1:end]
                negate = body.startswith("^")
                body = body[1:] if negate else body
                out.append("[" + ("^" if negate else "") + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


class StructureCommands:
    """Hash, set and sorted-set commands (django-redis 7 names and signatures), mixed
    into :class:`~django_fastcache.cache.FastCache`. Thread-safe as the backend is."""

    # ------------------------------------------------------------------ plumbing

    def _ds_tier(self, command: str):
        tier = self._tier
        if tier is None:
            raise ImproperlyConfigured(
                f"FastCache.{command}() is a Redis command: it needs a Redis LOCATION "
                "(redis://..., Sentinel or Cluster); the embedded default keeps plain "
                "values only")
        return tier

    def _ds_run(self, command: str, method: str, *args, write: bool, default: Any,
                changed: tuple[str, ...] = (), **kwargs):
        """``client.<method>(*args, **kwargs)`` through the failure policy; afterwards the
        L1 copies of the ``changed`` final keys are dropped (also when it failed)."""
        tier = self._ds_tier(command)
        client = tier.clients.client(write=write)
        try:
            return tier.policy.run(getattr(client, method), *args, default=default, write=write,
                                   **kwargs)
        finally:
            if changed and tier.l1:
                for k in changed:
                    tier.engine.l1_invalidate(k)

    def _ds_cmd(self, command: str, *args, write: bool, default: Any,
                changed: tuple[str, ...] = ()):
        """One raw command on the tier's own connection path (a held connection on a
        single node or Sentinel primary; redis-py's client otherwise), through the failure
        policy. Only for commands whose raw reply and redis-py's parsed one mean the same
        once passed through int(), bool(), float() or iterated (the callers do that)."""
        tier = self._ds_tier(command)
        try:
            return tier.run(*args, write=write, keys=changed, default=default)
        finally:
            if changed and tier.l1:
                for k in changed:
                    tier.engine.l1_invalidate(k)

    def _ds_key(self, key, version=None) -> str:
        return self._engine.key(key, version)

    def _ds_keys(self, keys, version=None) -> list[str]:
        return [self._engine.key(key, version) for key in keys]

    def _ds_one_slot(self, command: str, finals: list[str]) -> None:
        tier = self._ds_tier(command)
        if tier.clients.is_cluster and len(finals) > 1:
            from .redis_client import key_slot

            slots = {key_slot(k) for k in finals}
            if len(slots) > 1:
                raise CrossSlotError(
                    f"FastCache.{command}() on Redis Cluster needs all its keys in one hash "
                    f"slot; these are in {len(slots)}: {finals!r}. Give them one hash tag, "
                    "e.g. '{user42}:a' and '{user42}:b'")

    def _ds_dumps(self, value) -> bytes:
        return self._engine.dumps(value)

    def _ds_loads(self, raw, default: Any = None) -> Any:
        """A member or hash value; ``default`` (logged) for bytes this codec cannot read,
        written by some other program: served as missing, as ``get`` serves them."""
        try:
            return self._engine.loads(raw)
        except DecodeError as exc:
            logger.warning("cache %r: a data-structure member or value cannot be read "
                           "(%s): served as missing", self.key_prefix, exc)
            return default

    def _ds_set(self, raws) -> set:
        out = {self._ds_loads(raw, _UNREADABLE) for raw in raws}
        out.discard(_UNREADABLE)
        return out

    def _ds_list(self, raws) -> list:
        return [v for v in (self._ds_loads(raw, _UNREADABLE) for raw in raws)
                if v is not _UNREADABLE]

    def _ds_pairs(self, pairs) -> list[tuple[Any, Any]]:
        out = [(self._ds_loads(member, _UNREADABLE), score) for member, score in pairs]
        return [pair for pair in out if pair[0] is not _UNREADABLE]

    def _ds_set_xx(self, key, value, timeout, version) -> bool:
        """``set(..., xx=True)`` on Redis: SET XX; True if the key existed and was
        replaced. A timeout <= 0 deletes the key instead (django-redis does the same)."""
        tier = self._ds_tier("set")
        data = self._ds_dumps(value)
        k = self._ds_key(key, version)
        seconds = tier.engine.timeout_seconds(timeout)
        if seconds is not None and seconds <= 0:
            return bool(self._ds_run("set", "delete", k, write=True, default=0, changed=(k,)))
        px = None if seconds is None else max(1, int(seconds * 1000))
        return bool(self._ds_run("set", "set", k, data, px=px, xx=True, write=True,
                                 default=False, changed=(k,)))

    # ------------------------------------------------------------------ hashes

    def hset(self, key, field=None, value=None, mapping: Mapping | None = None,
             version=None) -> int:
        """Sets ``field`` (and/or every field of ``mapping``) of the hash; the number of
        fields added. Fields are stored as given (str, bytes, numbers), values encoded."""
        k = self._ds_key(key, version)
        pairs: list = [] if field is None else [field, self._ds_dumps(value)]
        for f, v in (mapping or {}).items():
            pairs += (f, self._ds_dumps(v))
        if not pairs:  # as redis-py refuses it
            from redis.exceptions import DataError

            raise DataError("'hset' with no key value pairs")
        return int(self._ds_cmd("hset", "HSET", k, *pairs, write=True, default=0, changed=(k,)))

    def hget(self, key, field, default=None, version=None):
        """The value of ``field`` (decoded), or ``default``. Not in django-redis."""
        raw = self._ds_cmd("hget", "HGET", self._ds_key(key, version), field, write=False,
                           default=None)
        return default if raw is None else self._ds_loads(raw, default)

    def hgetall(self, key, version=None) -> dict:
        """Every field (as str) and its value (decoded). Not in django-redis."""
        found = self._ds_run("hgetall", "hgetall", self._ds_key(key, version), write=False,
                             default={})
        out = {(f.decode() if isinstance(f, bytes) else f): self._ds_loads(v, _UNREADABLE)
               for f, v in found.items()}
        return {f: v for f, v in out.items() if v is not _UNREADABLE}

    def hdel(self, key, *fields, version=None) -> int:
        """Removes ``fields``; how many existed."""
        k = self._ds_key(key, version)
        return int(self._ds_cmd("hdel", "HDEL", k, *fields, write=True, default=0, changed=(k,)))

    def hlen(self, key, version=None) -> int:
        return int(self._ds_cmd("hlen", "HLEN", self._ds_key(key, version), write=False,
                                default=0))

    def hkeys(self, key, version=None) -> list[str]:
        found = self._ds_cmd("hkeys", "HKEYS", self._ds_key(key, version), write=False,
                             default=[])
        return [f.decode() if isinstance(f, bytes) else f for f in found]

    def hexists(self, key, field, version=None) -> bool:
        return bool(self._ds_cmd("hexists", "HEXISTS", self._ds_key(key, version), field,
                                 write=False, default=False))

    # ------------------------------------------------------------------ sets

    def sadd(self, key, *members, version=None) -> int:
        """Adds ``members``; how many were new."""
        k = self._ds_key(key, version)
        encoded = [self._ds_dumps(m) for m in members]
        return int(self._ds_cmd("sadd", "SADD", k, *encoded, write=True, default=0, changed=(k,)))

    def srem(self, key, *members, version=None) -> int:
        k = self._ds_key(key, version)
        encoded = [self._ds_dumps(m) for m in members]
        return int(self._ds_cmd("srem", "SREM", k, *encoded, write=True, default=0, changed=(k,)))

    def scard(self, key, version=None) -> int:
        return int(self._ds_cmd("scard", "SCARD", self._ds_key(key, version), write=False,
                                default=0))

    def sismember(self, key, member, version=None) -> bool:
        return bool(self._ds_cmd("sismember", "SISMEMBER", self._ds_key(key, version),
                                 self._ds_dumps(member), write=False, default=False))

    def smismember(self, key, *members, version=None) -> list[bool]:
        encoded = [self._ds_dumps(m) for m in members]
        found = self._ds_run("smismember", "smismember", self._ds_key(key, version), *encoded,
                             write=False, default=None)
        return [False] * len(members) if found is None else [bool(v) for v in found]

    def smembers(self, key, version=None) -> set:
        found = self._ds_cmd("smembers", "SMEMBERS", self._ds_key(key, version), write=False,
                             default=())
        return self._ds_set(found)

    def _ds_combine(self, command: str, keys, version) -> set:
        finals = self._ds_keys(keys, version)
        self._ds_one_slot(command, finals)
        found = self._ds_run(command, command, *finals, write=False, default=())
        return self._ds_set(found)

    def sdiff(self, *keys, version=None) -> set:
        """Members of the first set that are in none of the others."""
        return self._ds_combine("sdiff", keys, version)

    def sinter(self, *keys, version=None) -> set:
        return self._ds_combine("sinter", keys, version)

    def sunion(self, *keys, version=None) -> set:
        return self._ds_combine("sunion", keys, version)

    def _ds_store(self, command: str, dest: str, sources: list[str]) -> int:
        self._ds_one_slot(command, [dest, *sources])
        return int(self._ds_run(command, command, dest, *sources, write=True, default=0,
                                changed=(dest,)))

    def sdiffstore(self, dest, *keys, version_dest=None, version_keys=None) -> int:
        """Stores ``sdiff(*keys)`` in ``dest`` (replacing it); its size."""
        return self._ds_store("sdiffstore", self._ds_key(dest, version_dest),
                              self._ds_keys(keys, version_keys))

    def sinterstore(self, dest, *keys, version=None) -> int:
        return self._ds_store("sinterstore", self._ds_key(dest, version),
                              self._ds_keys(keys, version))

    def sunionstore(self, destination, *keys, version=None) -> int:
        return self._ds_store("sunionstore", self._ds_key(destination, version),
                              self._ds_keys(keys, version))

    def smove(self, source, destination, member, version=None) -> bool:
        """Moves ``member`` from ``source`` to ``destination``; False if it was not in
        ``source``. ``version`` applies to both keys (django-redis applies it to
        ``source`` only)."""
        src, dst = self._ds_key(source, version), self._ds_key(destination, version)
        self._ds_one_slot("smove", [src, dst])
        return bool(self._ds_run("smove", "smove", src, dst, self._ds_dumps(member), write=True,
                                 default=False, changed=(src, dst)))

    def spop(self, key, count: int | None = None, version=None):
        """Removes and returns a random member (None if empty), or a set of up to
        ``count`` members."""
        k = self._ds_key(key, version)
        found = self._ds_run("spop", "spop", k, count, write=True, default=None, changed=(k,))
        if found is None:
            return None if count is None else set()
        if isinstance(found, list):
            return self._ds_set(found)
        return self._ds_loads(found)

    def srandmember(self, key, count: int | None = None, version=None):
        """A random member (None if empty), or a list of ``count`` of them (with repeats
        when ``count`` is negative)."""
        found = self._ds_run("srandmember", "srandmember", self._ds_key(key, version), count,
                             write=False, default=None)
        if found is None:
            return None if count is None else []
        if isinstance(found, list):
            return self._ds_list(found)
        return self._ds_loads(found)

    def sscan(self, key, match: str | None = None, count: int | None = 10, version=None) -> set:
        """The members one ``SSCAN`` call returns from the start (all of a small set).

        ``match`` is a Redis glob matched against str members, here, after decoding:
        members are stored encoded, so Redis cannot match them (django-redis sends the
        pattern pickled, which matches next to nothing)."""
        _cursor, found = self._ds_run("sscan", "sscan", self._ds_key(key, version), 0, None, count,
                                      write=False, default=(0, []))
        members = self._ds_set(found)
        if match is None:
            return members
        rx = _glob(match)
        return {m for m in members if isinstance(m, str) and rx.fullmatch(m)}

    def sscan_iter(self, key, match: str | None = None, count: int | None = 10,
                   version=None) -> Iterator:
        """Every member, fetched ``count`` at a time with ``SSCAN``; ``match`` as in
        :meth:`sscan`. Redis errors surface while iterating."""
        k = self._ds_key(key, version)
        tier = self._ds_tier("sscan_iter")
        rx = None if match is None else _glob(match)
        cursor = None
        while cursor != 0:
            cursor, found = tier.policy.run(tier.clients.client(write=False).sscan, k,
                                            cursor or 0, None, count, default=(0, []))
            for raw in found:
                member = self._ds_loads(raw, _UNREADABLE)
                if member is _UNREADABLE:
                    continue
                if rx is None or (isinstance(member, str) and rx.fullmatch(member)):
                    yield member

    # ------------------------------------------------------------------ sorted sets

    def zadd(self, key, mapping: Mapping, nx: bool = False, xx: bool = False, ch: bool = False,
             incr: bool = False, gt: bool = False, lt: bool = False, version=None):
        """Adds members with scores; the number added (changed with ``ch``), or the new
        score with ``incr`` (None if ``nx``/``xx`` stopped it)."""
        k = self._ds_key(key, version)
        encoded = {self._ds_dumps(m): score for m, score in mapping.items()}
        if encoded and not (nx or xx or ch or incr or gt or lt):
            args: list = []
            for member, score in encoded.items():
                args += (score, member)
            return int(self._ds_cmd("zadd", "ZADD", k, *args, write=True, default=0,
                                    changed=(k,)))
        return self._ds_run("zadd", "zadd", k, encoded, nx=nx, xx=xx, ch=ch, incr=incr, gt=gt,
                            lt=lt, write=True, default=None if incr else 0, changed=(k,))

    def zcard(self, key, version=None) -> int:
        return int(self._ds_cmd("zcard", "ZCARD", self._ds_key(key, version), write=False,
                                default=0))

    def zcount(self, key, min, max, version=None) -> int:  # noqa: A002 (django-redis's names)
        return self._ds_run("zcount", "zcount", self._ds_key(key, version), min, max, write=False,
                            default=0)

    def zincrby(self, key, amount: float, value, version=None) -> float | None:
        k = self._ds_key(key, version)
        score = self._ds_cmd("zincrby", "ZINCRBY", k, amount, self._ds_dumps(value),
                             write=True, default=None, changed=(k,))
        return None if score is None else float(score)

    def _ds_zpop(self, command: str, key, count, version):
        k = self._ds_key(key, version)
        found = self._ds_run(command, command, k, count, write=True, default=None, changed=(k,))
        if not found:
            return None if count is None else []
        pairs = self._ds_pairs(found)
        if count is None:
            return pairs[0] if pairs else None
        return pairs

    def zpopmax(self, key, count: int | None = None, version=None):
        """Removes and returns the (member, score) with the highest score (None if empty),
        or a list of up to ``count`` of them."""
        return self._ds_zpop("zpopmax", key, count, version)

    def zpopmin(self, key, count: int | None = None, version=None):
        return self._ds_zpop("zpopmin", key, count, version)

    def _ds_members(self, found, withscores: bool) -> list:
        if not found:
            return []
        if withscores:
            return self._ds_pairs(found)
        return self._ds_list(found)

    def zrange(self, key, start: int, end: int, desc: bool = False, withscores: bool = False,
               score_cast_func=float, version=None) -> list:
        found = self._ds_run("zrange", "zrange", self._ds_key(key, version), start, end, desc=desc,
                             withscores=withscores, score_cast_func=score_cast_func, write=False,
                             default=[])
        return self._ds_members(found, withscores)

    def zrevrange(self, key, start: int, end: int, withscores: bool = False,
                  score_cast_func=float, version=None) -> list:
        found = self._ds_run("zrevrange", "zrevrange", self._ds_key(key, version), start, end,
                             withscores=withscores, score_cast_func=score_cast_func, write=False,
                             default=[])
        return self._ds_members(found, withscores)

    def zrangebyscore(self, key, min, max, start: int | None = None,  # noqa: A002
                      num: int | None = None, withscores: bool = False, score_cast_func=float,
                      version=None) -> list:
        found = self._ds_run("zrangebyscore", "zrangebyscore", self._ds_key(key, version), min, max,
                             start=start, num=num, withscores=withscores,
                             score_cast_func=score_cast_func, write=False, default=[])
        return self._ds_members(found, withscores)

    def zrevrangebyscore(self, key, max, min, start: int | None = None,  # noqa: A002
                         num: int | None = None, withscores: bool = False,
                         score_cast_func=float, version=None) -> list:
        found = self._ds_run("zrevrangebyscore", "zrevrangebyscore", self._ds_key(key, version),
                             max, min, start=start, num=num, withscores=withscores,
                             score_cast_func=score_cast_func, write=False, default=[])
        return self._ds_members(found, withscores)

    def zrank(self, key, value, withscore: bool = False, version=None):
        """The 0-based rank by ascending score, None if not a member (``[rank, score]``
        with ``withscore``, Redis 7.2+)."""
        return self._ds_run("zrank", "zrank", self._ds_key(key, version), self._ds_dumps(value),
                            withscore=withscore, write=False, default=None)

    def zrevrank(self, key, value, withscore: bool = False, version=None):
        """The 0-based rank by descending score. Not in django-redis."""
        return self._ds_run("zrevrank", "zrevrank", self._ds_key(key, version),
                            self._ds_dumps(value), withscore=withscore, write=False,
                            default=None)

    def zscore(self, key, value, version=None) -> float | None:
        score = self._ds_cmd("zscore", "ZSCORE", self._ds_key(key, version),
                             self._ds_dumps(value), write=False, default=None)
        return None if score is None else float(score)

    def zmscore(self, key, *values, version=None) -> list[float | None]:
        """The scores of ``values`` (None for non-members). Not in django-redis."""
        found = self._ds_run("zmscore", "zmscore", self._ds_key(key, version),
                             [self._ds_dumps(v) for v in values], write=False, default=None)
        return [None] * len(values) if found is None else found

    def zrem(self, key, *values, version=None) -> int:
        k = self._ds_key(key, version)
        encoded = [self._ds_dumps(v) for v in values]
        return int(self._ds_cmd("zrem", "ZREM", k, *encoded, write=True, default=0,
                                changed=(k,)))

    def zremrangebyscore(self, key, min, max, version=None) -> int:  # noqa: A002
        k = self._ds_key(key, version)
        return self._ds_run("zremrangebyscore", "zremrangebyscore", k, min, max, write=True,
                            default=0, changed=(k,))

    def zremrangebyrank(self, key, start: int, end: int, version=None) -> int:
        """Removes the members ranked ``start``..``end``. Not in django-redis."""
        k = self._ds_key(key, version)
        return self._ds_run("zremrangebyrank", "zremrangebyrank", k, start, end, write=True,
                            default=0, changed=(k,))
