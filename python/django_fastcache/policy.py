"""The one place that decides what a Redis error does: a circuit breaker, and the failure
policy every Redis call of a cache goes through (serve a miss / drop the write and log, or
raise :class:`~django_fastcache.errors.ConnectionInterrupted`)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .errors import interrupted

__all__ = [
    "TIMEOUT_ERRORS",
    "TRANSIENT_ERRORS",
    "CircuitBreaker",
    "FailurePolicy",
    "policy_from_options",
]

T = TypeVar("T")

try:
    from redis import exceptions as _rx
except ImportError:  # the policy still covers plain socket errors without redis-py
    _rx = None

# Errors that mean "Redis is not serving us right now": refused, reset, timed out, still
# loading its dataset, a replica that became read-only after a failover, a cluster that is
# down or resharding. ``OSError`` covers socket errors redis-py lets through (and the
# builtin ``TimeoutError``). Anything else (a WRONGTYPE reply, a bad argument) is a bug
# the caller must see, so it propagates untouched.
if _rx is not None:
    TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
        _rx.ConnectionError,  # includes BusyLoadingError, MasterNotFoundError
        _rx.TimeoutError,
        _rx.ReadOnlyError,
        _rx.ClusterError,  # includes ClusterDownError, MasterDownError
        _rx.TryAgainError,
        _rx.SlotNotCoveredError,
        OSError,
        asyncio.TimeoutError,
    )
    # A full client-side pool says nothing about the server: it is served like an error but
    # does not count towards opening the breaker.
    _LOCAL_ERRORS: tuple[type[BaseException], ...] = (_rx.MaxConnectionsError,)
    # The server answered (with an error reply): proof that it is up.
    _ANSWERED: tuple[type[BaseException], ...] = (_rx.ResponseError,)
    # The server did not answer in time: it may hang (SIGSTOP, swapping, a long script).
    TIMEOUT_ERRORS: tuple[type[BaseException], ...] = (
        _rx.TimeoutError, TimeoutError, asyncio.TimeoutError)
else:
    TIMEOUT_ERRORS = (TimeoutError, asyncio.TimeoutError)
    TRANSIENT_ERRORS = (OSError, asyncio.TimeoutError)
    _LOCAL_ERRORS = ()
    _ANSWERED = ()

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    """Counts consecutive failures of calls to one server and stops calling it for a while.

    closed -> open after ``failure_threshold`` consecutive failures (0 disables the
    breaker), or straight to half-open on a timeout (see :meth:`record_failure`); while
    open, :meth:`allow` returns False; ``reset_timeout`` seconds after opening it is
    half-open: the first :meth:`allow` gets True (the trial call) and the others False
    until that trial reports. A success closes it, a failure re-opens it for another
    ``reset_timeout``. A trial that never reports expires after ``trial_timeout``
    (at least ``reset_timeout``: a trial may reconnect) and the next caller gets the
    trial; :meth:`abandon_trial` releases it at once.
    Any success closes the breaker: a reply from the server is proof it is up.

    Thread-safe. :meth:`allow` on a closed breaker is one attribute read;
    :meth:`record_success` on a closed breaker two. Transitions and counters are updated
    under a lock. ``timer`` is the clock (seconds, monotonic); tests pass a fake one.
    """

    __slots__ = (
        "failure_threshold", "reset_timeout", "timer", "failures", "short_circuited",
        "opens", "suspected", "trial_timeout", "_tripped", "_consecutive", "_opened_at",
        "_trial_at", "_lock",
    )

    def __init__(self, failure_threshold: int = 5, reset_timeout: float = 1.0,
                 timer: Callable[[], float] = time.monotonic,
                 trial_timeout: float | None = None) -> None:
        if not isinstance(failure_threshold, int) or failure_threshold < 0:
            raise ValueError(f"failure_threshold must be an int >= 0, not {failure_threshold!r}")
        if not isinstance(reset_timeout, (int, float)) or not reset_timeout > 0:
            raise ValueError(f"reset_timeout must be a number > 0, not {reset_timeout!r}")
        self.failure_threshold = failure_threshold
        self.reset_timeout = float(reset_timeout)
        #: How long a trial may be in flight before another caller gets one (a trial
        #: that reconnects may take a connect timeout and a few read timeouts).
        self.trial_timeout = max(self.reset_timeout, float(trial_timeout or 0.0))
        self.timer = timer
        self.failures = 0  #: failures recorded, in any state
        self.short_circuited = 0  #: calls refused by allow()
        self.opens = 0  #: closed -> open transitions (outages), re-opens not counted
        self.suspected = 0  #: of which: tripped at once by a timeout
        self._tripped = False  # open or half-open
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_at: float | None = None
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May a call go to the server now? False means: do not touch the socket."""
        if not self._tripped:
            return True
        return self._allow_tripped()

    def _allow_tripped(self) -> bool:
        now = self.timer()
        with self._lock:
            if not self._tripped:
                return True
            if now - self._opened_at < self.reset_timeout or (
                self._trial_at is not None and now - self._trial_at < self.trial_timeout
            ):
                self.short_circuited += 1
                return False
            self._trial_at = now
            return True

    def record_success(self) -> bool:
        """Report a call the server answered; True if this closed the breaker."""
        if not self._tripped:
            if self._consecutive:
                self._consecutive = 0
            return False
        with self._lock:
            if not self._tripped:
                return False
            self._tripped = False
            self._consecutive = 0
            self._trial_at = None
            return True

    def record_failure(self, exc: BaseException | None = None) -> bool:
        """Report a call that failed to reach the server; True if this opened the breaker
        from closed (a failed trial re-opens it and returns False).

        A timeout (``exc`` one of :data:`TIMEOUT_ERRORS`) trips the breaker at once, half
        open: a server that hangs costs a socket timeout per call, so after the first one
        every thread of the process is short-circuited while one trial call at a time
        finds out whether it answers again. Refused connections cost microseconds and
        count towards ``failure_threshold`` as before."""
        now = self.timer()
        with self._lock:
            self.failures += 1
            self._consecutive += 1
            if self._tripped:
                if self._trial_at is not None:
                    self._opened_at = now
                    self._trial_at = None
                return False
            if self.failure_threshold and exc is not None and isinstance(exc, TIMEOUT_ERRORS):
                self._tripped = True
                self._opened_at = now - self.reset_timeout  # half-open: the next call tries
                self._trial_at = None
                self.opens += 1
                self.suspected += 1
                return True
            if self.failure_threshold and self._consecutive >= self.failure_threshold:
                self._tripped = True
                self._opened_at = now
                self._trial_at = None
                self.opens += 1
                return True
            return False

    def abandon_trial(self) -> None:
        """A call made while tripped ended without a verdict (an unrelated exception, a
        cancelled task): the next caller may make the trial at once."""
        with self._lock:
            self._trial_at = None

    @property
    def state(self) -> str:
        """``"closed"``, ``"open"`` or ``"half_open"`` (a trial is due or in flight)."""
        if not self._tripped:
            return CLOSED
        return OPEN if self.timer() - self._opened_at < self.reset_timeout else HALF_OPEN

    @property
    def opened_at(self) -> float | None:
        """Timer value when the breaker last opened, or None while closed."""
        return self._opened_at if self._tripped else None

    def reset(self) -> None:
        """Close the breaker (counters are kept)."""
        with self._lock:
            self._tripped = False
            self._consecutive = 0
            self._trial_at = None

    def __repr__(self) -> str:
        return (f"<CircuitBreaker {self.state} failures={self.failures} "
                f"short_circuited={self.short_circuited} opens={self.opens}>")


class FailurePolicy:
    """Runs Redis calls for one cache and applies its failure policy.

    ``run(fn, *args, default=..., write=False, **kwargs)`` returns ``fn(*args, **kwargs)``.
    If ``fn`` raises one of :data:`TRANSIENT_ERRORS`, the failure is recorded on
    :attr:`breaker` and then, with ``ignore_exceptions``, ``default`` is returned (a read
    is a miss; a write is dropped and counted in :attr:`dropped_writes`) and a warning is
    logged, at most one line per ``log_interval`` seconds, which counts the ones it
    stands for; without ``ignore_exceptions``,
    :class:`~django_fastcache.errors.ConnectionInterrupted` is raised from the original
    error. While the breaker is open the same happens without calling ``fn`` at all, in
    microseconds. Other exceptions propagate unchanged (an error reply still counts as a
    success for the breaker: the server answered). :meth:`arun` is the same for
    coroutine functions.

    Thread-safe; the success path costs two breaker attribute reads around the call.
    """

    def __init__(self, ignore_exceptions: bool = True, log_interval: float = 30.0,
                 logger: logging.Logger | None = None, *, breaker: CircuitBreaker | None = None,
                 name: str = "default", timer: Callable[[], float] | None = None) -> None:
        self.ignore_exceptions = ignore_exceptions
        self.log_interval = float(log_interval)
        self.logger = logger or logging.getLogger("django_fastcache.redis")
        self.breaker = breaker if breaker is not None else CircuitBreaker(
            timer=timer or time.monotonic)
        self.timer = timer or self.breaker.timer
        self.name = name
        self.errors = 0  #: calls that reached for Redis and failed
        self.dropped_writes = 0  #: writes not performed (failed or short-circuited), when ignoring
        self.last_error: BaseException | None = None
        self._suppressed = 0
        self._refused_since_log = 0
        self._next_log_at = float("-inf")
        self._lock = threading.Lock()
        #: Called (no arguments) after each transient error, e.g. by the coherent L1, which
        #: can no longer be sure it heard of every write.
        self.on_transient_error: list[Callable[[], None]] = []

    @property
    def short_circuited(self) -> int:
        """Calls answered without touching Redis because the breaker was open."""
        return self.breaker.short_circuited

    def run(self, fn: Callable[..., T], /, *args: Any, default: Any = None, write: bool = False,
            **kwargs: Any) -> T | Any:
        breaker = self.breaker
        if not breaker.allow():
            return self._refused(default, write)
        try:
            result = fn(*args, **kwargs)
        except _LOCAL_ERRORS as exc:
            return self._failed(exc, default, write, count=False)
        except TRANSIENT_ERRORS as exc:
            return self._failed(exc, default, write, count=True)
        except _ANSWERED:
            self._succeeded()
            raise
        except BaseException:
            if breaker._tripped:
                breaker.abandon_trial()
            raise
        if breaker._tripped or breaker._consecutive:
            self._succeeded()
        return result

    async def arun(self, fn: Callable[..., Awaitable[T]], /, *args: Any, default: Any = None,
                   write: bool = False, **kwargs: Any) -> T | Any:
        breaker = self.breaker
        if not breaker.allow():
            return self._refused(default, write)
        try:
            result = await fn(*args, **kwargs)
        except _LOCAL_ERRORS as exc:
            return self._failed(exc, default, write, count=False)
        except TRANSIENT_ERRORS as exc:
            return self._failed(exc, default, write, count=True)
        except _ANSWERED:
            self._succeeded()
            raise
        except BaseException:  # CancelledError included
            if breaker._tripped:
                breaker.abandon_trial()
            raise
        if breaker._tripped or breaker._consecutive:
            self._succeeded()
        return result

    def _succeeded(self) -> None:
        if self.breaker.record_success():
            self.logger.info("cache %r: Redis answers again; circuit breaker closed", self.name)

    def _refused(self, default: Any, write: bool) -> Any:
        with self._lock:
            self._refused_since_log += 1
            if write and self.ignore_exceptions:
                self.dropped_writes += 1
        if not self.ignore_exceptions:
            raise interrupted(
                f"cache {self.name!r}: Redis unavailable, circuit breaker open "
                f"(last error: {self.last_error!r})")
        return default

    def _failed(self, exc: BaseException, default: Any, write: bool, count: bool) -> Any:
        opened = self.breaker.record_failure(exc) if count else False
        if count:
            for callback in self.on_transient_error:
                callback()
        now = self.timer()
        with self._lock:
            self.errors += 1
            self.last_error = exc
            if write and self.ignore_exceptions:
                self.dropped_writes += 1
            log = self.ignore_exceptions and (opened or now >= self._next_log_at)
            if log:
                suppressed, self._suppressed = self._suppressed, 0
                refused, self._refused_since_log = self._refused_since_log, 0
                self._next_log_at = now + self.log_interval
            elif self.ignore_exceptions:
                self._suppressed += 1
        if log:
            self.logger.warning(
                "cache %r: Redis error (%s: %s), %s%s; %d more errors and %d short-circuited "
                "calls since the last report",
                self.name, type(exc).__name__, exc,
                "write dropped" if write else "read served as a miss",
                ", circuit breaker opened" if opened else "", suppressed, refused,
            )
        elif opened:
            self.logger.warning(
                "cache %r: circuit breaker opened after %d consecutive Redis errors (last: %r)",
                self.name, self.breaker.failure_threshold, exc)
        if not self.ignore_exceptions:
            raise interrupted(f"cache {self.name!r}: Redis error: {exc}", exc) from exc
        return default

    def stats(self) -> dict[str, Any]:
        breaker = self.breaker
        return {
            "errors": self.errors,
            "dropped_writes": self.dropped_writes,
            "short_circuited": breaker.short_circuited,
            "breaker_state": breaker.state,
            "breaker_opens": breaker.opens,
            "breaker_suspected": breaker.suspected,
            "breaker_failures": breaker.failures,
        }


def policy_from_options(options: Mapping[str, Any], name: str = "default",
                        logger: logging.Logger | None = None,
                        timer: Callable[[], float] = time.monotonic) -> FailurePolicy:
    """The :class:`FailurePolicy` a cache's ``OPTIONS`` ask for (``IGNORE_EXCEPTIONS``,
    ``ERROR_LOG_INTERVAL``, ``CIRCUIT_BREAKER_THRESHOLD``, ``CIRCUIT_BREAKER_RESET_TIMEOUT``);
    ``ImproperlyConfigured`` naming the option for a bad value."""
    from ._config import option_bool, option_int, option_number

    # A trial may reconnect: a connect timeout, then the handshake and the command.
    socket = option_number(options, "SOCKET_TIMEOUT", 1.0, allow_none=True) or 0.0
    connect = option_number(options, "SOCKET_CONNECT_TIMEOUT", 1.0, allow_none=True) or 0.0
    breaker = CircuitBreaker(
        failure_threshold=option_int(options, "CIRCUIT_BREAKER_THRESHOLD", 5, minimum=0),
        reset_timeout=option_number(options, "CIRCUIT_BREAKER_RESET_TIMEOUT", 1.0),
        timer=timer, trial_timeout=connect + 3 * socket,
    )
    return FailurePolicy(
        ignore_exceptions=option_bool(options, "IGNORE_EXCEPTIONS", True),
        log_interval=option_number(options, "ERROR_LOG_INTERVAL", 30.0, positive=False),
        logger=logger, breaker=breaker, name=name, timer=timer,
    )
