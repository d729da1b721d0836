"""The web page at `/` and the OpenAPI page at `/docs`, both served from files shipped with the
service, so neither needs the internet: the page is plain HTML, CSS and JavaScript modules in
`static/` (no build step, no library), and Swagger UI's assets come from the
swagger-ui-bundle-v2 wheel. The page speaks only the public HTTP API, like any other client."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

STATIC = Path(__file__).parent / "static"
SWAGGER_UI = "/swagger-ui"


def mount(app: FastAPI) -> None:
    """`/` (the page), `/web/*` (its assets), `/docs` and `/swagger-ui/*` (Swagger UI)."""

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url or "/openapi.json",
            title=f"{app.title} - API",
            swagger_js_url=f"{SWAGGER_UI}/swagger-ui-bundle.js",
            swagger_css_url=f"{SWAGGER_UI}/swagger-ui.css",
            swagger_favicon_url=f"{SWAGGER_UI}/favicon-32x32.png",
            # No badge asking the public validator (validator.swagger.io) about our document.
            swagger_ui_parameters={"validatorUrl": None},
        )

    app.mount("/web", StaticFiles(directory=STATIC), name="web")
    app.mount(SWAGGER_UI, StaticFiles(directory=str(swagger_ui_path)), name="swagger-ui")
