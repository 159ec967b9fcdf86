"""JSON request bodies, parsed strictly before FastAPI validates them.

FastAPI parses a JSON body with the stdlib's ``json.loads``, which accepts ``NaN``,
``Infinity``, ``1e400`` (as infinity) and lone surrogates (``"\\ud800"``): values no store
keeps as given (NaN would turn into null) and that break the error answer itself when it
echoes them. Routes of :class:`StrictJsonRoute` parse the body with
:func:`conveyor.engine.limits.loads` first and hand FastAPI the parsed value, so a body
is parsed once, by orjson, and anything outside the limits (non-finite numbers, lone
surrogates, NUL in a string or key, nesting past the limit, an integer outside
-2**63 .. 2**64-1, which orjson alone would read as a rounded float) is a 422 whose
``loc`` names the place (``["body", "input", "a", "b"]``). Every router of the API with a
JSON body uses this route class.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response

from conveyor.engine.limits import MAX_DEPTH, LimitError, loads

_JSON_TYPES = ("application/json",)

Handler = Callable[[Request], Coroutine[Any, Any, Response]]


def _is_json(content_type: str | None) -> bool:
    """Whether FastAPI would read a body of this type as JSON (none counts)."""
    if not content_type:
        return True
    media = content_type.split(";", 1)[0].strip().lower()
    return media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


def parse_body(body: bytes) -> Any:
    """The body's JSON value; :class:`RequestValidationError` (422) naming the place of
    the first value outside the limits. The document may nest one level deeper than a
    payload, for the body's own object around ``input``."""
    try:
        return loads(body, "body", max_depth=MAX_DEPTH + 1)
    except LimitError as exc:
        raise RequestValidationError(
            [{"loc": exc.loc, "msg": str(exc), "type": "json_invalid"}]
        ) from None


class StrictJsonRoute(APIRoute):
    """An :class:`~fastapi.routing.APIRoute` whose JSON body is parsed by
    :func:`parse_body`."""

    def get_route_handler(self) -> Handler:
        handler: Handler = super().get_route_handler()
        if self.body_field is None:
            return handler

        async def strict(request: Request) -> Response:
            if _is_json(request.headers.get("content-type")):
                body = await request.body()
                if body:
                    # Starlette's Request.json() returns this instead of parsing again.
                    request._json = parse_body(body)
            return await handler(request)

        return strict
