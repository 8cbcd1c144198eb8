"""Running the package's progress generators (analysis, training, cohort, evaluation)."""

from __future__ import annotations

from typing import Any, Callable, Generator


def drain(gen: Generator[Any, None, Any], on_event: Callable[[Any], None] | None = None) -> Any:
    """Run ``gen`` to the end, passing each event to ``on_event``; return its return value."""
    while True:
        try:
            event = next(gen)
        except StopIteration as stop:
            return stop.value
        if on_event is not None:
            on_event(event)


def collect(gen: Generator[Any, None, Any]) -> tuple[list[Any], Any]:
    """Run ``gen`` to the end; return (all its events, its return value)."""
    events: list[Any] = []
    value = drain(gen, events.append)
    return events, value
