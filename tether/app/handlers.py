"""How errors reach people: JSON ``{"error", "fix"}`` for the API, a page (or an inline message for HTMX) for
the web. Statuses: 400 bad input, 401 no token, 403 forbidden or a refused CSRF token, 404, 409 conflict, 413 too
large, 422 malformed request."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from tether.app.deps import CsrfRefused, LoginRequired, Unauthorized, is_htmx, page, user_for_error_page
from tether.errors import Conflict, Forbidden, NotFound, TetherError, TooLarge


def status_of(exc: TetherError) -> int:
    if isinstance(exc, TooLarge):
        return 413
    if isinstance(exc, (Forbidden, CsrfRefused)):
        return 403
    if isinstance(exc, Unauthorized):
        return 401
    if isinstance(exc, NotFound):
        return 404
    if isinstance(exc, Conflict):
        return 409
    return 400


def _error_response(request: Request, status: int, message: str, fix: str | None) -> Response:
    if request.url.path.startswith("/api/"):
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message, "fix": fix}, status_code=status, headers=headers)
    if is_htmx(request):
        # Shown in the flash area of the page; the task stays as it was.
        response = page(request, "_flash.html", message=message, fix=fix, status_code=status)
        response.headers["HX-Retarget"] = "#flash"
        response.headers["HX-Reswap"] = "innerHTML"
        return response
    return page(request, "error.html", user=user_for_error_page(request), status_code=status, status=status, message=message, fix=fix)


def install(app: FastAPI) -> None:
    @app.exception_handler(TetherError)
    async def _tether_error(request: Request, exc: TetherError) -> Response:
        return _error_response(request, status_of(exc), exc.message, exc.fix)

    @app.exception_handler(LoginRequired)
    async def _login(request: Request, exc: LoginRequired) -> Response:
        target = "/login?next=" + quote(request.url.path)
        if is_htmx(request):
            return HTMLResponse("", headers={"HX-Redirect": target})
        return RedirectResponse(target, status_code=303)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = []
        for error in exc.errors():
            where = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "form"))
            message = str(error.get("msg")).removeprefix("Value error, ")  # pydantic's prefix for a validator's ValueError
            problems.append(f"{where}: {message}" if where else message)
        api = request.url.path.startswith("/api/")
        places = {(error.get("loc") or ("",))[0] for error in exc.errors()}
        if not api and ("path" in places or places <= {"query"}):
            # A malformed address (/annotate/abc, an id past the columns' range) names no page; the API says 422,
            # as its schema does, and a malformed form field is a 400.
            return _error_response(request, 404, "there is no page here", "check the address, or go back to your list")
        status = 422 if api else 400
        return _error_response(request, status, "the request is malformed: " + "; ".join(problems), "check the fields and try again")

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException) -> Response:
        message = exc.detail if isinstance(exc.detail, str) else "request refused"
        if exc.status_code == 404 and not request.url.path.startswith("/api/"):
            message = "there is no page here"
        return _error_response(request, exc.status_code, message, None)
