"""The one retry policy for transient errors: how often and how long to try (`RetrySettings`), and a
call tried again under it (`retried`), with tenacity.

Each back end says what is transient for it, in a predicate beside its code (the source, PostgreSQL,
DuckDB, BigQuery); this module says how often to try, how long to wait, and logs every retry once in the
run's log, naming what was tried, where, and which try. The defaults of each back end are below, in one
place (README: Reliability); dbt-duckdb's lock retries take theirs from `DUCKDB_LOCK`.
"""

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import dagster as dg
import tenacity
from pydantic import Field, PrivateAttr

T = TypeVar("T")


class RetrySettings(dg.Config):
    """How often and how long a call meeting transient errors is tried: waits grow from `first_wait`,
    doubling each try up to `max_wait`, each with up to `jitter` seconds added at random (writers that
    failed together do not all try again together); tries stop at `tries`, or when `budget` seconds
    have passed since the first (the last wait is cut short, so one more try comes at its end)."""

    tries: int | None = Field(
        default=5, ge=1, description="Tries in all, the first included; None: as many as the budget allows."
    )
    first_wait: float = Field(default=1.0, ge=0, description="Seconds before the second try.")
    max_wait: float = Field(default=30.0, ge=0, description="Longest wait between two tries, in seconds.")
    jitter: float = Field(default=1.0, ge=0, description="Up to this many seconds added to each wait.")
    budget: float | None = Field(
        default=None,
        ge=0,
        description="Seconds from the first try after which no try starts; None: no limit.",
    )


# Each back end's policy: the defaults above, but where a back end needs otherwise.
# A source down for up to five minutes heals within the download; longer, the step's retry policy takes it.
SOURCE_DOWNLOAD = RetrySettings(tries=None, first_wait=2.0, budget=330.0)
POSTGRES_WRITE = RetrySettings()
# One process at a time holds a DuckDB file: another's write of a month lasts seconds to a minute.
DUCKDB_LOCK = RetrySettings(tries=8)
BIGQUERY_WRITE = RetrySettings()


class RunLogged(dg.ConfigurableResource):
    """A resource that logs its retries in the run's log when it serves a run (its init context's
    log), and in its module's logger when it is used on its own."""

    _run_log: logging.Logger | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        self._run_log = context.log

    @property
    def log(self) -> logging.Logger:
        return self._run_log or logging.getLogger(type(self).__module__)


class RetriesExhausted(Exception):
    """Every try allowed met a transient error, the `last` its cause. The message names what was tried,
    where, how many tries over how long, and the last error as `describe` put it."""

    def __init__(self, message: str, last: BaseException):
        super().__init__(message)
        self.last = last


def class_and_message(error: BaseException) -> str:
    """An error as a retry names it by default: its class and message."""
    return f"{type(error).__name__}: {error}"


def retried(
    call: Callable[[], T],
    settings: RetrySettings,
    transient: Callable[[BaseException], bool],
    log: logging.Logger,
    what: str,
    where: str,
    describe: Callable[[BaseException], str] = class_and_message,
) -> T:
    """`call()`, tried again under `settings` while it raises an error `transient` accepts. Each retry
    is one warning in `log` (the run's: `context.log`, or a resource's `InitResourceContext.log`)
    naming `what` is tried, `where`, which try failed with what (`describe`, which must leave secrets
    out) and the wait. Any other error is raised as it is, at once; when the tries or the budget run
    out, RetriesExhausted from the last error."""
    started = time.monotonic()
    stop = tenacity.stop_never
    if settings.tries is not None:
        stop = tenacity.stop_after_attempt(settings.tries)
    if settings.budget is not None:
        stop = stop | tenacity.stop_after_delay(settings.budget)

    def wait(state: tenacity.RetryCallState) -> float:
        jittered = tenacity.wait_exponential_jitter(
            initial=settings.first_wait, max=settings.max_wait, jitter=settings.jitter
        )(state)
        if settings.budget is None:
            return jittered
        return max(0.0, min(jittered, settings.budget - (time.monotonic() - started)))

    def before_sleep(state: tenacity.RetryCallState) -> None:
        assert state.outcome is not None and state.next_action is not None
        error = state.outcome.exception()
        assert error is not None
        of = f" of {settings.tries}" if settings.tries is not None else ""
        log.warning(
            f"{what} ({where}): try {state.attempt_number}{of} failed with {describe(error)};"
            f" trying again in {state.next_action.sleep:.2f} s"
        )

    retrying = tenacity.Retrying(
        stop=stop, wait=wait, retry=tenacity.retry_if_exception(transient), before_sleep=before_sleep
    )
    try:
        return retrying(call)
    except tenacity.RetryError as gave_up:
        last = gave_up.last_attempt.exception()
        assert last is not None
        tries, seconds = gave_up.last_attempt.attempt_number, time.monotonic() - started
        limit = f"tries {settings.tries}" if settings.tries == tries else f"budget {settings.budget:g} s"
        raise RetriesExhausted(
            f"{what} ({where}): failed after {tries} {'try' if tries == 1 else 'tries'} over {seconds:.1f} s"
            f" ({limit}); the last: {describe(last)}",
            last,
        ) from last
