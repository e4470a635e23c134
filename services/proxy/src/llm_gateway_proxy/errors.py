"""Errors the gateway itself produces, and their one rendering as OpenAI error JSON.

    GatewayError                      500 api_error
    ├── InvalidRequest                400 invalid_request_error  (bad JSON, missing model, ...)
    ├── NotFound                      404 invalid_request_error
    ├── MethodNotAllowed              405 invalid_request_error
    ├── RequestTooLarge               413 invalid_request_error
    ├── ShuttingDown                  503 api_error
    ├── UpstreamUnreachable           502 api_error
    └── UpstreamTimeout               504 api_error

Status, type, code and the event's `outcome` (`gateway_error`, or `upstream_error` when the
provider is at fault) are class attributes: a status is never inferred from message text.
Upstream 4xx/5xx answers are not GatewayErrors; they pass through untouched.
"""

from __future__ import annotations

from typing import ClassVar

import orjson

from llm_gateway_common.events import Outcome


class GatewayError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "api_error"
    code: ClassVar[str | None] = "internal_error"
    outcome: ClassVar[Outcome] = "gateway_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def body(self) -> bytes:
        """The OpenAI error object, as the SDKs parse it."""
        return orjson.dumps(
            {
                "error": {
                    "message": self.message,
                    "type": self.type,
                    "param": self.param,
                    "code": self.code,
                }
            }
        )


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class InvalidJSON(InvalidRequest):
    code = "invalid_json"


class MissingParameter(InvalidRequest):
    code = "missing_required_parameter"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "unknown_url"


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class RequestTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class ShuttingDown(GatewayError):
    status = 503
    type = "api_error"
    code = "shutting_down"


class UpstreamUnreachable(GatewayError):
    status = 502
    type = "api_error"
    code = "upstream_unreachable"
    outcome = "upstream_error"


class UpstreamTimeout(GatewayError):
    status = 504
    type = "api_error"
    code = "upstream_timeout"
    outcome = "upstream_error"
