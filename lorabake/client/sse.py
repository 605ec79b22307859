"""Server-sent events: a parser for the wire format, and a job's event stream that survives drops.

The stream reconnects with `Last-Event-ID` (the id of the last event it handed out), so after a dropped
connection, a server restart or an outage (503 + Retry-After) the caller sees every event once, in order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass

import httpx

from lorabake.client.errors import LorabakeAPIError, LorabakeConnectionError
from lorabake.client.models import Event

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})
MAX_BACKOFF_SECONDS = 10.0

# Opens the stream resuming after an event id (None: from the start); raises LorabakeAPIError on an error.
StreamOpener = Callable[[int | None], AbstractContextManager[httpx.Response]]
ReconnectHook = Callable[[int, Exception | None], None]


@dataclass(frozen=True)
class RawEvent:
    id: str | None
    type: str
    data: str


def parse_sse(lines: Iterable[str]) -> Iterator[RawEvent]:
    """Events from the lines of a text/event-stream body (the WHATWG rules, minus `retry`)."""
    event_id: str | None = None
    event_type = ""
    data: list[str] = []
    for line in lines:
        if not line:  # a blank line dispatches the event gathered so far
            if data:
                yield RawEvent(event_id, event_type or "message", "\n".join(data))
            event_type, data = "", []
            continue
        if line.startswith(":"):
            continue  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name == "event":
            event_type = value
        elif name == "id" and "\0" not in value:
            event_id = value  # the last id seen stays in force for later events, as the spec says


def to_event(raw: RawEvent) -> Event:
    try:
        data = json.loads(raw.data)
    except json.JSONDecodeError:
        data = {"text": raw.data}
    if not isinstance(data, dict):
        data = {"value": data}
    event_id = int(raw.id) if raw.id is not None and raw.id.isdigit() else None
    return Event(id=event_id, type=raw.type, data=data)


def backoff(failures: int) -> float:
    return min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** (failures - 1))


def reconnecting_events(
    open_stream: StreamOpener,
    job_finished: Callable[[], bool],
    *,
    last_event_id: int | None = None,
    max_attempts: int = 10,
    on_reconnect: ReconnectHook | None = None,
) -> Iterator[Event]:
    """Every event after `last_event_id` until the job's terminal status event. `max_attempts` bounds the
    reconnections in a row that bring no event; any event received resets the count."""
    last = last_event_id
    failures = 0
    while True:
        delay: float | None = None
        error: Exception | None = None
        try:
            with open_stream(last) as response:
                for raw in parse_sse(response.iter_lines()):
                    event = to_event(raw)
                    if event.id is not None:
                        last = event.id
                    failures = 0
                    yield event
                    if event.is_terminal:
                        return
            # The server closed the stream without a terminal status: it stops after replaying an ended job
            # (we have it all then), or it is shutting down (reconnect).
            if job_finished():
                return
        except LorabakeAPIError as exc:
            if exc.status not in RETRYABLE_STATUSES:
                raise
            error, delay = exc, exc.retry_after
        except (httpx.TransportError, LorabakeConnectionError) as exc:
            error = exc
        failures += 1
        if failures > max_attempts:
            raise LorabakeConnectionError(
                f"the event stream dropped {failures} times in a row; last: {error or 'closed by the server'}"
            ) from error
        time.sleep(delay if delay is not None else backoff(failures))
        if on_reconnect is not None:
            on_reconnect(failures, error)
