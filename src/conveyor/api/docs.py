"""The interactive API documentation, served whole by the app: it works with no network.

FastAPI's own ``/docs`` and ``/redoc`` pages load Swagger UI and Redoc from a CDN, so on a
machine without internet access (or behind a strict proxy) they are blank. Here the same
pages point at the files the ``fastapi-offline`` package ships, served under
:data:`ASSETS_PATH`; no page names another host.

::

    app = FastAPI(docs_url=None, redoc_url=None)   # FastAPI's CDN pages off
    install_docs(app)                               # /docs, /docs/oauth2-redirect, /redoc
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.params import Depends as DependsParam
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

DOCS_PATH = "/docs"
OAUTH2_REDIRECT_PATH = "/docs/oauth2-redirect"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
"""Where the Swagger UI and Redoc files are served (a prefix: every file below it)."""

PAGE_PATHS = frozenset({DOCS_PATH, OAUTH2_REDIRECT_PATH, REDOC_PATH})

_SWAGGER_PARAMETERS = {
    # Swagger UI would otherwise send the schema to validator.swagger.io for a badge.
    "validatorUrl": None,
}


def _assets_directory() -> str:
    return str(resources.files("fastapi_offline").joinpath("static"))


def install_docs(app: FastAPI, *, dependencies: Sequence[DependsParam] = ()) -> None:
    """Serve the documentation pages and their assets on ``app``, which must have been
    built with ``docs_url=None, redoc_url=None``. Links honour the ASGI ``root_path``.
    ``dependencies``: of each page's route (the app declares their access level)."""
    if app.docs_url is not None or app.redoc_url is not None:
        raise ValueError("build the app with docs_url=None and redoc_url=None")
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_directory()), name="docs-assets")
    app.state.docs_paths = PAGE_PATHS

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            oauth2_redirect_url=root + OAUTH2_REDIRECT_PATH,
            swagger_ui_parameters=_SWAGGER_PARAMETERS,
        )

    async def oauth2_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )

    for path, endpoint in (
        (DOCS_PATH, swagger_ui),
        (OAUTH2_REDIRECT_PATH, oauth2_redirect),
        (REDOC_PATH, redoc),
    ):
        app.add_api_route(
            path,
            endpoint,
            methods=["GET"],
            include_in_schema=False,
            dependencies=list(dependencies),
        )
