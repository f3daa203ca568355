"""A cache key for common querysets without compiling their SQL.

Compiling a queryset (``as_sql``) costs more than the rest of a cache hit together. For
querysets made only of what is listed here (field lookups with plain values, joins,
ordering by names, slicing, select_related, only/defer, values/values_list) the key is
a digest of the Query's own structure instead: equal structures compile to equal SQL
and parameters. Anything else (annotations, expressions, subqueries, extra(), unions,
filtered relations...) returns None and the caller keys on the compiled SQL.
"""

from __future__ import annotations

import datetime
import decimal
import uuid

from django.db.models.expressions import Col
from django.db.models.lookups import Lookup
from django.db.models.sql.where import WhereNode

__all__ = ["fingerprint"]

_PLAIN = (str, int, float, bool, type(None), decimal.Decimal, datetime.datetime,
          datetime.date, datetime.time, datetime.timedelta, uuid.UUID, bytes)


class _Unknown(Exception):
    pass


def _value(v):
    t = type(v)
    if t in _PLAIN:
        return (t.__name__, v)
    if t in (list, tuple):
        return ("seq", tuple(_value(x) for x in v))
    if t in (set, frozenset):
        return ("set", tuple(sorted((_value(x) for x in v), key=repr)))
    raise _Unknown


def _col(c):
    if type(c) is not Col:
        raise _Unknown
    target = c.target
    return (c.alias, target.model._meta.label, target.attname,
            type(c.output_field).__name__)


def _node(n):
    if isinstance(n, WhereNode):
        if type(n) is not WhereNode:
            raise _Unknown
        return (n.connector, n.negated, tuple(_node(c) for c in n.children))
    if isinstance(n, Lookup):
        t = type(n)
        return (t.__module__, t.__qualname__, _col(n.lhs), _value(n.rhs))
    raise _Unknown


def _order(items):
    out = []
    for o in items:
        if type(o) is not str:
            raise _Unknown
        out.append(o)
    return tuple(out)


def fingerprint(qs):
    """A hashable description of ``qs`` that determines its SQL, or None."""
    q = qs.query
    if (q.annotations or q.extra or q.combinator or q.group_by is not None
            or q.distinct_fields or q.extra_order_by or q.filter_is_sticky
            or (q.select and not q.values_select) or q.select_for_update
            or getattr(q, "explain_info", None) or q.subquery or q.extra_tables):
        return None
    try:
        joins = []
        for alias, j in q.alias_map.items():
            if q.alias_refcount.get(alias, 0) == 0 and alias != q.base_table:
                continue
            if getattr(j, "filtered_relation", None) is not None:
                return None
            field = getattr(j, "join_field", None)
            joins.append((alias, j.table_name, getattr(j, "join_type", None),
                          getattr(j, "parent_alias", None),
                          None if field is None else (type(field).__name__,
                                                      getattr(field, "name", None),
                                                      str(getattr(field, "model", "")))))
        where = _node(q.where)
        order = _order(q.order_by)
    except _Unknown:
        return None
    deferred, defer = q.deferred_loading
    related = q.select_related if isinstance(q.select_related, bool) else repr(q.select_related)
    return (q.model._meta.label, tuple(joins), where, order, q.default_ordering,
            q.standard_ordering, q.low_mark, q.high_mark, q.distinct, related,
            tuple(sorted(deferred)), defer, tuple(q.values_select), qs._fields,
            qs._iterable_class.__qualname__)
