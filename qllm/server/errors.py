"""Errors as the OpenAI API (and vLLM) answer them: a status and a body
`{"error": {"message", "type", "param", "code"}}` whose message says what is wrong."""

from __future__ import annotations

import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


class APIError(Exception):
    """A request the server refuses, with what the client should read."""

    def __init__(self, message: str, param: str | None = None, status: int = 400, kind: str = "BadRequestError"):
        super().__init__(message)
        self.message = message
        self.param = param  # the request field at fault
        self.status = status
        self.kind = kind


def error_body(message: str, kind: str, status: int, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}


def error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error_body(error.message, error.kind, error.status, error.param), status_code=error.status)


def validation_message(error: RequestValidationError) -> tuple[str, str | None]:
    """One line per problem: malformed JSON, or `field: what pydantic expected`; and the first field at fault."""
    messages, params = [], []
    for problem in error.errors():
        if problem["type"] == "json_invalid":
            reason = problem.get("ctx", {}).get("error", problem["msg"])
            messages.append(f"the body is not valid JSON: {reason}")
            continue
        location = [str(part) for part in problem["loc"] if part != "body"]
        field = ".".join(location) or "body"
        params.append(field)
        shows_input = location and problem["type"] != "missing"
        messages.append(f"{field}: {problem['msg']}" + (f" (got {json.dumps(problem['input'], default=str)[:80]})"
                                                         if shows_input else ""))  # fmt: skip
    return "; ".join(messages), params[0] if params else None


def install_error_handlers(app: FastAPI) -> None:
    """Bad bodies answer 400 (FastAPI's default is 422) in the OpenAI error format."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError) -> JSONResponse:
        return error_response(error)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, error: RequestValidationError) -> JSONResponse:
        message, param = validation_message(error)
        return error_response(APIError(message, param))
