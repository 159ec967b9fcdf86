"""The headers :class:`~conveyor.api.middleware.ConveyorMiddleware` puts on every
response: the request id, the rate limits', the security headers, and the CORS policy.

Security headers, unless the route set its own: ``Content-Security-Policy``
(:data:`API_CSP`), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer``,
``X-Frame-Options: DENY``, and ``Strict-Transport-Security`` (:data:`HSTS`) only when the
request came over HTTPS.

Content-Security-Policy
-----------------------
API responses (JSON): ``default-src 'none'; frame-ancestors 'none'; base-uri 'none';
form-action 'none'`` — a JSON document needs nothing, and may not be framed.

The docs pages (``/docs``, Swagger UI; ``/redoc``; the OAuth2 redirect page) load their
JS/CSS from the app itself (:mod:`conveyor.api.docs`) and start with an inline
``<script>``. They get :func:`docs_csp`: scripts from ``'self'`` plus the SHA-256 hash of
each inline script of *that* response (:func:`inline_script_hashes`, so no
``'unsafe-inline'`` for scripts), styles from ``'self'`` with ``'unsafe-inline'`` (Swagger
UI and Redoc set inline styles), images ``'self' data:``, fonts ``'self'``, ``connect-src
'self'`` (the schema and "Try it out"), ``worker-src blob:`` (Redoc), and still
``frame-ancestors 'none'``: no other host, so a page that tried to reach one would be
refused by the browser.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable

from starlette.types import Message, Scope

from conveyor.api.ratelimit import ratelimit_headers
from conveyor.api.request_id import REQUEST_ID_KEY

API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
"""The Content-Security-Policy of every response but the docs pages."""

HSTS = "max-age=31536000"
"""Strict-Transport-Security over HTTPS: one year, this host only (no includeSubDomains:
the API does not decide for its sibling hosts)."""

CORS_ALLOW_HEADERS = ("Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID")
CORS_EXPOSE_HEADERS = (
    "X-Request-ID",
    "Retry-After",
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "Location",
)
CORS_ALLOW_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")

_INLINE_SCRIPT_RE = re.compile(
    rb"<script(?![^>]*\bsrc\s*=)[^>]*>(.*?)</script\s*>", re.DOTALL | re.IGNORECASE
)

_CSP_KEY = b"content-security-policy"
_HSTS_HEADER = (b"strict-transport-security", HSTS.encode())
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
)


def docs_csp(inline_script_hashes: Iterable[str] = ()) -> str:
    """The Content-Security-Policy of the docs pages (see the module docstring)."""
    hashes = "".join(f" 'sha256-{h}'" for h in inline_script_hashes)
    return (
        "default-src 'none'; "
        f"script-src 'self'{hashes}; "
        "style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "font-src 'self'; "
        "connect-src 'self'; "
        "worker-src 'self' blob:; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


def inline_script_hashes(html: bytes) -> list[str]:
    """The base64 SHA-256 of each inline ``<script>`` of ``html``, as a CSP names it."""
    return [
        base64.b64encode(hashlib.sha256(m.group(1)).digest()).decode()
        for m in _INLINE_SCRIPT_RE.finditer(html)
    ]


def complete_headers(
    message: Message, csp: str, scope: Scope, request_id: str, https: bool
) -> None:
    """Add to the ``http.response.start`` ``message`` the request id, the rate limits'
    headers and the security headers the app did not set; in one pass over the app's
    headers."""
    headers = list(message.get("headers", ()))
    present = {name.lower() for name, _ in headers}
    extra = ratelimit_headers(scope, message["status"])
    replaced = {REQUEST_ID_KEY, *(name for name, _ in extra)} & present
    if replaced:
        headers = [h for h in headers if h[0].lower() not in replaced]
    headers.append((REQUEST_ID_KEY, request_id.encode()))
    headers.extend(extra)
    if _CSP_KEY not in present:
        headers.append((_CSP_KEY, csp.encode()))
    headers.extend(h for h in _SECURITY_HEADERS if h[0] not in present)
    if https and _HSTS_HEADER[0] not in present:
        headers.append(_HSTS_HEADER)
    message["headers"] = headers
