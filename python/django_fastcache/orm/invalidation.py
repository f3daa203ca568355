"""Granular invalidation by generation counters (see docs/orm.md).

An entry reading table T is stored under the counters ``orm:e:T`` (the model's epoch),
and, per conjunction of its WHERE clause on T, either ``orm:w:T`` (no condition: every
row) or ``orm:c:T:<columns=values>``. The *schemas* (sorted column tuples) used in
conjunctions on T are registered once, in the cache. A write to a row of T moves
``orm:w:T`` and, per registered schema, the one conjunction counter the row's values
select, for the row as it was and as it is: O(schemas) increments, no key scan.
"""

from __future__ import annotations

import logging
import threading
from contextlib import ContextDecorator

from django.apps import apps
from django.core.cache import caches
from django.db import DEFAULT_DB_ALIAS, transaction
from django.db.models.signals import m2m_changed, post_delete, post_save, pre_save

from .. import tags as _tags
from . import conf
from .signals import cache_invalidated
from .transaction import mark_dirty
from .tree import conj_tag, encode, epoch_tag, whole_tag

__all__ = ["invalidate_all", "invalidate_dict", "invalidate_model", "invalidate_obj",
           "no_invalidation"]

logger = logging.getLogger("django_fastcache.orm")
REGISTRY_PREFIX = "fastcache.orm.schemas:"
_local = threading.local()
_registry_lock = threading.Lock()


_thread_cache = threading.local()


def get_cache():
    """The backend entries live in. Kept per thread (Django's ``caches[alias]`` is an
    asgiref Local lookup, microseconds on every hit) until a setting changes."""
    got = getattr(_thread_cache, "v", None)
    if got is not None and got[0] == conf.generation:
        return got[1]
    cache = caches[conf.cache_alias()]
    _thread_cache.v = (conf.generation, cache)
    return cache


class _NoInvalidation(ContextDecorator):
    """``with no_invalidation:`` / ``@no_invalidation``: writes inside invalidate nothing."""

    def __enter__(self):
        _local.depth = getattr(_local, "depth", 0) + 1
        return self

    def __exit__(self, *exc):
        _local.depth -= 1

    @property
    def active(self) -> bool:
        return getattr(_local, "depth", 0) > 0


no_invalidation = _NoInvalidation()


# ---------------------------------------------------------------------- schema registry

def schemas(cache, table: str):
    """The schemas registered for ``table``; None when the registry is missing."""
    return cache.get(REGISTRY_PREFIX + table)


def register(cache, table: str, new: set) -> None:
    """Adds schemas to ``table``'s registry, before the counters of an entry using them
    are read (so a write after the read sees them). A registry created from nothing
    moves the epoch: entries written under a registry that was evicted die with it."""
    key = REGISTRY_PREFIX + table
    have = cache.get(key)
    if have is not None and new.issubset(have):
        return
    with _registry_lock, cache.lock(key + ":lock", timeout=10, blocking_timeout=10):
        have = _fresh_get(cache, key)
        if have is None:
            cache.set(key, tuple(sorted(new)), None)
            _tags.invalidate_tags(cache, epoch_tag(table))
        elif not new.issubset(have):
            cache.set(key, tuple(sorted(set(have) | new)), None)


def _fresh_get(cache, key):
    # Under the lock, read Redis itself: the coherent L1 may not have heard of the last
    # writer's update yet, and a lost schema would be a missed invalidation.
    tier = getattr(cache, "_tier", None)
    if tier is not None:
        return tier.get_from_redis(key, None, None) if hasattr(tier, "get_from_redis") else \
            cache.get(key)
    return cache.get(key)


# ---------------------------------------------------------------------- invalidation

def _row_tags(model, obj_dict: dict, registered) -> list[str]:
    table = model._meta.db_table
    if registered is None:
        return [epoch_tag(table)]
    out = [whole_tag(table)]
    columns = {f.column: f for f in model._meta.concrete_fields}
    for cols in registered:
        try:
            values = []
            for c in cols:
                field = columns[c]
                v = obj_dict[field.attname] if field.attname in obj_dict else obj_dict[c]
                values.append(None if v is None else field.get_prep_value(v))
            if any(v is None for v in values):
                continue  # col = NULL is never an equality a query can hold
            for v in values:
                encode(v)
        except KeyError:
            return [epoch_tag(table)]  # a partial row: drop everything on the table
        except (TypeError, ValueError):
            return [epoch_tag(table)]
        out.append(conj_tag(table, cols, tuple(values)))
    return out


def _bump(cache, tags_: list[str]) -> None:
    tier = getattr(cache, "_tier", None)
    if tier is None or len(tags_) < 2:
        _tags.invalidate_tags(cache, *tags_)
        return
    # Redis: every counter in one pipeline (create-if-missing at a random start, then
    # INCR), instead of one round trip per counter.
    keys = [cache.make_key(_tags.tag_key(t)) for t in tags_]
    try:
        pipe = tier.clients.client(write=True).pipeline(transaction=False)
        for k in keys:
            pipe.set(k, _tags._seed(), nx=True)
            pipe.incr(k)
        pipe.execute()
    except Exception:  # noqa: BLE001 - the failure policy decides, per counter
        _tags.invalidate_tags(cache, *tags_)
    finally:
        for k in keys:
            tier._changed(k)


def invalidate_dicts(model, dicts: list[dict], using: str = DEFAULT_DB_ALIAS) -> None:
    """Moves the counters matching each row of ``dicts`` (attname -> value) now."""
    if no_invalidation.active or not conf.enabled():
        return
    model = model._meta.concrete_model
    cache = get_cache()
    registered = schemas(cache, model._meta.db_table)
    tags_ = sorted({t for d in dicts for t in _row_tags(model, d, registered)})
    _guarded(_bump, cache, tags_)
    for d in dicts:
        cache_invalidated.send(sender=model, obj_dict=d)


def _guarded(fn, *args):
    try:
        return fn(*args)
    except Exception:
        if not conf.degrade_on_failure():
            raise
        logger.warning("django_fastcache.orm: invalidation failed", exc_info=True)
        return None


def invalidate_dict(model, obj_dict: dict, using: str = DEFAULT_DB_ALIAS) -> None:
    """Invalidates the cached queries a row with these values would match."""
    invalidate_dicts(model, [obj_dict], using)


def invalidate_obj(obj, using: str = DEFAULT_DB_ALIAS) -> None:
    """Invalidates the cached queries ``obj`` (as it is in memory) matches."""
    model = obj.__class__._meta.concrete_model
    invalidate_dicts(model, [obj_dict_of(obj)], using)


def invalidate_model(model, using: str = DEFAULT_DB_ALIAS) -> None:
    """Invalidates every cached query reading ``model``'s table (one counter)."""
    if no_invalidation.active or not conf.enabled():
        return
    model = model._meta.concrete_model
    _guarded(_tags.invalidate_tags, get_cache(), epoch_tag(model._meta.db_table))
    cache_invalidated.send(sender=model, obj_dict=None)


def invalidate_all() -> None:
    """Invalidates every cached query and cached_as/cached result: one counter per model
    plus the function tag of every ``cached``."""
    if not conf.enabled():
        return
    cache = get_cache()
    tables = sorted({m._meta.db_table for m in apps.get_models(include_auto_created=True)})
    from .simple import ALL_TAG

    _guarded(_tags.invalidate_tags, cache, ALL_TAG, *(epoch_tag(t) for t in tables))
    cache_invalidated.send(sender=None, obj_dict=None)


def obj_dict_of(obj) -> dict:
    return {f.attname: getattr(obj, f.attname, None) for f in obj._meta.concrete_fields}


# ---------------------------------------------------------------------- signal receivers

def _later(model, dicts: list[dict], using: str) -> None:
    mark_dirty(using, [model._meta.concrete_model._meta.db_table])
    transaction.on_commit(lambda: invalidate_dicts(model, dicts, using), using=using)


def _pre_save(sender, instance, raw=False, using=None, update_fields=None, **kwargs):
    if no_invalidation.active or not conf.enabled():
        return
    instance.__dict__.pop("_fastcache_old", None)
    if instance.pk is None or instance._state.adding:
        return
    model = sender._meta.concrete_model
    registered = _guarded(schemas, get_cache(), model._meta.db_table)
    if not registered:
        return  # no schema: the whole-table counter (or the epoch) is all a write moves
    fields = [f.attname for f in model._meta.concrete_fields]
    old = list(model._base_manager.using(using).nocache().filter(pk=instance.pk)
               .values(*fields)[:1])
    if old:
        instance.__dict__["_fastcache_old"] = old[0]


def _post_save(sender, instance, using=None, **kwargs):
    if no_invalidation.active or not conf.enabled():
        return
    dicts = [obj_dict_of(instance)]
    old = instance.__dict__.pop("_fastcache_old", None)
    if old is not None and old != dicts[0]:
        dicts.append(old)
    _later(sender, dicts, using)
    profile = conf.model_profile(sender)
    if profile and profile.get("cache_on_save"):
        from .query import cache_on_save

        transaction.on_commit(lambda: cache_on_save(sender, instance, profile, using),
                              using=using)


def _post_delete(sender, instance, using=None, **kwargs):
    if no_invalidation.active or not conf.enabled():
        return
    _later(sender, [obj_dict_of(instance)], using)


def _m2m_changed(sender, instance, action, reverse, model, pk_set, using=None, **kwargs):
    if no_invalidation.active or not conf.enabled():
        return
    through = sender
    # The two foreign keys of the through table: towards instance's model and the other.
    fk_self = fk_other = None
    for f in through._meta.concrete_fields:
        if f.is_relation and f.related_model is type(instance)._meta.concrete_model \
                and fk_self is None:
            fk_self = f
        elif f.is_relation and f.related_model is model._meta.concrete_model:
            fk_other = f
    if fk_self is None or fk_other is None:
        if action.startswith("post_"):
            mark_dirty(using, [through._meta.db_table])
            transaction.on_commit(lambda: invalidate_model(through, using), using=using)
        return
    if action == "pre_clear":
        rows = list(through._base_manager.using(using).nocache().filter(
            **{fk_self.attname: instance.pk}).values(*[f.attname for f in
                                                        through._meta.concrete_fields]))
        instance.__dict__.setdefault("_fastcache_cleared", {})[through] = rows
        return
    if action == "post_clear":
        rows = instance.__dict__.get("_fastcache_cleared", {}).pop(through, [])
        if rows:
            _later(through, rows, using)
        return
    if action in ("post_add", "post_remove") and pk_set:
        # The two keys are what queries hold conditions on; a schema naming another
        # column of the through table (its id) makes the row partial: epoch (see _row_tags).
        _later(through, [{fk_self.attname: instance.pk, fk_other.attname: pk}
                         for pk in pk_set], using)


_connected = False


def connect() -> None:
    global _connected
    if _connected:
        return
    pre_save.connect(_pre_save, dispatch_uid="fastcache.orm.pre_save")
    post_save.connect(_post_save, dispatch_uid="fastcache.orm.post_save")
    post_delete.connect(_post_delete, dispatch_uid="fastcache.orm.post_delete")
    m2m_changed.connect(_m2m_changed, dispatch_uid="fastcache.orm.m2m")
    _connected = True
