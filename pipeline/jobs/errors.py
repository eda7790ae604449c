"""Errors of the import service, each with its HTTP status and ARM error code.

They are ``PipelineError``s (exit code 2, bad input), so a command that calls
the catalog directly prints the same one-line message the REST API puts in
``{"error": {"code", "message"}}``.  The message says what is wrong and what to
do, and never contains a recovery password.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import EXIT_BAD_INPUT, PipelineError


class ApiError(PipelineError):
    """{}"""

    exit_code = EXIT_BAD_INPUT
    status = 400
    code = "BadRequest"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code

    def body(self) -> dict[str, Any]:
        """ARM's error body, as the Azure SDKs parse it."""
        return {"error": {"code": self.code, "message": str(self)}}


class BadRequest(ApiError):
    """{}"""

    status = 400
    code = "BadRequest"


class Unauthorized(ApiError):
    """{}"""

    status = 401
    code = "AuthenticationFailed"


class Forbidden(ApiError):
    """{}"""

    status = 403
    code = "AuthorizationFailed"


class NotFound(ApiError):
    """{}"""

    status = 404
    code = "ResourceNotFound"


class MethodNotAllowed(ApiError):
    """{}"""

    status = 405
    code = "MethodNotAllowed"


class Conflict(ApiError):
    """{}"""

    status = 409
    code = "Conflict"


class PreconditionFailed(ApiError):
    """{}"""

    status = 412
    code = "PreconditionFailed"


class PayloadTooLarge(ApiError):
    """{}"""

    status = 413
    code = "RequestEntityTooLarge"
