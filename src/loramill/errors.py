"""The error tree every layer speaks.

Adapters translate boto, Kafka, AMQP and SQL errors into these classes; the worker turns them into
job events (``error.code`` / ``error.message``) and the API into HTTP statuses. ``code`` is stable:
clients match on it.
"""

from __future__ import annotations


class LoramillError(Exception):
    """Base of every error loramill raises on purpose."""

    code = "internal_error"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field

    def to_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class InvalidInput(LoramillError):
    """The request, a file or an option is wrong; retrying the same input cannot help."""

    code = "invalid_input"


class QuotaExceeded(InvalidInput):
    """A user's files would take more storage than ``LORAMILL_USER_STORAGE_BYTES`` allows; free some first."""

    code = "storage_quota_exceeded"


class NotFound(LoramillError):
    """A job, LoRA, model or storage key does not exist (or belongs to someone else)."""

    code = "not_found"


class Conflict(LoramillError):
    """The request contradicts the current state (a terminal job, an id already used differently)."""

    code = "conflict"


class DependencyMissing(LoramillError):
    """An optional package is not installed; the message says how to install it."""

    code = "dependency_missing"


class UnsupportedHardware(LoramillError):
    """The option needs hardware this machine lacks (CUDA for bf16, fp16, 8-bit AdamW)."""

    code = "unsupported_hardware"


class OutOfMemory(LoramillError):
    """The device ran out of memory for this work (too many images, too large a size); the message says what to
    ask for instead. Not the input's fault, and the same request on the same device fails again."""

    code = "out_of_memory"


class TransientError(LoramillError):
    """A storage, broker or database hiccup: the same work may succeed if retried later."""

    code = "transient"
    retryable = True


class Canceled(LoramillError):
    """The job was canceled by its owner."""

    code = "canceled"


class Overloaded(LoramillError):
    """The queue is over its configured limit; come back later."""

    code = "overloaded"
    retryable = True
