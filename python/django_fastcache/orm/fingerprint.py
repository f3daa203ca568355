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

from django.db.models import Model
from django.db.models.expressions import Col
from django.db.models.lookups import Lookup
from django.db.models.sql.datastructures import BaseTable
from django.db.models.sql.where import WhereNode

__all__ = ["arguments", "fingerprint"]

_PLAIN = frozenset((str, int, float, bool, type(None), datetime.datetime, datetime.date,
                    datetime.time, datetime.timedelta, uuid.UUID, bytes))

# Fingerprints are compared as Python values (the key of a query shape is memoized on
# them), so every value carries its type: 1, 1.0 and True are equal in Python and not in
# SQL. Types, models and lookup classes appear as themselves: their repr, which the key's
# digest is made of, names their module and class, the same in every process.


class _Unknown(Exception):
    pass


def _value(v):
    t = type(v)
    if t in _PLAIN:
        return (t, v)
    if t is decimal.Decimal:
        return (t, str(v))  # Decimal("1.0") == Decimal("1.00"), their parameters differ
    if t is list or t is tuple:
        return ("seq", tuple([_value(x) for x in v]))
    if t is set or t is frozenset:
        return ("set", tuple(sorted([_value(x) for x in v], key=repr)))
    raise _Unknown


def _col(c):
    if type(c) is not Col:
        raise _Unknown
    target = c.target
    return (c.alias, target.model, target.attname, type(c.output_field))


def _node(n):
    t = type(n)
    if t is WhereNode:
        return (n.connector, n.negated, tuple([_node(c) for c in n.children]))
    if isinstance(n, Lookup):
        return (t, _col(n.lhs), _value(n.rhs))
    raise _Unknown


def _order(items):
    for o in items:
        if type(o) is not str:
            raise _Unknown
    return tuple(items)


def fingerprint(qs):
    """A hashable description of ``qs`` that determines its SQL, or None."""
    deferred = qs.__dict__.get("_fc_lazy")
    if deferred is not None:  # filters not applied yet (lazy.py): what they apply to, and them
        return ("lazy", deferred[2])
    q = qs.query
    if (q.annotations or q.extra or q.combinator or q.group_by is not None
            or q.distinct_fields or q.extra_order_by or q.filter_is_sticky
            or (q.select and not q.values_select) or q.select_for_update
            or getattr(q, "explain_info", None) or q.subquery or q.extra_tables):
        return None
    try:
        joins = []
        refcount = q.alias_refcount
        base = True  # the first alias is the base table (Query.base_table, which is a
        # cached_property: reading it on a query with no alias yet would pin None)
        for alias, j in q.alias_map.items():
            if not base and refcount.get(alias, 0) == 0:
                continue
            base = False
            if type(j) is BaseTable:
                joins.append((alias, j.table_name))
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
    return (q.model, tuple(joins), where, order, q.default_ordering,
            q.standard_ordering, q.low_mark, q.high_mark, q.distinct, related,
            tuple(sorted(deferred)) if deferred else (), defer, tuple(q.values_select),
            qs._fields, qs._iterable_class)


def arguments(kwargs: dict):
    """A hashable description of keyword lookups (``get(pk=1, author=a)``) with plain
    values or saved model instances, or None."""
    try:
        out = []
        for name, v in sorted(kwargs.items()):
            if isinstance(v, Model):
                pk = v.pk
                if pk is None:
                    return None
                out.append((name, ("obj", type(v), _value(pk))))
            else:
                out.append((name, _value(v)))
    except _Unknown:
        return None
    return tuple(out)
