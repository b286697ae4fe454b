"""The app factory: settings, templates, static files, middleware, error handlers and the routers."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import Depends, FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from tether import __version__
from tether.app import handlers
from tether.app.deps import db_gate, storable_input
from tether.app.middleware import WebMiddleware
from tether.app.render import render_document, render_markdown, render_messages
from tether.app.routes import admin, annotate, api, auth, review
from tether.app.settings import AppSettings

HERE = Path(__file__).parent


def create_app(settings: AppSettings) -> FastAPI:
    settings.validate()
    app = FastAPI(title="Tether", version=__version__, docs_url=None, redoc_url=None, openapi_url="/api/openapi.json",
                  dependencies=[Depends(storable_input)])
    app.state.settings = settings
    app.state.db_gate = db_gate(settings)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["markdown"] = render_markdown
    templates.env.filters["document"] = render_document
    templates.env.globals["render_messages"] = render_messages
    templates.env.globals["version"] = __version__
    app.state.templates = templates
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    for module in (auth, annotate, review, admin):  # HTML pages and their forms (CSRF token, session cookie)
        app.include_router(module.router, tags=["web pages"], default_response_class=HTMLResponse)
    app.include_router(api.router)
    app.include_router(api.reference)
    handlers.install(app)
    app.add_middleware(WebMiddleware, settings=settings)
    return app


def app_from_env() -> FastAPI:
    """For `uvicorn --factory` with several workers: `tether serve` passes the settings through the environment."""
    return create_app(AppSettings.from_env(os.environ["TETHER_SERVE_DATABASE_URL"]))
