"""Deferred ``filter()`` for cached querysets (``FASTCACHE_ORM_LAZY_FILTER``, off by
default): building a filter (Django's ``add_q``) costs more than the rest of a cache hit
together, so a hit that never needs the filtered Query should not build it.

``Manager.filter(**kwargs)`` with plain values (or saved model instances), and a slice
taken right after it, are recorded on the queryset (``_fc_lazy``: the Query they apply
to, the operations, and their description) instead of being applied. The cache key is
made from that description (fingerprint.py); the first access to ``.query`` (a miss,
anything Django does with the Query) replays the operations on a copy, exactly as
Django's chain of clones would have, and keeps the result.

Django raises a bad lookup's error (``FieldError``, ``ValueError``, ``ValidationError``)
from ``filter()`` itself. A deferred filter would raise it later, so the first time a
filter (the same query before it, the same names, types and values) is seen in this
process it is also built at once, for its errors, and the result dropped; once it has
been built without error it is known to build again.
Replaying never mutates what another thread may read: it works on a copy and swaps it in.
"""

from __future__ import annotations

import threading

from django.db.models import Model, Q, QuerySet

from . import conf
from .fingerprint import _PLAIN, fingerprint
from .fingerprint import arguments as _arguments

__all__ = ["install"]

# Filters built successfully: (query before, arguments) -> True. Bounded.
_good: dict = {}
_GOOD_MAX = 4096
_orig: dict = {}
_cloning = threading.local()  # the lazy queryset being cloned by this thread, if any


def _scalar_arguments(kwargs: dict):
    # Only values a caller cannot change between filter() and the evaluation: a list
    # given to __in could be mutated, and Django would have read it at filter() time.
    for v in kwargs.values():
        if type(v) not in _PLAIN and not isinstance(v, Model):
            return None
    return _arguments(kwargs)


def _filter_or_exclude(self, negate, args, kwargs):
    if (negate or args or not kwargs or not conf.lazy_filter() or "_fc_lazy" in self.__dict__
            or self._defer_next_filter or self._sticky_filter
            or self._deferred_filter is not None or _orig["profile"](self.model) is None):
        return _orig["_filter_or_exclude"](self, negate, args, kwargs)
    q = self._query
    fp = None if q.is_sliced or q.filter_is_sticky else fingerprint(self)
    a = None if fp is None else _scalar_arguments(kwargs)
    if a is None:
        return _orig["_filter_or_exclude"](self, negate, args, kwargs)
    shape = (fp, a)
    if shape not in _good:
        # Built once, at once, for its errors only (and dropped): the queryset returned is
        # deferred like every other, so that its key is the one later calls compute.
        _orig["_filter_or_exclude"](self, negate, args, kwargs)
        if len(_good) >= _GOOD_MAX:
            _good.clear()
        _good[shape] = True
    clone = self._chain()
    clone.__dict__["_fc_lazy"] = (clone._query, (("f", dict(kwargs)),), (fp, (("f", a),)))
    return clone


def __getitem__(self, k):
    lazy = self.__dict__.get("_fc_lazy")
    if (lazy is not None and type(k) is slice and k.step is None and len(lazy[1]) == 1
            and self._result_cache is None
            and (k.start is None or (type(k.start) is int and k.start >= 0))
            and (k.stop is None or (type(k.stop) is int and k.stop >= 0))):
        qs = self._chain()
        base, ops, (fp, desc) = qs.__dict__["_fc_lazy"]
        op = ("s", k.start, k.stop)
        qs.__dict__["_fc_lazy"] = (base, ops + (op,), (fp, desc + (op,)))
        return qs
    return _orig["__getitem__"](self, k)


def clone_lazy(self, clone, *args, **kwargs):
    """``QuerySet._clone`` of a lazy queryset: Django's, given the Query before the
    deferred operations, which the clone records in turn."""
    lazy = self.__dict__["_fc_lazy"]
    _cloning.qs = self
    try:
        c = clone(self, *args, **kwargs)
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
    QuerySet._filter_or_exclude = _filter_or_exclude
    QuerySet.__getitem__ = __getitem__
    QuerySet.__getstate__ = __getstate__
    QuerySet.query = property(_get_query, _set_query)
