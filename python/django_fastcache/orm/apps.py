"""The Django app: validates the settings and installs the queryset methods and the
invalidation receivers at start-up."""

from django.apps import AppConfig


class OrmCacheConfig(AppConfig):
    name = "django_fastcache.orm"
    label = "fastcache_orm"
    verbose_name = "django-fastcache ORM cache"

    def ready(self) -> None:
        from . import conf, invalidation, query

        conf.validate()
        query.install()
        invalidation.connect()
