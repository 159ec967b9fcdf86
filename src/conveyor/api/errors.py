"""How errors become HTTP answers: JSON, a clear message, never a stack trace.

=====================================  ======  =====================================
raised                                 status  body
=====================================  ======  =====================================
pydantic validation (body, query...)   422     ``{"detail": [{loc, msg, type}...]}``
``UnknownKind`` / ``InvalidJob``       422     same shape, one entry
``Unauthenticated`` (accounts)         401     the one 401 message +
                                               ``WWW-Authenticate: Bearer``
``Forbidden`` (accounts)               403     ``{"detail": "..."}``
``JobNotFound``, ``NotFound``          404     ``{"detail": "..."}``
(accounts), unknown route
``Invalid`` (accounts)                 422     one entry at ``body.<field>``;
                                               ``ChooseTenant``'s ``ctx`` lists the
                                               tenant ids
:class:`Conflict`, ``ConflictError``,  409     ``{"detail": "..."}``
``JobConflict``, ``Conflict``
(accounts)
:class:`Overloaded` (backpressure)     503     ``{"detail": "..."}`` + ``Retry-After``
``StoreError`` (database unreachable)  503     ``{"detail": "..."}`` + ``Retry-After``
anything else                          500     ``{"detail": "Internal server error"}``
=====================================  ======  =====================================

The 500 comes from ``middleware.ConveyorMiddleware``, which logs the traceback; the
client never sees one. Routes under ``/api/`` (the QuDemo seed's) answer in the seed's
shape instead:
``{"success": false, "message": "...", "detail": ...}`` (``detail`` kept so tools that
read FastAPI's shape still work). Every error body carries the ``request_id``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from conveyor.accounts import errors as accounts
from conveyor.api.account_schemas import SIGNUP_KINDS
from conveyor.api.deps import request_id
from conveyor.engine.errors import (
    ConveyorError,
    InvalidJob,
    JobConflict,
    JobNotFound,
    UnknownKind,
)
from conveyor.engine.limits import LimitError, excerpt
from conveyor.logs import get_logger
from conveyor.store.base import ConflictError, StoreError

log = get_logger("api")

STORE_RETRY_AFTER_S = 5
"""Retry-After (seconds) when the database cannot be reached."""

SEED_PREFIX = "/api/"


class Conflict(Exception):
    """The request is understood but cannot apply to the resource's current state (409)."""


class Overloaded(Exception):
    """Backpressure: the queue's backlog or the process's memory is above its limit (503)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def _is_seed(request: Request) -> bool:
    return request.url.path.startswith(SEED_PREFIX)


def error_response(
    request: Request,
    status: int,
    detail: Any,
    *,
    message: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """The JSON error answer, in the seed's shape under ``/api/``."""
    body: dict[str, Any] = {"detail": detail, "request_id": request_id(request)}
    if _is_seed(request):
        text = message if message is not None else (detail if isinstance(detail, str) else "")
        body = {"success": False, "message": text or "invalid request", **body}
    return JSONResponse(jsonable_encoder(body), status_code=status, headers=headers)


def validation_detail(
    msg: str, *, loc: tuple[str | int, ...] = ("body",), type_: str = "value_error"
) -> list[dict[str, Any]]:
    """One entry in the shape of FastAPI's validation errors."""
    return [{"loc": list(loc), "msg": msg, "type": type_}]


def _clean_errors(request: Request, errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Make the create-request errors read like the request the client wrote.

    Its body is a union tagged by ``kind``; pydantic names a bad tag at the body's root
    and puts the tag inside the location of every other error
    (``body.video.process.input.x``). Point the first at ``body.kind`` with the list of
    kinds, and drop the tag from the others (``body.input.x``).
    """
    route = request.scope.get("route")
    kinds: list[str] = getattr(request.app.state, "kind_names", [])
    if getattr(route, "name", None) == "signup":
        # The signup body is a union tagged by the keys it has (account_schemas).
        return [
            {**e, "loc": [e["loc"][0], *e["loc"][2:]]}
            if len(e.get("loc", ())) > 1 and e["loc"][1] in SIGNUP_KINDS
            else e
            for e in errors
        ]
    if getattr(route, "name", None) != "create_request":
        return errors
    cleaned = []
    for error in errors:
        loc = list(error.get("loc", ()))
        kind = error.get("type")
        if kind in ("union_tag_invalid", "union_tag_not_found") and loc == ["body"]:
            tag = (error.get("ctx") or {}).get("tag")
            listed = ", ".join(kinds)
            msg = (
                f"unknown kind {excerpt(tag)}; registered kinds: {listed}"
                if kind == "union_tag_invalid"
                else f"Field required: give the job kind, one of: {listed}"
            )
            error = {
                "loc": ["body", "kind"],
                "msg": msg,
                "type": "unknown_kind" if kind == "union_tag_invalid" else "missing",
                "ctx": {"kinds": kinds},
            }
        elif len(loc) > 1 and loc[0] == "body" and loc[1] in kinds:
            error = {**error, "loc": ["body", *loc[2:]]}
        cleaned.append(error)
    return cleaned


ECHO_CHARS = 100
"""The most of an input value a 422 quotes back."""


def safe_echo(value: Any) -> Any:
    """``value`` as a 422 may quote it: at most about :data:`ECHO_CHARS` characters of
    it, and only what JSON can carry (a lone surrogate, NaN or a huge number as text)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if abs(value) < 2**63 else excerpt(value, ECHO_CHARS)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, str):
        return _safe_text(value, ECHO_CHARS)
    text = excerpt(value, ECHO_CHARS)
    if len(text) >= ECHO_CHARS or not isinstance(value, list | tuple | dict):
        return safe_echo(text)
    if isinstance(value, dict):
        return {safe_echo(str(k)): safe_echo(v) for k, v in value.items()}
    return [safe_echo(v) for v in value]


def _safe_text(text: str, limit: int) -> str:
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _safe_loc(loc: Any) -> list[str | int]:
    return [p if isinstance(p, int) else _safe_text(str(p), ECHO_CHARS) for p in loc]


def _safe_error(error: dict[str, Any]) -> dict[str, Any]:
    """A validation error whose every part JSON can carry, quoting little of the input."""
    safe = {
        **error,
        "loc": _safe_loc(error.get("loc", ())),
        "msg": _safe_text(str(error.get("msg", "")), 1000),
    }
    if "input" in error:
        safe["input"] = safe_echo(error["input"])
    if error.get("ctx"):
        safe["ctx"] = {str(k): safe_echo(v) for k, v in error["ctx"].items()}
    return safe


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    # Nothing of the input reaches the answer unsanitised: echoing a lone surrogate or
    # NaN made the 422 itself fail, and echoing a megabyte of input helps no one.
    errors = [_safe_error(e) for e in _clean_errors(request, [dict(e) for e in exc.errors()])]
    first = errors[0]["msg"] if errors else "invalid request"
    return error_response(request, 422, errors, message=f"invalid request: {first}")


async def _on_http(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    return error_response(request, exc.status_code, exc.detail, headers=exc.headers)


async def _on_conveyor(request: Request, exc: Exception) -> JSONResponse:
    if isinstance(exc, JobNotFound):
        return error_response(request, 404, str(exc))
    if isinstance(exc, JobConflict):
        return error_response(request, 409, str(exc))
    if isinstance(exc, UnknownKind):
        detail = validation_detail(str(exc), loc=("body", "kind"), type_="unknown_kind")
        return error_response(request, 422, detail, message=str(exc))
    if isinstance(exc, LimitError):
        loc = ("body", "input", *exc.loc[1:]) if exc.loc[0] == "payload" else ("body", *exc.loc)
        detail = validation_detail(str(exc), loc=tuple(_safe_loc(loc)), type_="invalid_job")
        return error_response(request, 422, detail, message=str(exc))
    if isinstance(exc, InvalidJob):
        detail = validation_detail(str(exc), type_="invalid_job")
        return error_response(request, 422, detail, message=str(exc))
    return error_response(request, 400, str(exc))


async def _on_conflict(request: Request, exc: Exception) -> JSONResponse:
    return error_response(request, 409, str(exc))


async def _on_overloaded(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Overloaded)
    log.warning("request refused: overloaded", reason=str(exc), path=request.url.path)
    return error_response(request, 503, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


async def _on_store(request: Request, exc: Exception) -> JSONResponse:
    # The cause goes to the log only: it may name hosts, and clients cannot act on it.
    log.error("database unavailable", error=str(exc), path=request.url.path)
    message = f"the database is unavailable; retry in {STORE_RETRY_AFTER_S} seconds"
    return error_response(request, 503, message, headers={"Retry-After": str(STORE_RETRY_AFTER_S)})


UNAUTHENTICATED = "Missing or invalid credentials: send Authorization: Bearer <token or API key>."
"""The one message of every 401, whatever was wrong (the reason is only logged, so that
an answer tells nothing about which accounts, tokens or keys exist)."""


async def _on_account(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, accounts.AccountError)
    if isinstance(exc, accounts.Unauthenticated):
        log.info("credentials refused", reason=exc.reason, path=request.url.path)
        return error_response(request, 401, UNAUTHENTICATED, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, accounts.Forbidden):
        return error_response(request, 403, str(exc))
    if isinstance(exc, accounts.NotFound):
        return error_response(request, 404, str(exc))
    if isinstance(exc, accounts.Conflict):
        return error_response(request, 409, str(exc))
    if isinstance(exc, accounts.Invalid):
        entry: dict[str, Any] = {
            "loc": ["body", exc.field],
            "msg": str(exc),
            "type": "choose_tenant" if isinstance(exc, accounts.ChooseTenant) else "invalid",
        }
        if isinstance(exc, accounts.ChooseTenant):
            entry["ctx"] = {"tenant_ids": list(exc.tenant_ids)}
        return error_response(request, 422, [entry], message=str(exc))
    return error_response(request, 400, str(exc))


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers in the table above."""
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(StarletteHTTPException, _on_http)
    # Starlette picks the handler of the nearest class in the exception's MRO, so
    # ConflictError (a StoreError) answers 409, not 503.
    app.add_exception_handler(ConflictError, _on_conflict)
    app.add_exception_handler(Conflict, _on_conflict)
    app.add_exception_handler(StoreError, _on_store)
    app.add_exception_handler(Overloaded, _on_overloaded)
    app.add_exception_handler(ConveyorError, _on_conveyor)
    app.add_exception_handler(accounts.AccountError, _on_account)
