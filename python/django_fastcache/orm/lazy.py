"""Deferred ``filter()`` for cached querysets (``FASTCACHE_ORM_LAZY_FILTER``, on by
default; Django's own ORM tests end alike with and without it, see docs/orm.md):
building a filter (Django's ``add_q``) costs more than the rest of a cache hit together,
so a hit that never needs the filtered Query should not build it.

``Manager.filter(**kwargs)`` with plain values (or saved model instances), and a slice
taken right after it, are recorded on the queryset (``_fc_lazy``: a Query, the
operations still to apply to it, and the description of all of them) instead of being
applied. The cache key is made from that description (fingerprint.py); the first access
to ``.query`` (a miss, anything Django does with the Query) applies the operations to a
copy, exactly as Django's chain of clones would have, and keeps the result.

Django raises a bad lookup's error (``FieldError``, ``ValueError``, ``ValidationError``)
from ``filter()`` itself. A deferred filter would raise it later, so the first time a
filter (the same query before it, the same names, types and values) is seen in this
process it is built at once (and kept: nothing is built twice); once it has been built
without error it is known to build again, and is deferred from then on (until a lookup
is registered or unregistered: what is known is forgotten then).
Replaying never mutates what another thread may read: it works on a copy and swaps it in.
"""

from __future__ import annotations

import threading

from django.core.exceptions import FieldDoesNotExist
from django.db.models import ForeignKey, Model, Q, QuerySet

from . import conf
from .fingerprint import _PLAIN, fingerprint
from .fingerprint import arguments as _arguments

__all__ = ["install"]

# Filters built successfully: (query before, arguments) -> True. Bounded.
_good: dict = {}
_GOOD_MAX = 4096
_orig: dict = {}
_cloning = threading.local()  # the lazy queryset being cloned by this thread, if any


def _replayable(model, kwargs: dict):
    """The arguments to apply later, as Django would read them now; None when some value
    could change meanwhile in a way Django would not have seen: a list given to __in may
    be mutated, a model instance's fields may be. An instance of the related model given
    for a foreign key to its primary key is replayed as that key's value now (the same
    lookup, the same SQL); any other instance (one of another model, which Django
    rejects) keeps the filter eager."""
    out = kwargs
    for name, v in kwargs.items():
        if type(v) in _PLAIN:
            continue
        if not isinstance(v, Model) or fk_target(model, name) is not v._meta.concrete_model:
            return None
        if out is kwargs:
            out = dict(kwargs)
        out[name] = v.pk
    return out


_fk_memo: dict = {}


def fk_target(model, name: str):
    """The concrete related model when ``name`` is a foreign key of ``model`` to that
    model's primary key (so that an instance given for it stands for that key's value),
    else None."""
    try:
        return _fk_memo[(model, name)]
    except KeyError:
        pass
    try:
        field = model._meta.get_field(name)
    except FieldDoesNotExist:
        got = None
    else:
        got = (field.related_model._meta.concrete_model
               if isinstance(field, ForeignKey)
               and field.target_field is field.related_model._meta.pk else None)
    _fk_memo[(model, name)] = got
    return got


def fk_to_pk(model, name: str) -> bool:
    return fk_target(model, name) is not None


def _filter_or_exclude(self, negate, args, kwargs):
    if (negate or args or not kwargs or not conf.lazy_filter() or "_fc_lazy" in self.__dict__
            or self._defer_next_filter or self._sticky_filter
            or self._deferred_filter is not None or not _cached_ops(self)):
        return _orig["_filter_or_exclude"](self, negate, args, kwargs)
    q = self._query
    fp = None if q.is_sliced or q.filter_is_sticky else fingerprint(self)
    replay = None if fp is None else _replayable(self.model, kwargs)
    a = None if replay is None else _arguments(kwargs)
    if a is None:
        return _orig["_filter_or_exclude"](self, negate, args, kwargs)
    desc = (fp, (("f", a),))
    if shape_known(fp, a):
        clone = self._chain()
        clone.__dict__["_fc_lazy"] = (clone._query, (("f", dict(replay)),), desc)
        return clone
    # Seen for the first time: built now, as Django would (its errors raised here), and
    # kept; the queryset still carries the description, so that its key is the one a
    # deferred call computes, and the operations after it are deferred as usual.
    clone = _orig["_filter_or_exclude"](self, negate, args, kwargs)
    if len(_good) >= _GOOD_MAX:
        _good.clear()
    _good[(fp, a)] = True
    clone.__dict__["_fc_lazy"] = (clone._query, (), desc)
    return clone


def _cached_ops(qs):
    ops = qs.__dict__.get("_cacheops")  # .cache() / .nocache()
    if ops is None:
        profile = _orig["profile"](qs.model)
        ops = profile["ops"] if profile else ()
    return ops


def shape_known(fp, a) -> bool:
    return (fp, a) in _good


def __getitem__(self, k):
    lazy = self.__dict__.get("_fc_lazy")
    if (lazy is not None and type(k) is slice and k.step is None and len(lazy[2][1]) == 1
            and self._result_cache is None
            and (k.start is None or (type(k.start) is int and k.start >= 0))
            and (k.stop is None or (type(k.stop) is int and k.stop >= 0))):
        qs = self._chain()
        base, ops, (fp, desc) = qs.__dict__["_fc_lazy"]
        op = ("s", k.start, k.stop)
        qs.__dict__["_fc_lazy"] = (base, ops + (op,), (fp, desc + (op,)))
        return qs
    return _orig["__getitem__"](self, k)


def _clone(self, *args, **kwargs):
    """``QuerySet._clone`` of a lazy queryset: Django's, given the Query before the
    deferred operations, which the clone records in turn."""
    lazy = self.__dict__.get("_fc_lazy")
    if lazy is None:
        return _orig["_clone"](self, *args, **kwargs)
    _cloning.qs = self
    try:
        c = _orig["_clone"](self, *args, **kwargs)
    finally:
        _cloning.qs = None
    c.__dict__["_fc_lazy"] = (c._query, lazy[1], lazy[2])
    return c


def _get_query(self):
    lazy = self.__dict__.get("_fc_lazy")
    if lazy is not None:
        if getattr(_cloning, "qs", None) is self:
            return lazy[0]
        q = lazy[0].clone()
        for op in lazy[1]:
            # What Query.chain() does between two of Django's clones.
            if not q.filter_is_sticky:
                q.used_aliases = set()
            q.filter_is_sticky = False
            if op[0] == "f":
                q.add_q(Q(**op[1]))
            else:
                q.set_limits(op[1], op[2])
        self._query = q
        self.__dict__.pop("_fc_lazy", None)
    return _orig["query"].fget(self)


def _set_query(self, value):
    self.__dict__.pop("_fc_lazy", None)
    _orig["query"].fset(self, value)


def __getstate__(self):
    # A pickled queryset carries its applied Query: a process that unpickles it may not
    # defer filters (the setting, or another version of this module).
    if "_fc_lazy" in self.__dict__:
        self.query  # noqa: B018 - applies the deferred operations
    return _orig["__getstate__"](self)


def _forgetting(method):
    def wrapper(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        finally:
            _good.clear()

    return wrapper


def _forget_on_lookup_changes() -> None:
    """A filter that built once may not build again (or build otherwise) after a lookup
    or transform is registered or unregistered: what was learnt about filters is
    forgotten then, so that the next one is built (its errors raised) in filter()."""
    from django.db.models.query_utils import RegisterLookupMixin

    for name in ("register_lookup", "_unregister_lookup"):
        d = RegisterLookupMixin.__dict__[name]
        if hasattr(d, "class_method") and hasattr(d, "instance_method"):  # Django >= 4.2
            d.class_method = _forgetting(d.class_method)
            d.instance_method = _forgetting(d.instance_method)
        else:
            setattr(RegisterLookupMixin, name, classmethod(_forgetting(d.__func__)))


def install(profile) -> None:
    """Patches QuerySet (once; only when the setting is on: the ``query`` property it
    wraps is read on every queryset operation). ``profile``: query._profile."""
    if _orig:
        return
    _orig["profile"] = profile
    _orig["_filter_or_exclude"] = QuerySet._filter_or_exclude
    _orig["__getitem__"] = QuerySet.__getitem__
    _orig["query"] = QuerySet.__dict__["query"]
    _orig["__getstate__"] = QuerySet.__getstate__
    _orig["_clone"] = QuerySet._clone  # query.py's, when it is installed first
    QuerySet._clone = _clone
    QuerySet._filter_or_exclude = _filter_or_exclude
    QuerySet.__getitem__ = __getitem__
    QuerySet.__getstate__ = __getstate__
    QuerySet.query = property(_get_query, _set_query)
    _forget_on_lookup_changes()
