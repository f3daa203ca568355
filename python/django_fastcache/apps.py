"""The Django app of django-fastcache. Adding ``"django_fastcache"`` to ``INSTALLED_APPS``
is optional for the cache backend; it registers the system checks (rates, throttle stores)
at start-up and the management commands."""

from django.apps import AppConfig


class FastCacheConfig(AppConfig):
    name = "django_fastcache"
    verbose_name = "django-fastcache"

    def ready(self) -> None:
        # Importing registers the checks with Django's check framework.
        from . import limiter  # noqa: F401
