"""Tag-based invalidation for ``FastCache`` by generation counters: no scans, O(tags).

Each tag has a counter under the cache key ``fastcache.tag:<tag>`` (an ``int``, so Redis
can ``INCRBY`` it). A tagged value is stored in an envelope recording the counters it was
written under; it is a miss as soon as any of them moved. ``invalidate_tags`` increments
the counters (atomically: the store's shard lock on the embedded default, one Lua script
on Redis), so it costs one operation per tag whatever the number of entries.

A missing counter (never created, evicted, flushed) starts at a random 48-bit value rather
than 0: an entry written under a counter that was later evicted and recreated cannot find
its old generation again (no ABA), and an entry whose counter is missing is a miss.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from django.core.cache.backends.base import DEFAULT_TIMEOUT

__all__ = ["ENVELOPE", "TAG_KEY_PREFIX", "invalidate_tags", "tag_key"]

logger = logging.getLogger("django_fastcache.tags")

# First item of a tagged entry's envelope: (ENVELOPE, tags, generations, value). A tuple
# of msgpack-native items, so a hit on the embedded default is not unpickled.
ENVELOPE = "\x00fastcache.tagged.v1"
TAG_KEY_PREFIX = "fastcache.tag:"
MISS = object()
_BAD_TAG = re.compile(r"[\s\x00-\x1f\x7f]")


def _seed() -> int:
    return int.from_bytes(os.urandom(6), "big") + 1


def normalize(tags: Iterable[str] | str) -> tuple[str, ...]:
    """The tags as a sorted tuple of distinct strings; TypeError/ValueError naming a bad one."""
    if isinstance(tags, str):
        tags = (tags,)
    out = set()
    for tag in tags:
        if not isinstance(tag, str):
            raise TypeError(f"cache tags must be strings, not {type(tag).__name__} ({tag!r})")
        if not tag or _BAD_TAG.search(tag):
            raise ValueError(f"invalid cache tag {tag!r}: empty, or contains whitespace or "
                             "control characters")
        out.add(tag)
    return tuple(sorted(out))


def tag_key(tag: str) -> str:
    """The cache key holding the generation counter of ``tag``."""
    return TAG_KEY_PREFIX + tag


def is_envelope(value: Any) -> bool:
    return type(value) is tuple and len(value) == 4 and value[0] == ENVELOPE


# ---------------------------------------------------------------------- generations

def _raw_get_many(cache, keys: list, version) -> dict:
    # The engine or Redis tier directly: counters and envelopes, with no envelope resolution.
    return cache._cache.get_many(keys, version)


async def _araw_get_many(cache, keys: list, version) -> dict:
    if cache._tier is not None:
        return await cache._tier.aget_many(keys, version)
    return cache._engine.get_many(keys, version)


def generations(cache, tags: tuple[str, ...], *, create: bool) -> tuple | None:
    """The current counters of ``tags`` (one ``get_many``). With ``create``, missing
    counters are created (``add`` of a random start, so concurrent creators agree);
    None when a counter cannot be read or created (the shared tier is unreachable)."""
    if not tags:
        return ()
    keys = [tag_key(t) for t in tags]
    found = _raw_get_many(cache, keys, None)
    return _complete(cache, keys, found, create)


def _complete(cache, keys: list[str], found: dict, create: bool) -> tuple | None:
    gens = []
    for k in keys:
        g = found.get(k)
        if g is None:
            if not create:
                return None
            seed = _seed()
            if cache._cache.add(k, seed, None, None):
                g = seed
            else:
                g = cache._cache.get(k, None, None)
                if g is None:
                    return None
        gens.append(g)
    return tuple(gens)


def envelope(cache, tags, value: Any, gens: tuple | None = None) -> tuple | None:
    """The envelope storing ``value`` under ``tags``; None when the counters are unknown
    (then nothing should be stored: it could not be invalidated)."""
    tags = normalize(tags)
    if gens is None:
        gens = generations(cache, tags, create=True)
        if gens is None:
            return None
    return (ENVELOPE, tags, gens, value)


def resolve(cache, key, entry: tuple, default: Any, version) -> Any:
    """The value of a tagged ``entry`` read under ``key``, or ``default`` when any of its
    tags was invalidated since it was written (the stale entry is then deleted, so that
    ``add`` and ``has_key`` see the key free)."""
    _, tags, gens, value = entry
    if generations(cache, tags, create=False) == gens:
        return value
    cache._cache.delete(key, version)
    return default


def resolve_many(cache, found: dict, version) -> dict:
    """``get_many``'s result with envelopes resolved, reading all their counters in one
    ``get_many``."""
    tagged = [(k, v) for k, v in found.items()
              if type(v) is tuple and len(v) == 4 and v[0] == ENVELOPE]
    if not tagged:
        return found
    keys = sorted({tag_key(t) for _, entry in tagged for t in entry[1]})
    counters = _raw_get_many(cache, keys, None)
    stale = []
    for k, (_, tags, gens, value) in tagged:
        if tuple(counters.get(tag_key(t)) for t in tags) == gens:
            found[k] = value
        else:
            del found[k]
            stale.append(k)
    if stale:
        cache._cache.delete_many(stale, version)
    return found


async def aresolve(cache, key, entry: tuple, default: Any, version) -> Any:
    _, tags, gens, value = entry
    counters = await _araw_get_many(cache, [tag_key(t) for t in tags], None)
    if tuple(counters.get(tag_key(t)) for t in tags) == gens:
        return value
    await cache.adelete(key, version)
    return default


# ---------------------------------------------------------------------- one-call lookups

def get_tagged(cache, key, tags: tuple[str, ...], version=None,
               tkeys: list[str] | None = None) -> tuple[Any, tuple | None]:
    """Reads ``key`` and the counters of ``tags`` (normalized; ``tkeys`` their counter
    keys, if the caller keeps them) in one ``get_many``: ``(value, gens)`` where value is
    :data:`MISS` unless the entry is fresh, and ``gens`` are the counters read (None if
    any is missing), for storing a recomputed value under them."""
    if tkeys is None:
        tkeys = [tag_key(t) for t in tags]
    if version is None:
        found = _raw_get_many(cache, [key, *tkeys], None)
    else:
        found = _raw_get_many(cache, tkeys, None)
        found.update(_raw_get_many(cache, [key], version))
    return _check(cache, key, tags, tkeys, found)


async def aget_tagged(cache, key, tags: tuple[str, ...], version=None, tkeys=None):
    if tkeys is None:
        tkeys = [tag_key(t) for t in tags]
    if version is None:
        found = await _araw_get_many(cache, [key, *tkeys], None)
    else:
        found = await _araw_get_many(cache, tkeys, None)
        found.update(await _araw_get_many(cache, [key], version))
    return _check(cache, key, tags, tkeys, found)


def _check(cache, key, tags, tkeys, found: dict) -> tuple[Any, tuple | None]:
    try:
        gens = tuple([found[k] for k in tkeys])
    except KeyError:
        gens = None
    entry = found.get(key, MISS)
    if type(entry) is not tuple or len(entry) != 4 or entry[0] != ENVELOPE:
        return entry, gens  # a miss, or stored without tags (by plain set): as a plain get
    _, etags, egens, value = entry
    if etags == tags:
        return (value if egens == gens else MISS), gens
    # Written under other tags (the code changed between deploys): check its own.
    return (value if generations(cache, etags, create=False) == egens else MISS), gens


def set_tagged(cache, key, value, tags: tuple[str, ...], gens: tuple | None,
               timeout=DEFAULT_TIMEOUT, version=None) -> None:
    """Stores ``value`` under ``tags`` with the counters read when the miss was seen
    (``gens`` from :func:`get_tagged`), so an invalidation that happened while the value
    was computed leaves it stale at once instead of caching outdated data."""
    if gens is None:
        gens = _complete(cache, [tag_key(t) for t in tags], {}, True)
    if gens is None:
        cache._cache.delete(key, version)
        return
    cache._cache.set(key, (ENVELOPE, tags, gens, value), timeout, version)


async def aset_tagged(cache, key, value, tags, gens, timeout=DEFAULT_TIMEOUT, version=None):
    if gens is None:
        gens = _complete(cache, [tag_key(t) for t in tags], {}, True)
    if gens is None:
        await cache.adelete(key, version)
        return
    await cache.aset(key, (ENVELOPE, tags, gens, value), timeout, version)


# ---------------------------------------------------------------------- invalidation

def invalidate_tags(cache, *tags: str) -> None:
    """Moves the counter of each tag, so every entry written under it becomes a miss.
    One atomic ``incr`` per tag (an ``add`` of a random start for a missing counter)."""
    for key in (tag_key(t) for t in normalize(tags)):
        for _ in range(3):
            try:
                moved = cache._cache.incr(key, 1, None) is not None  # None: Redis unreachable
            except ValueError:  # missing counter: no entry can be fresh under it
                moved = cache._cache.add(key, _seed(), None, None)
            if moved:
                break
        else:
            # Neither incr nor add worked: the shared tier is unreachable (its failure
            # policy logged it); entries under this tag may stay fresh until they expire.
            logger.warning("could not invalidate cache tag %r", key[len(TAG_KEY_PREFIX):])


async def ainvalidate_tags(cache, *tags: str) -> None:
    for key in (tag_key(t) for t in normalize(tags)):
        for _ in range(3):
            try:
                moved = await cache.aincr(key, 1) is not None
            except ValueError:
                moved = await cache.aadd(key, _seed(), None)
            if moved:
                break
        else:
            logger.warning("could not invalidate cache tag %r", key[len(TAG_KEY_PREFIX):])
