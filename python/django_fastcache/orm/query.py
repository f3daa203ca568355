"""Queryset caching: ``QuerySet.cache()``, ``.nocache()``, ``.invalidated_update()`` and
automatic caching of the ops a model's CACHEOPS profile names, installed on Django's
``QuerySet`` and ``Manager`` at start-up (as django-cacheops does).

A cached query's key is a digest of its structure (fingerprint.py; of its SQL and
parameters when the structure is not plain enough), plus the op and the row shape; a
``get(**kwargs)`` is keyed on the queryset and its arguments before Django builds the
filter. The entry is stored under the generation counters of its dependencies (tree.py,
invalidation.py), so a hit is one L1 lookup plus one per counter, and a write anywhere
invalidates it without a scan. docs/orm.md says what each part of a hit costs.
"""

from __future__ import annotations

import hashlib
import logging
import pickle

from django.core.exceptions import EmptyResultSet, ImproperlyConfigured
from django.db import connections, transaction
from django.db.models import Manager, Model, QuerySet
from django.db.models.base import ModelState
from django.db.models.query import (
    MAX_GET_RESULTS,
    FlatValuesListIterable,
    ModelIterable,
    ValuesIterable,
    ValuesListIterable,
)
from django.db.models.signals import post_init, pre_init

from .. import _core
from .. import tags as _tags
from . import conf, lazy
from .fingerprint import arguments, fingerprint
from .invalidation import get_cache, invalidate_dicts, register
from .signals import cache_read
from .transaction import dirty_tables, in_atomic, mark_dirty, maybe_dirty, store_after_commit
from .tree import dependencies, query_tags

__all__ = ["install"]

logger = logging.getLogger("django_fastcache.orm")
MISS = _tags.MISS
_NOPROFILE = object()
_CACHEABLE = (ModelIterable, ValuesIterable, ValuesListIterable, FlatValuesListIterable)
_profiles: dict = {}
_local_get: dict = {}
_orig: dict = {}


def forget_profiles() -> None:
    _profiles.clear()
    _local_get.clear()


def _profile(model):
    p = _profiles.get(model, _NOPROFILE)
    if p is _NOPROFILE:
        p = _profiles[model] = conf.model_profile(model)
    return p


def _ops(qs) -> frozenset:
    ops = qs.__dict__.get("_cacheops")
    if ops is not None:
        return ops
    p = _profile(qs.model)
    return p["ops"] if p else frozenset()


def _should(qs, op: str) -> bool:
    if op not in _ops(qs) or not conf.enabled():
        return False
    # _query: a deferred filter (lazy.py) does not change select_for_update
    return not (qs._query.select_for_update or qs._for_write)


def query_key(qs, op: str, extra: str = "") -> str:
    """The cache key of ``qs`` under ``op``: its SQL, parameters, row shape, database
    (unless the profile is db_agnostic, cacheops' default) and ``extra``."""
    return key_and_compiler(qs, op, extra)[0]


def query_dependencies(qs) -> dict:
    """What ``qs`` reads, per table (tree.dependencies on its compiled form)."""
    return dependencies(qs.query, key_and_compiler(qs, "deps", compile_sql=True)[1])


# Keys of query shapes seen lately: the structure (fingerprint.py) to its key, so that a
# hit on a known shape costs one dict lookup instead of a repr and a digest. Bounded:
# emptied when full (shapes are few; values within a shape are what fills it).
_KEY_VERSION = "2"  # moved when the stored form changes: older entries are never read
_keys: dict = {}
_KEYS_MAX = 4096


def _digest(prefix: str, *parts) -> str:
    text = "|".join([_KEY_VERSION, *map(str, parts)])
    return prefix + hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()


def _memo_key(shape: tuple, prefix: str) -> str:
    key = _keys.get(shape)
    if key is None:
        if len(_keys) >= _KEYS_MAX:
            _keys.clear()
        key = _keys[shape] = _digest(prefix, *map(repr, shape))
    return key


def key_and_compiler(qs, op: str, extra: str = "", compile_sql: bool = False) -> tuple:
    """(key, compiler): the compiler is None when the key came from the queryset's
    structure (fingerprint.py), unless ``compile_sql``."""
    p = _profile(qs.model)
    db = "" if p is None or p["db_agnostic"] else qs.db
    if not compile_sql:
        fp = fingerprint(qs)
        if fp is not None:
            return _memo_key((op, db, fp, extra), "fastcache.orm.f:"), None
    compiler = qs.query.get_compiler(qs.db)
    sql, params = compiler.as_sql()
    it = qs._iterable_class
    return _digest("fastcache.orm.q:", op, db, it.__qualname__, qs._fields, sql, repr(params),
                   extra), compiler


def _get_key(qs, kwargs: dict):
    """The key of ``qs.get(**kwargs)`` made from the queryset and the arguments, before
    Django turns them into a filtered query (which costs more than the rest of a hit);
    None when they are not plain enough (fingerprint.py)."""
    if (qs._deferred_filter is not None or qs._prefetch_related_lookups or qs._for_write
            or qs._known_related_objects or qs._query.combinator):
        return None
    fp = fingerprint(qs)
    if fp is None:
        return None
    args = arguments(kwargs)
    if args is None:
        return None
    for name, v in kwargs.items():
        # An instance is described by its primary key: right for a foreign key to it, not
        # for one to another field (Django then reads that field of the instance).
        if isinstance(v, Model) and not lazy.fk_to_pk(qs.model, name):
            return None
    p = _profile(qs.model)
    db = "" if p is None or p["db_agnostic"] else qs.db
    return _memo_key(("get", db, fp, args), "fastcache.orm.g:")


def _settings(qs) -> tuple:
    p = _profile(qs.model) or {}
    timeout = qs.__dict__.get("_cachetimeout")
    lock = qs.__dict__.get("_cachelock")
    return (p.get("timeout", 900) if timeout is None else timeout,
            p.get("lock", False) if lock is None else lock)


def prepare(cache, deps: dict) -> tuple:
    """Registers the schemas of ``deps`` and reads their counters (in that order: a write
    after the read then moves one of them). Returns (tags, gens); gens None when the
    counters cannot be had."""
    tags, schemas = query_tags(deps)
    for table, new in schemas.items():
        register(cache, table, new)
    return tags, _tags.generations(cache, tags, create=True)


def store(cache, key, value, tags, gens, timeout) -> None:
    """Stores ``value`` under the counters read before it was computed; inside a
    transaction, a snapshot of it, once everything commits."""
    if gens is None:
        return
    if in_atomic():
        snapshot = pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
        store_after_commit(lambda: _tags.set_tagged(cache, key, pickle.loads(snapshot), tags,
                                                    gens, timeout))
    else:
        _tags.set_tagged(cache, key, value, tags, gens, timeout)


def lookup(cache, key):
    """The fresh value under ``key`` or MISS. The entry and each of its counters are read
    with the backend's single-key read: on Redis that fills (and is served from) the
    coherent L1, where ``get_many`` would ask Redis for the counters on every hit."""
    get = cache._get
    entry = get(key, MISS, None)
    if type(entry) is not tuple or len(entry) != 4 or entry[0] != _tags.ENVELOPE:
        return MISS
    _, tags, gens, value = entry
    if len(tags) != len(gens):
        return MISS
    if cache._tier is not None and ask_redis(cache._tier):
        if strict_counters(cache, tags) != gens:
            cache.delete(key)
            return MISS
        return value
    for tag, gen in zip(tags, gens, strict=True):
        if get(_tags.TAG_KEY_PREFIX + tag, None, None) != gen:
            cache.delete(key)
            return MISS
    return value


def ask_redis(tier) -> bool:
    """Whether a hit's counters must come from Redis rather than the coherent L1: always
    in strict mode; else only while an invalidation has reached this process and is not
    applied yet (the native listener's sockets hold unread bytes, or it is applying a
    batch: one poll(2)), which closes the window in which the listener thread has not
    been scheduled yet (docs/orm.md, "Across processes")."""
    if conf.strict():
        return True
    return tier.l1 and tier.store.listener_pending()


def strict_counters(cache, tags) -> tuple:
    """The counters of ``tags`` as Redis has them now (one round trip), not as the
    coherent L1 may still have them while their invalidation is in flight."""
    keys = [_tags.TAG_KEY_PREFIX + t for t in tags]
    found = cache._tier.get_many_from_redis(keys)
    return tuple([found.get(k) for k in keys])


# Model instances are stored as their attribute dicts (the field values, and whatever else
# the query set on them: annotations, extra selects; deferred fields are absent), which
# the L1 hands back as fresh dicts without decoding anything, and rebuilt the way
# unpickling does, without ``__init__`` (docs/orm.md, "Stored form").
ROWS = "\x00fastcache.orm.rows"
_MODEL_FROM_DB = Model.from_db.__func__
# Django's ModelState is a plain class (class attributes, no __init__): it may be made by
# the extension with its __dict__ set directly; a future one with an __init__ is called.
_STATE_PLAIN = (ModelState.__init__ is object.__init__ and ModelState.__new__ is object.__new__)
_plain_models: dict = {}


def _plain(model) -> bool:
    """Whether instances of ``model`` may be rebuilt from their ``__dict__``: not when it
    overrides ``from_db`` or ``__new__``, or has ``pre_init``/``post_init`` receivers (ImageField's
    dimensions, change trackers): those get ``from_db`` with the stored fields."""
    seen = (len(pre_init.receivers), len(post_init.receivers))
    got = _plain_models.get(model)
    if got is None or got[0] != seen:
        plain = (getattr(model.from_db, "__func__", None) is _MODEL_FROM_DB
                 and model.__new__ is object.__new__
                 and not pre_init.has_listeners(model) and not post_init.has_listeners(model))
        got = _plain_models[model] = (seen, plain)
    return got[1]


def _rows_ok(qs) -> bool:
    return (qs._iterable_class is ModelIterable and not qs.query.select_related
            and not qs._known_related_objects)


def _as_rows(qs, objs: list):
    """``objs`` as stored: their attribute dicts, or the instances themselves when a
    dict would not do (related objects cached on them, memoryview values)."""
    if not _rows_ok(qs):
        return objs
    model = qs.model
    plain = _plain(model)
    if not plain:
        q = qs.query
        names = [f.attname for f in model._meta.concrete_fields]
        names += [*q.annotation_select, *q.extra_select]
    out = []
    for o in objs:
        od = o.__dict__
        state = od.get("_state")
        if type(o) is not model or state is None or state.__dict__.get("fields_cache"):
            return objs
        if plain:
            d = od.copy()
            del d["_state"]
        else:
            d = {n: od[n] for n in names if n in od}
        for v in d.values():
            if type(v) is memoryview:
                return objs
        out.append(d)
    return (ROWS, out)


def _instances(model, db, dicts: list) -> list:
    """Instances from stored attribute dicts (fresh copies, owned here): as unpickling
    does, without ``__init__`` (which costs as much again), a fresh ``_state`` saying
    "loaded from ``db``"."""
    if not _plain(model):
        return [_from_db(model, db, d) for d in dicts]
    if _STATE_PLAIN:
        return _core.instances(model, ModelState, db, dicts)
    out = []
    for d in dicts:
        state = ModelState()
        state.db = db
        state.adding = False
        d["_state"] = state
        obj = model.__new__(model)
        obj.__dict__ = d
        out.append(obj)
    return out


def _from_db(model, db, d: dict):
    names = [f.attname for f in model._meta.concrete_fields if f.attname in d]
    obj = model.from_db(db, names, [d.pop(n) for n in names])
    for k, v in d.items():
        setattr(obj, k, v)
    return obj


def _value_of(qs, value):
    """A stored value as the caller gets it: instances rebuilt from their dicts."""
    if type(value) is tuple and len(value) == 2 and value[0] == ROWS:
        return _instances(qs.model, qs.db, value[1])
    return value


def _deps(qs, compiler):
    """tree.dependencies of ``qs``, compiling it if its key did not; None when it
    matches nothing (EmptyResultSet)."""
    if compiler is None:
        try:
            compiler = qs.query.get_compiler(qs.db)
            compiler.as_sql()
        except EmptyResultSet:
            return None
    return dependencies(qs.query, compiler)


def _degrade(exc: Exception) -> None:
    if not conf.degrade_on_failure():
        raise exc
    logger.warning("django_fastcache.orm: cache unavailable, querying the database (%s)", exc)


def _cached(qs, op: str, compute, extra: str = ""):
    key = qs.__dict__.get("_fastcache_key") if op == "fetch" else None  # get()'s clone
    compiler = None
    if key is None:
        try:
            key, compiler = key_and_compiler(qs, op, extra)
        except EmptyResultSet:
            return compute()
    deps = None
    if maybe_dirty() and connections[qs.db].in_atomic_block:
        dirty = dirty_tables(qs.db)
        if dirty:
            deps = _deps(qs, compiler)
            if deps is None:
                return compute()
            if dirty.intersection(deps):
                return compute()  # the transaction reads its own writes, uncached
    try:
        cache = get_cache()
        value = lookup(cache, key)
    except Exception as exc:  # noqa: BLE001 - the failure policy is CACHEOPS_DEGRADE_ON_FAILURE
        _degrade(exc)
        return compute()
    if value is not MISS:
        cache_read.send(sender=qs.model, func=None, hit=True)
        return _value_of(qs, value)
    cache_read.send(sender=qs.model, func=None, hit=False)
    if deps is None:
        deps = _deps(qs, compiler)
        if deps is None:
            return compute()
    timeout, lock = _settings(qs)
    try:
        tags, gens = prepare(cache, deps)
    except Exception as exc:  # noqa: BLE001
        _degrade(exc)
        return compute()
    if lock and gens is not None and not in_atomic():
        computed = []

        def make():
            v = compute()
            computed.append(v)
            return (_tags.ENVELOPE, tags, gens, _as_rows(qs, v) if op == "fetch" else v)

        got = cache.get_or_set(key, make, timeout)
        if computed:  # this caller computed it: its own instances, not the stored form
            return computed[0]
        return _value_of(qs, got[3] if _tags.is_envelope(got) else got)
    value = compute()
    try:
        store(cache, key, _as_rows(qs, value) if op == "fetch" else value, tags, gens,
              timeout)
    except Exception as exc:  # noqa: BLE001
        _degrade(exc)
    return value


# ---------------------------------------------------------------------- QuerySet methods

_OURS = ("_cacheops", "_cachetimeout", "_cachelock", "_fastcache_key")


def _clone(self, *args, **kwargs):
    c = _orig["_clone"](self, *args, **kwargs)  # a lazy queryset's: lazy._clone
    d = self.__dict__
    for name in _OURS:
        if name in d:
            c.__dict__[name] = d[name]
    return c


def cache(self, ops=None, timeout=None, lock=None):
    """Caches this queryset's ``ops`` (default: all of get, fetch, count, aggregate,
    exists) for ``timeout`` seconds (default: the model's profile); ``lock=True``: one
    caller computes a missing result while the others wait for it."""
    if _profile(self.model) is None:
        raise ImproperlyConfigured(
            f"caching is not enabled for {self.model._meta.label}: add it (or "
            f"'{self.model._meta.app_label}.*') to CACHEOPS, with \"ops\": () if nothing "
            "should be cached by default")
    if ops is None or ops == "all":
        ops = conf.ALL_OPS
    elif isinstance(ops, str):
        ops = frozenset((ops,))
    ops = frozenset(ops)
    unknown = ops - conf.ALL_OPS
    if unknown:
        raise ValueError(f"cache(): unknown ops {sorted(unknown)}; known: "
                         f"{sorted(conf.ALL_OPS)}")
    qs = self._chain()
    qs.__dict__["_cacheops"] = ops
    if timeout is not None:
        qs.__dict__["_cachetimeout"] = timeout
    if lock is not None:
        qs.__dict__["_cachelock"] = lock
    return qs


def nocache(self):
    """This queryset, never read from nor stored in the cache."""
    if _profile(self.model) is None:
        return self
    qs = self._chain()
    qs.__dict__["_cacheops"] = frozenset()
    return qs


def _fetch_all(self):
    if (self._result_cache is None and self._iterable_class in _CACHEABLE
            and _should(self, "fetch")):
        self._result_cache = _cached(self, "fetch", lambda: list(self._iterable_class(self)))
    _orig["_fetch_all"](self)


def count(self):
    if self._result_cache is None and _should(self, "count"):
        return _cached(self, "count", lambda: _orig["count"](self))
    return _orig["count"](self)


def exists(self):
    if self._result_cache is None and _should(self, "exists"):
        return _cached(self, "exists", lambda: _orig["exists"](self))
    return _orig["exists"](self)


def aggregate(self, *args, **kwargs):
    if _should(self, "aggregate"):
        extra = repr((args, sorted(kwargs.items())))
        return _cached(self, "aggregate", lambda: _orig["aggregate"](self, *args, **kwargs),
                       extra)
    return _orig["aggregate"](self, *args, **kwargs)


def get(self, *args, **kwargs):
    ops = _ops(self)
    qs = self
    if "get" in ops and conf.enabled():
        p = _profile(self.model)
        if (p and p["local_get"] and not args and not self.query.select_related
                and not self.query.where.children):
            # cacheops' local_get: simple gets kept in this process's memory, not
            # invalidated by writes in other processes (only by this process's own).
            try:
                k = (self.model, tuple(sorted(kwargs.items())))
                per_model = _local_get.setdefault(self.model._meta.concrete_model, {})
                if k in per_model:
                    return per_model[k]
                obj = per_model[k] = _orig["get"](self, *args, **kwargs)
                return obj
            except TypeError:
                pass  # an unhashable argument: the shared cache instead
        key = None
        if not args and kwargs and not maybe_dirty() and self._result_cache is None:
            key = _get_key(self, kwargs)
            if key is not None:
                try:
                    value = lookup(get_cache(), key)
                except Exception:  # noqa: BLE001 - the path below applies the policy
                    value = MISS
                if type(value) is tuple and len(value) == 2 and value[0] == ROWS \
                        and len(value[1]) == 1:
                    cache_read.send(sender=self.model, func=None, hit=True)
                    return _instances(self.model, self.db, value[1])[0]
                if type(value) is list and len(value) == 1:
                    cache_read.send(sender=self.model, func=None, hit=True)
                    return value[0]
        # The general path: Django's get(), whose fetch is cached (under ``key`` when the
        # arguments made one, so that the next call finds it above).
        if key is not None or "fetch" not in ops:
            qs = self._chain()
            qs.__dict__["_cacheops"] = ops | {"fetch"}
            if key is not None:
                qs.__dict__["_fastcache_key"] = key
    return _orig["get"](qs, *args, **kwargs)


def invalidated_update(self, **kwargs) -> int:
    """``update(**kwargs)`` that invalidates the cached queries the updated rows matched
    before and match after (``update()`` itself sends no signal and invalidates nothing)."""
    model = self.model._meta.concrete_model
    fields = [f.attname for f in model._meta.concrete_fields]
    using = self.db
    with transaction.atomic(using=using):
        base = self.nocache()
        if connections[using].features.has_select_for_update:
            base = base.select_for_update()
        before = list(base.values(*fields))
        pks = [row[model._meta.pk.attname] for row in before]
        rows = self.nocache().filter(pk__in=pks).update(**kwargs)
        after = list(model._base_manager.using(using).nocache().filter(pk__in=pks)
                     .values(*fields))
        dicts = before + after
        mark_dirty(using, [model._meta.db_table])
        transaction.on_commit(lambda: invalidate_dicts(model, dicts, using), using=using)
    return rows


def cache_on_save(model, instance, profile: dict, using: str) -> None:
    """After a commit: stores ``instance`` as the result of ``.get(<field>=<value>)``."""
    field = "pk" if profile["cache_on_save"] is True else profile["cache_on_save"]
    value = getattr(instance, field)
    base = model._default_manager.using(using).all()
    qs = base.filter(**{field: value})
    if qs.query.can_filter() and not qs.query.distinct_fields:
        qs = qs.order_by()
    qs.query.set_limits(high=MAX_GET_RESULTS)
    try:
        key, compiler = key_and_compiler(qs, "fetch", compile_sql=False)
        cache = get_cache()
        if compiler is None:
            compiler = key_and_compiler(qs, "fetch", compile_sql=True)[1]
        tags, gens = prepare(cache, dependencies(qs.query, compiler))
        rows = _as_rows(qs, [instance])
        timeout = _settings(qs)[0]
        store(cache, key, rows, tags, gens, timeout)
        get_key = _get_key(base, {field: value})  # where get() looks first
        if get_key is not None:
            store(cache, get_key, rows, tags, gens, timeout)
    except Exception as exc:  # noqa: BLE001
        _degrade(exc)


def _local_saved(sender, **kwargs) -> None:
    _local_get.pop(sender._meta.concrete_model, None)


def _manager_proxy(name: str):
    def method(self, *args, **kwargs):
        return getattr(self.get_queryset(), name)(*args, **kwargs)

    method.__name__ = name
    return method


def install() -> None:
    """Puts the methods above on Django's QuerySet and Manager (idempotent)."""
    if _orig:
        return
    for name in ("_clone", "_fetch_all", "count", "exists", "aggregate", "get"):
        _orig[name] = getattr(QuerySet, name)
    QuerySet._clone = _clone
    QuerySet._fetch_all = _fetch_all
    QuerySet.count = count
    QuerySet.exists = exists
    QuerySet.aggregate = aggregate
    QuerySet.get = get
    QuerySet.cache = cache
    QuerySet.nocache = nocache
    QuerySet.invalidated_update = invalidated_update
    if conf.lazy_filter():
        lazy.install(_profile)
    for name in ("cache", "nocache", "invalidated_update"):
        setattr(Manager, name, _manager_proxy(name))
    from django.db.models.signals import post_delete, post_save

    post_save.connect(_local_saved, dispatch_uid="fastcache.orm.local_get.save")
    post_delete.connect(_local_saved, dispatch_uid="fastcache.orm.local_get.delete")
