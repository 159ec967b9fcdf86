"""Request ids: the client's ``X-Request-ID`` when it is well-formed, else a new one.

:class:`~conveyor.api.middleware.ConveyorMiddleware` sets the id of every request; routes
read it with :func:`request_id` and store it with what they create, so the job's logs
carry it too.
"""

from __future__ import annotations

import re
import uuid

from fastapi import Request
from starlette.types import Scope

REQUEST_ID_HEADER = "X-Request-ID"
REQUEST_ID_KEY = b"x-request-id"
"""The header's name as ASGI spells it (lower case, bytes)."""

_REQUEST_ID_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")


def new_request_id() -> str:
    return uuid.uuid4().hex


def accepted_request_id(offered: bytes | None) -> str:
    """``offered`` when it is 1-128 characters of ``[A-Za-z0-9._-]``, else a new id."""
    if offered is not None:
        text = offered.decode("latin-1")
        if _REQUEST_ID_RE.fullmatch(text) is not None:
            return text
    return new_request_id()


def request_id(request: Request) -> str:
    """The id of the request being handled: the accepted ``X-Request-ID`` or a new one.

    Routes store it with what they create (``NewRequest.http_request_id``). Without
    :class:`~conveyor.api.middleware.ConveyorMiddleware` (a bare test app), a new id is
    made and kept for the request.
    """
    rid = getattr(request.state, "request_id", None)
    if isinstance(rid, str):
        return rid
    rid = new_request_id()
    request.state.request_id = rid
    return rid


def scope_request_id(scope: Scope) -> str | None:
    """The id set for the request of ``scope``, if any."""
    state = scope.get("state") or {}
    rid = state.get("request_id")
    return rid if isinstance(rid, str) else None
