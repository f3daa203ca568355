"""``manage.py fastcache_stats`` and ``manage.py fastcache_keys``."""
