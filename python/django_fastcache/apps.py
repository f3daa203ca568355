"""The Django app of django-fastcache. Adding ``"django_fastcache"`` to ``INSTALLED_APPS``
is optional for the cache backend; it registers the system checks (rates, throttle stores,
cache and session set-ups) at start-up and the management commands (``fastcache_stats``,
``fastcache_keys``)."""

from django.apps import AppConfig


class FastCacheConfig(AppConfig):
    name = "django_fastcache"
    verbose_name = "django-fastcache"

    def ready(self) -> None:
        # Importing registers the checks with Django's check framework.
        from . import checks, limiter  # noqa: F401
        from .log import install_integrations

        install_integrations()
