"""Model-driven invalidation: ``invalidate_on_change(Model, tags=...)`` moves cache tags
when rows of a model are saved, deleted, or their many-to-many relations change, once
the transaction commits (``transaction.on_commit``), never before: a reader that fills
the cache between the write and the commit would otherwise cache the old rows again.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from django.core.cache import caches
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.db.models.signals import m2m_changed, post_delete, post_save

from . import tags as _tags

__all__ = ["ModelInvalidation", "invalidate_on_change"]

_ids = itertools.count()


class _Attributes(dict):
    """``str.format_map`` mapping reading the instance's attributes (``{author_id}``)."""

    def __init__(self, instance) -> None:
        super().__init__()
        self.instance = instance

    def __missing__(self, name: str):
        try:
            return getattr(self.instance, name)
        except AttributeError:
            raise ValueError(f"invalidate_on_change: tag template names {name!r}, which "
                             f"{type(self.instance).__name__} does not have") from None


class ModelInvalidation:
    """The receivers connected by :func:`invalidate_on_change`; ``disconnect()`` removes
    them. Tags are computed when the signal fires (from the instance as saved) and
    invalidated after commit, on the database alias the signal names."""

    def __init__(self, model, tags, cache: str) -> None:
        self.model = model
        self.cache_alias = cache
        if callable(tags):
            self._tags_fn, self._static, self._templates = tags, (), []
        else:
            tags = (tags,) if isinstance(tags, str) else tuple(tags)
            if not tags:
                raise ValueError("invalidate_on_change needs at least one tag")
            self._tags_fn = None
            self._templates = [t for t in tags if "{" in t]
            self._static = _tags.normalize([t for t in tags if "{" not in t])
        self._uid = f"django_fastcache.invalidation:{next(_ids)}"
        self._through: list = []
        self._pre_clear: dict[int, list] = {}

    def tags_for(self, instance) -> tuple[str, ...]:
        if self._tags_fn is not None:
            got = self._tags_fn(instance)
            return _tags.normalize((got,) if isinstance(got, str) else got)
        extra = [t.format_map(_Attributes(instance)) for t in self._templates]
        return _tags.normalize([*self._static, *extra]) if extra else self._static

    def _schedule(self, tags: Iterable[str], using: str) -> None:
        tags = tuple(tags)
        if not tags:
            return
        cache = caches[self.cache_alias]
        # Outside an atomic block on_commit runs at once (autocommit already committed).
        transaction.on_commit(functools.partial(cache.invalidate_tags, *tags), using=using)

    # ------------------------------------------------------------------ receivers

    def _saved(self, sender, instance, using, **kwargs) -> None:
        self._schedule(self.tags_for(instance), using)

    def _m2m(self, sender, instance, action, reverse, model, pk_set, using, **kwargs) -> None:
        if isinstance(instance, self.model):
            if action in ("post_add", "post_remove", "post_clear"):
                self._schedule(self.tags_for(instance), using)
            return
        # The other side changed: ``pk_set`` names our rows (on clear, read them first).
        if model is not self.model:
            return
        if action == "pre_clear":
            if self._instance_dependent():
                field = self._field_towards(sender, type(instance))
                self._pre_clear[id(instance)] = list(
                    self.model._default_manager.using(using).filter(**{field: instance}))
            return
        if action not in ("post_add", "post_remove", "post_clear"):
            return
        if not self._instance_dependent():
            self._schedule(self._static, using)
            return
        if action == "post_clear":
            rows = self._pre_clear.pop(id(instance), [])
        else:
            rows = list(self.model._default_manager.using(using).filter(pk__in=pk_set or ()))
        self._schedule(sorted({t for row in rows for t in self.tags_for(row)}), using)

    def _instance_dependent(self) -> bool:
        return self._tags_fn is not None or bool(self._templates)

    def _field_towards(self, through, other) -> str:
        """The lookup from our model to ``other`` through the m2m table ``through``."""
        for field in self.model._meta.get_fields():
            if (field.many_to_many and getattr(field, "remote_field", None) is not None
                    and _through(field) is through and field.related_model is other):
                return field.name  # a reverse relation's name is its query name
        raise ImproperlyConfigured(f"no many-to-many from {self.model.__name__} through "
                                   f"{through.__name__}")

    # ------------------------------------------------------------------ wiring

    def connect(self) -> ModelInvalidation:
        post_save.connect(self._saved, sender=self.model, weak=False,
                          dispatch_uid=self._uid + ":save")
        post_delete.connect(self._saved, sender=self.model, weak=False,
                            dispatch_uid=self._uid + ":delete")
        for field in self.model._meta.get_fields():
            if field.many_to_many:
                through = _through(field)
                if through is not None and through not in self._through:
                    self._through.append(through)
                    m2m_changed.connect(self._m2m, sender=through, weak=False,
                                        dispatch_uid=f"{self._uid}:m2m:{through._meta.label}")
        return self

    def disconnect(self) -> None:
        post_save.disconnect(sender=self.model, dispatch_uid=self._uid + ":save")
        post_delete.disconnect(sender=self.model, dispatch_uid=self._uid + ":delete")
        for through in self._through:
            m2m_changed.disconnect(sender=through,
                                   dispatch_uid=f"{self._uid}:m2m:{through._meta.label}")
        self._through = []


def _through(field):
    remote = getattr(field, "remote_field", None)
    through = getattr(remote, "through", None) if remote is not None else None
    if through is None:
        through = getattr(field, "through", None)
    return through if isinstance(through, type) else None


def invalidate_on_change(model, tags: Iterable[str] | str | Callable[[Any], Iterable[str]], *,
                         cache: str = "default") -> ModelInvalidation:
    """Invalidates ``tags`` in ``caches[cache]`` after a transaction that saved or deleted
    a ``model`` row, or changed one of its many-to-many relations (either side), commits.

    ``tags``: strings; templates formatted with the instance's attributes
    (``"author:{author_id}"``); or a callable taking the instance and returning tags.
    Returns the connection (``.disconnect()`` undoes it). Call it once, e.g. in an
    ``AppConfig.ready()``. ``QuerySet.update()``, ``bulk_create()`` and raw SQL send no
    signals: invalidate their tags yourself.
    """
    from django.conf import settings

    if cache not in settings.CACHES:
        raise ImproperlyConfigured(f"invalidate_on_change: cache {cache!r} is not in CACHES")
    return ModelInvalidation(model, tags, cache).connect()
