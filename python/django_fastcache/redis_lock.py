"""The lock of ``FastCache.lock()`` on Redis: redis-py's ``Lock`` raising this package's
errors."""

from __future__ import annotations

import redis.lock
from redis import exceptions as _rx

from .errors import LockError, LockNotOwnedError

__all__ = ["RedisLock"]


class RedisLock(redis.lock.Lock):
    """redis-py's lock, raising this package's :class:`LockError` /
    :class:`LockNotOwnedError` (as the in-process ``LocalLock`` does), so callers catch one
    hierarchy whichever tier is configured. Same thread safety as redis-py's ``Lock``."""

    def __enter__(self) -> RedisLock:
        try:
            return super().__enter__()
        except _rx.LockError as exc:
            raise LockError(f"could not acquire lock {self.name!r}") from exc

    def release(self) -> None:
        try:
            super().release()
        except _rx.LockError as exc:  # no token here, or the lock expired / changed hands
            raise LockNotOwnedError(f"cannot release lock {self.name!r}: not owned") from exc

    def extend(self, additional_time: float, replace_ttl: bool = False) -> bool:
        return self._owned_only(super().extend, additional_time, replace_ttl)

    def reacquire(self) -> bool:
        return self._owned_only(super().reacquire)

    def _owned_only(self, fn, *args):
        if self.local.token is None:
            raise LockNotOwnedError(f"cannot change lock {self.name!r}: not owned")
        try:
            return fn(*args)
        except _rx.LockNotOwnedError as exc:
            raise LockNotOwnedError(f"cannot change lock {self.name!r}: not owned") from exc
        except _rx.LockError as exc:  # e.g. a lock without a timeout cannot be extended
            raise LockError(str(exc)) from exc
