"""A sensor's cursor as a typed value: its whole state, read from and written to JSON here alone.

A cursor that does not validate as its type (garbled, hand-edited, or written by another version) is
logged as a warning naming the sensor and what starting afresh means for it, and read as no cursor.
"""

from typing import Any, Generic, TypeVar

import dagster as dg
from pydantic import TypeAdapter, ValidationError

State = TypeVar("State")


class Cursor(Generic[State]):
    """How one sensor keeps its `State` (any type pydantic validates: dataclasses, dicts, ...)."""

    def __init__(self, sensor: str, state: Any, afresh: str):
        """`state`: the type of the state; `afresh`: what the sensor does when it starts without one."""
        self.sensor, self.afresh = sensor, afresh
        self._adapter: TypeAdapter[State] = TypeAdapter(state)

    def read(self, context: dg.SensorEvaluationContext) -> State | None:
        """The state in the context's cursor; None without a cursor, or (warned) with an unreadable one."""
        if not context.cursor:
            return None
        try:
            return self._adapter.validate_json(context.cursor)
        except ValidationError as error:
            context.log.warning(
                f"{self.sensor}: unreadable cursor ({error.error_count()} error(s), first: "
                f"{error.errors()[0]['msg']}), starting afresh: {self.afresh}"
            )
            return None

    def dump(self, state: State) -> str:
        return self._adapter.dump_json(state).decode()
