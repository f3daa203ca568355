# Type stubs for the private extension module django_fastcache._core. Each area keeps to
# its own section.

# --- log
from collections.abc import Callable, Mapping
from typing import Any

class LogEncoder:
    """JSON encoder and record formatter behind django_fastcache.log.JsonFormatter."""

    def __init__(
        self,
        ensure_ascii: bool,
        indent: str | None,
        default: Callable[[Any], Any],
        fast_types: Mapping[type, int],
        redact_keys: list[str],
        redact_values: int,
        redacted: str,
        circular: str,
        too_deep: str,
        max_depth: int,
    ) -> None: ...
    def configure_record(
        self,
        template: dict[Any, Any],
        required: list[tuple[Any, str]],
        rename: dict[Any, Any],
        skip: frozenset[Any],
        context_var: Any,
        timestamp_key: str | None,
        keep_missing: list[Any],
        prefix: str,
        needs_asctime: bool,
        noscan: frozenset[Any],
        request_key: str | None,
    ) -> None: ...
    def dumps(self, obj: Any, noscan: frozenset[Any] | None = ...) -> str: ...
    def add_fields(
        self, formatter: Any, log_data: dict[Any, Any], record: Any, message_dict: dict[Any, Any]
    ) -> None: ...
    def format(self, formatter: Any, record: Any) -> str: ...

def format_float_repr(value: float) -> str: ...
def find_redaction_spans(text: str, patterns: int) -> list[tuple[int, int]]: ...
