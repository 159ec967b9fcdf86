"""``/v1/me/email-preferences`` and ``/v1/email/unsubscribe``: which events email the
signed-in user, and the unsubscribe link every notification mail carries.

Preferences belong to a user's membership of the tenant its token names: an API key is
no user, and an operator in no tenant has no membership (403 for both). The unsubscribe
link needs no credential (its token is the credential): ``GET`` only shows a page with
a button, since mail scanners follow links, and ``POST`` (the button, or a mail client's
RFC 8058 one-click ``List-Unsubscribe=One-Click``) turns the preferences off.
"""

from __future__ import annotations

import html
from typing import Annotated
from urllib.parse import quote

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from conveyor.accounts.errors import Forbidden
from conveyor.api.access import Access, caller_for
from conveyor.api.body import StrictJsonRoute
from conveyor.api.deps import Caller, get_api
from conveyor.api.email_schemas import EmailPreferencesIn, EmailPreferencesOut
from conveyor.api.routes.common import FORBIDDEN, READ_ERRORS, WRITE_ERRORS
from conveyor.api.state import ApiState

router = APIRouter(route_class=StrictJsonRoute, responses=READ_ERRORS)
Authenticated = Annotated[Caller, Depends(caller_for(Access.AUTHENTICATED))]
Api = Annotated[ApiState, Depends(get_api)]

MAX_TOKEN_LENGTH = 200
Token = Annotated[
    str,
    Query(
        min_length=1,
        max_length=MAX_TOKEN_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="The token of the mail's unsubscribe link.",
    ),
]

PAGE_CSP = "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
"""The unsubscribe pages' Content-Security-Policy: no script, no style from anywhere; the
form posts to this API only."""


def _member(caller: Caller) -> tuple[str, str]:
    """(tenant id, user id) of a user signed in to a tenant; else Forbidden."""
    if caller.user_id is None:
        raise Forbidden(
            "email preferences are a user's: an API key has none; sign in as the user "
            "(/v1/auth/login) and call with their access token"
        )
    if caller.tenant_id is None:
        raise Forbidden(
            "email preferences are kept per tenant: log in to a tenant (/v1/auth/login "
            "with its tenant_id) to read or set yours"
        )
    return caller.tenant_id, caller.user_id


@router.get(
    "/v1/me/email-preferences",
    tags=["email"],
    responses=FORBIDDEN,
    summary="Which events email me",
)
async def get_email_preferences(caller: Authenticated, api: Api) -> EmailPreferencesOut:
    """The signed-in user's choice in the caller's tenant; never set: no event types and
    ``enabled`` false (nothing emails the user)."""
    tenant_id, user_id = _member(caller)
    found = await api.client.store.get_email_preferences(tenant_id, user_id)
    return EmailPreferencesOut.of(found)


@router.put(
    "/v1/me/email-preferences",
    tags=["email"],
    responses={**WRITE_ERRORS, **FORBIDDEN},
    summary="Choose which events email me",
)
async def set_email_preferences(
    body: EmailPreferencesIn, caller: Authenticated, api: Api
) -> EmailPreferencesOut:
    """Replace the choice: events of ``event_types`` (durable ones: ``job.queued``,
    ``job.retrying``, ``job.completed``, ``job.failed``, ``job.cancelled``) of jobs of
    ``kinds`` (empty: every kind) email the user while ``enabled``. Links in mails sent
    before no longer unsubscribe (each setting has a new unsubscribe token)."""
    tenant_id, user_id = _member(caller)
    saved = await api.client.store.set_email_preferences(
        tenant_id,
        user_id,
        event_types=body.types(),
        kinds=body.kinds,
        enabled=body.enabled,
    )
    return EmailPreferencesOut.of(saved)


@router.get(
    "/v1/email/unsubscribe",
    tags=["email"],
    response_class=HTMLResponse,
    dependencies=[Depends(caller_for(Access.PUBLIC))],
    summary="The unsubscribe link's page (changes nothing)",
)
async def unsubscribe_page(token: Token) -> HTMLResponse:
    """A page with a button that unsubscribes. It changes nothing itself: mail scanners
    open links, and must not unsubscribe anyone."""
    action = html.escape(f"/v1/email/unsubscribe?token={quote(token, safe='')}")
    return _page(
        "Unsubscribe from Conveyor email",
        "<p>Stop the notification email of this address for this tenant?</p>"
        f'<form method="post" action="{action}">'
        '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
        '<button type="submit">Unsubscribe</button></form>'
        "<p>You can choose again later in your email preferences.</p>",
    )


@router.post(
    "/v1/email/unsubscribe",
    tags=["email"],
    response_class=HTMLResponse,
    dependencies=[Depends(caller_for(Access.PUBLIC))],
    responses={404: {"description": "No preferences hold this token (changed since)."}},
    summary="Unsubscribe (RFC 8058 one-click)",
)
async def unsubscribe(token: Token, api: Api) -> HTMLResponse:
    """Turn the link's preferences off (what a mail client's one-click unsubscribe
    posts, with the body ``List-Unsubscribe=One-Click``, which is not needed)."""
    found = await api.client.store.unsubscribe_email(token)
    if found is None:
        return _page(
            "Unknown unsubscribe link",
            "<p>This link unsubscribes nobody: the preferences it was made for were "
            "changed since (use the link of a newer mail) or removed.</p>",
            status_code=404,
        )
    return _page(
        "Unsubscribed",
        "<p>You will get no more notification email from this tenant. Choose again in "
        "your email preferences (PUT /v1/me/email-preferences).</p>",
    )


def _page(title: str, body: str, status_code: int = 200) -> HTMLResponse:
    return HTMLResponse(
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title></head><body><h1>{html.escape(title)}</h1>"
        f"{body}</body></html>",
        status_code=status_code,
        headers={"Content-Security-Policy": PAGE_CSP},
    )
