"""Retrying what a lost connection interrupted, with backoff, until the service is stopped."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_when_event_set,
    wait_exponential_jitter,
)

from unified_profile.cdc.errors import SinkError, SourceError

from .store.profile_store import StoreError

log = structlog.get_logger(__name__)

TRANSIENT = (SourceError, SinkError, StoreError)
"""Failures of a connection to another system: retrying later is safe and may succeed."""


def retry_transient(stop: threading.Event, what: str, action: Callable[[], None]) -> None:
    """Run ``action`` until it returns, retrying transient failures (0.5 s → 30 s backoff).

    Raises:
        The last transient error if ``stop`` is set while retrying; any other error at once.
    """
    def log_retry(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning("retrying", what=what, attempt=state.attempt_number, error=str(error),
                    next_in_s=round(state.upcoming_sleep, 1))

    def sleep(seconds: float) -> None:
        stop.wait(seconds)  # wakes early on shutdown

    retrying = Retrying(
        retry=retry_if_exception_type(TRANSIENT),
        wait=wait_exponential_jitter(multiplier=0.5, max=30),
        stop=stop_when_event_set(stop),
        sleep=sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    for attempt in retrying:
        with attempt:
            action()
