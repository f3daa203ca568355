"""What a query depends on: for each table it reads, the disjunction of conjunctions of
``column = value`` conditions its WHERE clause puts on that table (DNF).

The analysis is conservative: a condition it does not understand (a range, ``isnull``, a
negation, an expression, a subquery) is replaced by "true", which only widens the set of
rows the query is said to depend on, so an invalidation is never missed, at worst one
more entry is dropped. Tables reached only through subqueries or annotations are
whole-table dependencies.
"""

from __future__ import annotations

import re
from itertools import product

from django.db.models.expressions import Col
from django.db.models.lookups import Exact, In
from django.db.models.sql.query import Query
from django.db.models.sql.where import AND, OR, WhereNode

from ..decorators import stable_key

__all__ = ["conj_tag", "dependencies", "epoch_tag", "query_tags", "whole_tag"]

# cacheops' CACHEOPS_LONG_DISJUNCTION: an ``__in`` with more values, or a DNF with more
# conjunctions than this per table, depends on the whole table instead.
LONG_DISJUNCTION = 8
MAX_CONJUNCTIONS = 64
_SAFE = re.compile(r"^[\w.$-]{1,100}$")
TRUE = frozenset()


def _table_name(table: str) -> str:
    return table if _SAFE.match(table) else "h" + stable_key(table)


def epoch_tag(table: str) -> str:
    """Moved only by invalidate_model/invalidate_all: every entry reading ``table``."""
    return f"orm:e:{_table_name(table)}"


def whole_tag(table: str) -> str:
    """Moved by every write to ``table``: entries depending on all of its rows."""
    return f"orm:w:{_table_name(table)}"


def encode(value) -> str:
    """The canonical text of a condition's value; TypeError if it has none."""
    return stable_key(value)


def conj_tag(table: str, columns: tuple, values: tuple) -> str:
    """The counter of the conjunction ``columns = values`` (columns sorted)."""
    return f"orm:c:{_table_name(table)}:{stable_key(columns, tuple(map(encode, values)))}"


def _leaf(node, alias: str):
    """A conjunction for a simple equality on ``alias``, else None (meaning "true")."""
    if isinstance(node, Exact) and not isinstance(node, In):
        lhs, rhs = node.lhs, node.rhs
        if type(lhs) is Col and lhs.alias == alias and not hasattr(rhs, "resolve_expression"):
            try:
                encode(rhs)
            except TypeError:
                return None
            return [frozenset({(lhs.target.column, rhs)})]
    elif isinstance(node, In):
        lhs, rhs = node.lhs, node.rhs
        if (type(lhs) is Col and lhs.alias == alias and isinstance(rhs, (list, tuple, set))
                and 0 < len(rhs) <= LONG_DISJUNCTION):
            try:
                for v in rhs:
                    encode(v)
            except TypeError:
                return None
            return [frozenset({(lhs.target.column, v)}) for v in rhs]
    return None


def _dnf(node, alias: str) -> list:
    """The DNF of ``node`` restricted to conditions on ``alias`` (a list of frozensets of
    (column, value); ``[TRUE]`` when nothing narrows it)."""
    if isinstance(node, WhereNode):
        if node.negated:
            return [TRUE]
        parts = [_dnf(child, alias) for child in node.children]
        if not parts:
            return [TRUE]
        if node.connector == OR:
            out = [c for p in parts for c in p]
        else:
            assert node.connector == AND
            out = [TRUE]
            for p in parts:
                out = [a | b for a, b in product(out, p)]
                if len(out) > MAX_CONJUNCTIONS:
                    return [TRUE]
        if TRUE in out or len(out) > MAX_CONJUNCTIONS:
            return [TRUE]
        return list(dict.fromkeys(out))
    leaf = _leaf(node, alias)
    return [TRUE] if leaf is None else leaf


def _subquery_tables(expr, out: set, seen: set) -> None:
    """Tables of every Query nested in ``expr`` (subqueries), whole."""
    if id(expr) in seen:
        return
    seen.add(id(expr))
    if isinstance(expr, Query):
        for join in expr.alias_map.values():
            out.add(join.table_name)
        _subquery_tables(expr.where, out, seen)
        for a in expr.annotations.values():
            _subquery_tables(a, out, seen)
        return
    inner = getattr(expr, "query", None)
    if isinstance(inner, Query):
        _subquery_tables(inner, out, seen)
    for attr in ("lhs", "rhs"):
        v = getattr(expr, attr, None)
        if v is not None and not isinstance(v, (str, bytes, int, float)):
            _subquery_tables(v, out, seen)
    children = getattr(expr, "children", None)
    if isinstance(children, list):
        for c in children:
            _subquery_tables(c, out, seen)
    if hasattr(expr, "get_source_expressions"):
        try:
            sources = expr.get_source_expressions()
        except Exception:  # noqa: BLE001 - an expression that cannot list its sources
            sources = []
        for s in sources:
            if s is not None:
                _subquery_tables(s, out, seen)
    if isinstance(expr, (list, tuple)):
        for v in expr:
            _subquery_tables(v, out, seen)


def _cols(expr, out: set) -> None:
    if isinstance(expr, Col):
        out.add(expr.alias)
        return
    for s in getattr(expr, "get_source_expressions", lambda: [])():
        if s is not None:
            _cols(s, out)


def dependencies(query: Query, compiler=None) -> dict[str, list]:
    """{table: DNF} for every table ``query`` reads. Joins Django set up and trimmed stay
    in the alias map with no references: only referenced aliases count, plus those the
    compiled SELECT reads (select_related joins, pass the ``compiler`` that compiled it).
    A table joined under several aliases, or reached through a subquery, depends whole."""
    deps: dict[str, list] = {}
    by_table: dict[str, list] = {}
    used = {a for a, n in query.alias_refcount.items() if n > 0}
    if query.alias_map:
        used.add(query.base_table)
    if compiler is not None and compiler.select:
        for expr, _, _ in compiler.select:
            _cols(expr, used)
    for alias, join in query.alias_map.items():
        if alias not in used:
            continue
        by_table.setdefault(join.table_name, []).append(alias)
    for table, aliases in by_table.items():
        deps[table] = [TRUE] if len(aliases) > 1 else _dnf(query.where, aliases[0])
    nested: set = set()
    seen: set = set()
    _subquery_tables(query.where, nested, seen)
    for a in query.annotations.values():
        _subquery_tables(a, nested, seen)
    if query.combined_queries:
        for q in query.combined_queries:
            for t, d in dependencies(q).items():
                deps[t] = [TRUE] if t in deps and deps[t] != d else d
    for t in nested:
        deps[t] = [TRUE]
    return deps


def query_tags(deps: dict[str, list]) -> tuple[tuple, dict]:
    """The counters an entry with dependencies ``deps`` is stored under, and the schemas
    (sorted column tuples) to register per table."""
    tags: list[str] = []
    schemas: dict[str, set] = {}
    for table, dnf in deps.items():
        tags.append(epoch_tag(table))
        for conj in dnf:
            if not conj:
                tags.append(whole_tag(table))
                continue
            items = sorted(conj, key=lambda cv: cv[0])
            cols = tuple(c for c, _ in items)
            if len(set(cols)) != len(cols):
                continue  # col = a AND col = b: matches no row, depends on none
            schemas.setdefault(table, set()).add(cols)
            tags.append(conj_tag(table, cols, tuple(v for _, v in items)))
    return tuple(sorted(set(tags))), schemas
