"""``/v1/events``: the tenant's events as they happen, over Server-Sent Events and
WebSocket, resumable with no gap and no duplicate.

Both streams send each event as its JSON (:meth:`~conveyor.store.records.Event.to_json`):
the durable ones with their id (SSE ``id:``, the JSON's ``id``) in id order, the live ones
(``job.started``, ``job.progress``) without. A client resumes with the last id it got
(``Last-Event-ID``, which browsers send by themselves on reconnecting, or ``since=``): it
gets every durable event after it once. A ``job.completed`` is followed by the Medical Asset
Generator seed's message, ``{"type": "job-completed", ...}``, for clients written for it
(SSE event ``job-completed``, no id). An idle stream is pinged every
``CONVEYOR_STREAM_PING_SECONDS`` (an SSE comment; a ``{"type": "ping"}`` message), so
proxies keep it open. A client too slow to read ``CONVEYOR_STREAM_BUFFER`` events gets an
``overflow`` message with ``resume_from``, and the stream ends (WebSocket close code 1013).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import (
    APIRouter,
    Depends,
    Header,
    HTTPException,
    Query,
    WebSocket,
)
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.websockets import WebSocketDisconnect

from conveyor.accounts.service import Accounts
from conveyor.api.access import Access, caller_for, scope_of, stream_caller_for
from conveyor.api.deps import Caller, get_accounts, get_api
from conveyor.api.routes.common import MAX_ID, READ_ERRORS
from conveyor.api.state import ApiState
from conveyor.engine.events import EventMatch, EventStream, StreamOverflow
from conveyor.store.records import Event, EventType

router = APIRouter(prefix="/v1/events", tags=["events"], responses=READ_ERRORS)

SEED_TYPE = "job-completed"
"""The seed's message, as a ``type`` to filter by: only it (and what else is named)."""
_TYPES = ", ".join([*(t.value for t in EventType), SEED_TYPE])

RequestFilter = Annotated[
    int | None, Query(ge=1, le=MAX_ID, description="Only the events of this request's job.")
]
JobFilter = Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this job's events.")]
KindsFilter = Annotated[
    str | None,
    Query(
        max_length=2000, description="Only these kinds, comma-separated: video.process,qa.answer."
    ),
]
TypesFilter = Annotated[
    str | None,
    Query(max_length=2000, description=f"Only these types, comma-separated, of: {_TYPES}."),
]
Since = Annotated[
    int | None,
    Query(ge=0, le=MAX_ID, description="Resume after this event id (as Last-Event-ID does)."),
]
Token = Annotated[
    str | None,
    Query(
        max_length=4096,
        description="A stream token (POST /v1/events/token), for browsers, which cannot "
        "send Authorization with EventSource or WebSocket.",
    ),
]
LastEventId = Annotated[
    str | None,
    Header(alias="Last-Event-ID", max_length=40, description="Resume after this event id."),
]


class StreamToken(BaseModel):
    """A token that opens the caller's event streams for a short while."""

    token: str
    expires_in: int
    """Seconds it can still open a stream (an open stream is not closed when it expires)."""


@router.post("/token", summary="A short-lived token that opens event streams")
async def stream_token(
    caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    accounts: Annotated[Accounts, Depends(get_accounts)],
) -> StreamToken:
    """For browsers: ``new EventSource("/v1/events?token=...")`` or ``new
    WebSocket(".../v1/events/ws?token=...")``. It names the caller and nothing more: the
    stream shows the caller's tenant's events, as with the header."""
    token, lifetime = accounts.stream_token(caller)
    return StreamToken(token=token, expires_in=lifetime)


@dataclass(frozen=True, slots=True)
class Shape:
    """What a stream sends of a completion: the event, the seed's message, or both."""

    seed: bool
    completed: bool


@dataclass(frozen=True, slots=True)
class Stream:
    """A caller's stream as its query asked."""

    events: EventStream
    shape: Shape


async def _match(
    api: ApiState,
    caller: Caller,
    request_id: int | None,
    job_id: int | None,
    kind: str | None,
    type_: str | None,
) -> tuple[EventMatch, Shape]:
    tenant = scope_of(caller)
    if request_id is not None:
        found = await api.client.store.get_request(request_id, tenant) if tenant else None
        if found is None:
            raise HTTPException(404, f"no request with id {request_id}")
        if job_id is not None and job_id != found.job.id:
            raise HTTPException(422, f"job_id {job_id} is not request {request_id}'s job")
        job_id = found.job.id
    types = _types(type_)
    wanted = {EventType(t) for t in types if t != SEED_TYPE}
    seed = not types or SEED_TYPE in types
    shape = Shape(seed=seed, completed=not types or EventType.COMPLETED in wanted)
    if types and seed:
        wanted.add(EventType.COMPLETED)
    return EventMatch(
        tenant_id=tenant, job_id=job_id, kinds=frozenset(_split(kind)), types=frozenset(wanted)
    ), shape


def _split(text: str | None) -> list[str]:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _types(text: str | None) -> list[str]:
    values = _split(text)
    known = {*EventType._value2member_map_, SEED_TYPE}
    unknown = [v for v in values if v not in known]
    if unknown:
        raise HTTPException(
            422, f"unknown event type {', '.join(map(repr, unknown))}; types are: {_TYPES}"
        )
    return values


def _since(since: int | None, last_event_id: str | None) -> int | None:
    if last_event_id is None or not last_event_id.strip():
        return since
    text = last_event_id.strip()
    if not text.isdigit() or int(text) > MAX_ID:
        raise HTTPException(422, f"Last-Event-ID {text[:40]!r} is not an event id")
    return int(text)


def seed_message(event: Event) -> dict[str, Any] | None:
    """The seed's ``job-completed`` broadcast for a request's completed job, else None
    (the seed broadcasts requests' completions; deliveries and jobs enqueued without a
    request have none)."""
    if event.type is not EventType.COMPLETED or event.request_id is None:
        return None
    return {
        "type": "job-completed",
        "jobId": event.job_id,
        "requestId": event.request_id,
        "kind": event.kind,
        "status": "completed",
        "eventId": event.id,
    }


Message = tuple[str, bytes, int | None]
"""(SSE event name, JSON, SSE id) of one message."""

_ENCODED: collections.OrderedDict[int, tuple[Event, list[Message]]] = collections.OrderedDict()
"""The messages of the latest events, by the event object: every subscriber of a process
gets the same objects, and a thousand streams encode each event once, not a thousand times.
The event is held with them, so its id() is not reused while it is in here."""
ENCODED_KEPT = 4096


def messages(event: Event, shape: Shape) -> list[Message]:
    """What a stream of ``shape`` sends for ``event``."""
    cached = _ENCODED.get(id(event))
    if cached is None or cached[0] is not event:
        encoded: list[Message] = [(event.type.value, orjson.dumps(event.to_json()), event.id)]
        seed = seed_message(event)
        if seed is not None:
            encoded.append((SEED_TYPE, orjson.dumps(seed), None))
        cached = _ENCODED[id(event)] = (event, encoded)
        if len(_ENCODED) > ENCODED_KEPT:
            _ENCODED.popitem(last=False)
    out = cached[1]
    if event.type is EventType.COMPLETED and not (shape.seed and shape.completed):
        out = [m for m in out if (m[0] == SEED_TYPE) == shape.seed]
    return out


def _sse(name: str, data: bytes, event_id: int | None = None) -> bytes:
    head = b"" if event_id is None else b"id: %d\n" % event_id
    return head + b"event: " + name.encode() + b"\ndata: " + data + b"\n\n"


async def _stream(
    caller: Annotated[Caller, Depends(stream_caller_for(Access.READ))],
    api: Annotated[ApiState, Depends(get_api)],
    request_id: RequestFilter = None,
    job_id: JobFilter = None,
    kind: KindsFilter = None,
    type: TypesFilter = None,
    since: Since = None,
    token: Token = None,
    last_event_id: LastEventId = None,
) -> Stream:
    """The caller's stream as the query asks, not subscribed yet: both routes' one
    dependency (``token`` is read by the caller's; it is declared here to be documented)."""
    match, shape = await _match(api, caller, request_id, job_id, kind, type)
    events = EventStream(
        api.client.follower,
        api.client.store,
        match,
        since=_since(since, last_event_id),
        buffer=api.settings.stream_buffer,
    )
    return Stream(events, shape)


@router.get(
    "",
    summary="The tenant's events, as Server-Sent Events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The stream."}},
)
async def events_sse(
    stream: Annotated[Stream, Depends(_stream)],
    api: Annotated[ApiState, Depends(get_api)],
) -> StreamingResponse:
    """Events of the caller's tenant as they happen (see the module's description)."""
    return StreamingResponse(
        _sse_body(stream, api.settings.stream_ping_seconds),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _sse_body(stream: Stream, ping_s: float) -> AsyncIterator[bytes]:
    # Subscribed here, once the response is under way: a client gone before it started
    # leaves no subscription behind.
    async with stream.events:
        yield b"retry: 2000\n\n"
        while True:
            try:
                event = await stream.events.next(ping_s)
            except StreamOverflow as exc:
                overflow = {"type": "overflow", "resume_from": exc.resume_from}
                yield _sse("overflow", orjson.dumps(overflow))
                return
            except StopAsyncIteration:
                return
            if event is None:
                yield b": ping\n\n"
                continue
            for name, data, event_id in messages(event, stream.shape):
                yield _sse(name, data, event_id)


@router.websocket("/ws", name="events_ws")
async def events_ws(
    websocket: WebSocket,
    stream: Annotated[Stream, Depends(_stream)],
    api: Annotated[ApiState, Depends(get_api)],
) -> None:
    """The same events over a WebSocket, one JSON text message each. A refusal comes
    before the handshake: the app's error answer goes out as the handshake's HTTP
    response (ASGI's WebSocket denial response), with the status a GET would get."""
    await websocket.accept()
    ping_s = api.settings.stream_ping_seconds
    async with stream.events:
        # The client's messages are read (and dropped) so that its close is noticed.
        reader = asyncio.get_running_loop().create_task(_until_closed(websocket, stream.events))
        try:
            await _ws_send_events(websocket, stream, ping_s)
        except WebSocketDisconnect:
            pass
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader


async def _ws_send_events(websocket: WebSocket, stream: Stream, ping_s: float) -> None:
    while True:
        try:
            event = await stream.events.next(ping_s)
        except StreamOverflow as exc:
            overflow = {"type": "overflow", "resume_from": exc.resume_from}
            await websocket.send_text(orjson.dumps(overflow).decode())
            await websocket.close(1013, "too slow: resume from the id given")
            return
        except StopAsyncIteration:
            await websocket.close(1001, "server shutting down")
            return
        if event is None:
            await websocket.send_text('{"type":"ping"}')
            continue
        for _, data, _ in messages(event, stream.shape):
            await websocket.send_text(data.decode())


async def _until_closed(websocket: WebSocket, stream: EventStream) -> None:
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
    stream.close()
