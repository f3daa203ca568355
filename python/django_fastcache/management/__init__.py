"""Management commands of django-fastcache."""
