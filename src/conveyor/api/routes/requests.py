"""``/v1/requests``: what users ask for, and how it is doing.

The body model of ``POST /v1/requests`` is built from the kinds registry when the app is
created (see :func:`conveyor.api.schemas.create_request_body`), which is why this module
builds its router in a function and does not use postponed annotations: FastAPI must see
the body type itself, not a name it cannot resolve.

The routes reach the app's :class:`~conveyor.api.state.ApiState` through that function
rather than through the ``get_api`` dependency: FastAPI solves each dependency anew for
each request, a cost the API's busiest route need not pay (docs/benchmarks.md).
"""

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, Response
from pydantic import BaseModel

from conveyor.api.access import Access, caller_for, scope_of, tenant_of
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, request_id
from conveyor.api.errors import Conflict
from conveyor.api.pagination import DEFAULT_LIMIT, decode_cursor, next_cursor
from conveyor.api.routes.common import (
    CONFLICT,
    NOT_FOUND,
    READ_ERRORS,
    WRITE_ERRORS,
    CreatedAfter,
    CreatedBefore,
    Cursor,
    IdempotencyKey,
    KindFilter,
    Limit,
    ResourceId,
    StatusFilter,
    epoch,
)
from conveyor.api.schemas import RequestAccepted, RequestOut, RequestPage, create_request_body
from conveyor.api.state import ApiState
from conveyor.api.submit import submit
from conveyor.engine.errors import JobConflict
from conveyor.store.records import Request as RequestRecord
from conveyor.store.records import RequestFilter


async def find_request(api: ApiState, caller: Caller, request_id_: int) -> RequestRecord:
    """The caller's tenant's request, or 404 (another tenant's looks the same as none)."""
    found = await api.client.store.get_request(request_id_, tenant_of(caller))
    if found is None:
        raise HTTPException(404, f"no request with id {request_id_}")
    return found


def build_router(api: ApiState) -> APIRouter:
    """The ``/v1/requests`` routes of ``api``, for the kinds in ``api.kinds``."""
    router = APIRouter(
        route_class=StrictJsonRoute, prefix="/v1/requests", tags=["requests"], responses=READ_ERRORS
    )
    body_type: Any = create_request_body(api.kinds)

    @router.post(
        "",
        name="create_request",
        status_code=202,
        responses={
            200: {"model": RequestAccepted, "description": "Idempotent repeat: the first one."},
            **WRITE_ERRORS,
            **CONFLICT,
        },
        summary="Submit a request",
    )
    async def create_request(
        body: Annotated[body_type, Body()],
        request: Request,
        response: Response,
        caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
        idempotency_key: IdempotencyKey = None,
    ) -> RequestAccepted:
        """Create a request and its job in one transaction; answer 202 once it is
        durable. The body is ``{"kind": ..., "input": ...}``; each kind's input schema is
        listed below. Unknown kind or invalid input: 422 naming the fields, nothing
        stored. Backpressure (queue backlog or memory above its limit): 503 with
        Retry-After."""
        payload = body.input
        if isinstance(payload, BaseModel):
            payload = payload.model_dump(mode="json")
        done = await submit(
            api,
            caller,
            body.kind,
            payload,
            idempotency_key=idempotency_key,
            request_id=request_id(request),
            http=request,
        )
        response.status_code = 202 if done.created else 200
        response.headers["Location"] = f"/v1/requests/{done.request.id}"
        return done.accepted()

    @router.get("", summary="List requests, newest first")
    async def list_requests(
        caller: Annotated[Caller, Depends(caller_for(Access.READ))],
        limit: Limit = DEFAULT_LIMIT,
        cursor: Cursor = None,
        status: StatusFilter = None,
        kind: KindFilter = None,
        created_after: CreatedAfter = None,
        created_before: CreatedBefore = None,
    ) -> RequestPage:
        """The caller's requests, newest first; follow ``next_cursor`` for more."""
        rows = await api.client.store.list_requests(
            RequestFilter(
                tenant_id=tenant_of(caller),
                state=status,
                kind=kind,
                created_after=epoch(created_after, "created_after"),
                created_before=epoch(created_before, "created_before"),
                limit=limit + 1,
                before_id=decode_cursor(cursor),
            )
        )
        return RequestPage(
            items=[RequestOut.of(r) for r in rows[:limit]],
            next_cursor=next_cursor([r.id for r in rows], limit),
        )

    @router.get("/{request_id}", responses=NOT_FOUND, summary="Show a request")
    async def get_request(
        request_id: ResourceId,
        caller: Annotated[Caller, Depends(caller_for(Access.READ))],
    ) -> RequestOut:
        """Status, progress, result, errors and asset URLs of one request."""
        return RequestOut.of(await find_request(api, caller, request_id))

    @router.post(
        "/{request_id}/cancel",
        responses={**NOT_FOUND, **CONFLICT},
        summary="Cancel a request",
    )
    async def cancel_request(
        request_id: ResourceId,
        caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
    ) -> RequestOut:
        """A queued request never starts; a running one is stopped (its status turns
        ``cancelled`` once the worker has stopped it; ``cancel_requested`` is true
        meanwhile). Cancelling a cancelled request changes nothing; a completed or failed
        one: 409."""
        found = await find_request(api, caller, request_id)
        try:
            await api.client.cancel(found.job.id, tenant_id=scope_of(caller))
        except JobConflict:
            raise Conflict(f"request {request_id} has already {found.job.state.value}") from None
        return RequestOut.of(await find_request(api, caller, request_id))

    @router.post(
        "/{request_id}/retry",
        responses={**NOT_FOUND, **CONFLICT},
        summary="Retry a failed or cancelled request",
    )
    async def retry_request(
        request_id: ResourceId,
        caller: Annotated[Caller, Depends(caller_for(Access.WRITE))],
    ) -> RequestOut:
        """Queue a failed or cancelled request's job again now, with one more attempt if
        it had used them all. Any other status: 409."""
        found = await find_request(api, caller, request_id)
        try:
            await api.client.retry(found.job.id, tenant_id=scope_of(caller))
        except JobConflict as exc:
            raise Conflict(
                f"request {request_id} is {exc.state}; only failed or cancelled "
                "requests can be retried"
            ) from None
        return RequestOut.of(await find_request(api, caller, request_id))

    return router
